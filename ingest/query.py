"""Read-side queries over the Parquet dataset with DuckDB, for the CLI and the dashboard.

Each function opens its own in-memory DuckDB connection (cheap) over the Hive-partitioned files,
so readers share nothing with ingest and never slow it down. Parameters are always bound, never
formatted into SQL.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa


def _source(root: Path) -> str | None:
    if not any(root.rglob("part-*.parquet")):
        return None
    glob = str(root / "**" / "part-*.parquet").replace("'", "''")
    return f"read_parquet('{glob}', hive_partitioning = true, union_by_name = true)"


def _query(root: Path, sql: str, params: list) -> pa.Table:
    src = _source(root)
    if src is None:
        return pa.table({})
    con = duckdb.connect()
    try:
        con.execute("SET threads = 1")
        rel = con.sql(sql.format(src=src), params=params)
        # DuckDB 2 names it to_arrow_table; 1.x has arrow(). Accept both.
        return rel.to_arrow_table() if hasattr(rel, "to_arrow_table") else rel.arrow()
    finally:
        con.close()


def lot_summary(root: Path, lot: str) -> pa.Table:
    """Per sensor of a lot: readings, flagged, first/last timestamp, min/mean/max value."""
    return _query(root, """
        SELECT site || '/' || line || '/' || device || '/' || sensor AS sensor_key,
               count(*) AS readings, count(*) FILTER (WHERE flags <> 0) AS flagged,
               min(ts) AS first_ts, max(ts) AS last_ts,
               min(value) AS min_value, avg(value) AS mean_value, max(value) AS max_value
        FROM {src} WHERE lot = ? GROUP BY ALL ORDER BY sensor_key""", [lot])


def recent(root: Path, site: str, line: str, seconds: float) -> pa.Table:
    """The last ``seconds`` (source time) of a line's readings, oldest first."""
    return _query(root, """
        WITH r AS (SELECT * FROM {src} WHERE site = ? AND line = ?)
        SELECT ts, device, sensor, value, quality, flags, lot FROM r
        WHERE ts >= (SELECT max(ts) FROM r) - to_microseconds(CAST(? * 1e6 AS BIGINT))
        ORDER BY ts""", [site, line, seconds])


def lines(root: Path) -> pa.Table:
    """Every (site, line) with its reading count, flagged count and newest timestamp."""
    return _query(root, """
        SELECT site, line, count(*) AS readings, count(*) FILTER (WHERE flags <> 0) AS flagged,
               max(ts) AS last_ts, max(recv_ts) AS last_recv
        FROM {src} GROUP BY ALL ORDER BY site, line""", [])

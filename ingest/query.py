"""Read-side queries over the Parquet dataset with DuckDB, for the CLI and the dashboard.

Each query opens its own in-memory DuckDB connection (cheap) over the Hive-partitioned files, so
readers share nothing with ingest and never slow it down. SQL refers to the dataset as
``{SOURCE}``; every value, the file pattern included, is a bound parameter, never formatted in.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

log = logging.getLogger(__name__)

SOURCE = "read_parquet($glob, hive_partitioning = true, union_by_name = true)"


def query(root: Path, sql: str, params: dict[str, Any] | None = None) -> pa.Table:
    """Run ``sql`` (which reads ``SOURCE``) over the dataset; an empty table when there is none yet."""
    if not root.is_dir() or not any(root.rglob("part-*.parquet")):
        return pa.table({})
    con = duckdb.connect()
    try:
        con.execute("SET threads = 1")
        rel = con.sql(sql.replace("{SOURCE}", SOURCE),
                      params={"glob": str(root / "**" / "part-*.parquet"), **(params or {})})
        # DuckDB 2 names it to_arrow_table; 1.x has arrow(). Accept both.
        return rel.to_arrow_table() if hasattr(rel, "to_arrow_table") else rel.arrow()
    except duckdb.IOException as exc:
        # A file can vanish between the glob and the read (sink recovery); the caller retries later.
        log.warning("query.io_error=%s", exc)
        return pa.table({})
    finally:
        con.close()


def lot_summary(root: Path, lot: str) -> pa.Table:
    """Per sensor of a lot: readings, flagged, first/last timestamp, min/mean/max value."""
    return query(root, """
        SELECT site || '/' || line || '/' || device || '/' || sensor AS sensor_key,
               count(*) AS readings, count(*) FILTER (WHERE flags <> 0) AS flagged,
               min(ts) AS first_ts, max(ts) AS last_ts,
               min(value) AS min_value, avg(value) AS mean_value, max(value) AS max_value
        FROM {SOURCE} WHERE lot = $lot GROUP BY ALL ORDER BY sensor_key""", {"lot": lot})


def lot_mkt(root: Path, lot: str, delta_h: float = 83144.0) -> dict[str, float]:
    """Mean kinetic temperature (°C) of each temperature sensor that recorded ``lot``: its good,
    finite readings, each weighted by the time it held (to the next reading; the last one gets the
    median interval)."""
    import numpy as np

    from ingest.detect.coldchain import mean_kinetic_temperature

    t = query(root, """
        SELECT site || '/' || line || '/' || device || '/' || sensor AS sensor_key, epoch_ns(ts) AS t, value
        FROM {SOURCE} WHERE lot = $lot AND sensor = 'temperature' AND quality = 0 AND isfinite(value)
        ORDER BY sensor_key, t""", {"lot": lot})
    out: dict[str, float] = {}
    if t.num_rows == 0:
        return out
    keys = np.array(t.column("sensor_key").to_pylist())
    ts = t.column("t").to_numpy()
    vals = t.column("value").to_numpy()
    for key in dict.fromkeys(keys.tolist()):
        sel = keys == key
        tt, vv = ts[sel], vals[sel]
        dt = np.diff(tt) / 1e9
        held = np.append(dt, np.median(dt) if len(dt) else 1.0)
        out[key] = mean_kinetic_temperature(vv, np.maximum(held, 0.0) + 1e-12, delta_h)
    return out


def select_readings(root: Path, lot: str | None = None, sensor: str | None = None, start: str | None = None,
                    end: str | None = None) -> pa.Table:
    """Readings of a lot and/or a sensor (a glob on ``site/line/device/sensor``) within [start, end]
    (ISO 8601 times; UTC when no offset), in sensor and time order, with the sensor key spelt out."""
    where, params = [], {}
    if lot is not None:
        where.append("lot = $lot")
        params["lot"] = lot
    if sensor is not None:
        where.append("(site || '/' || line || '/' || device || '/' || sensor) GLOB $sensor")
        params["sensor"] = sensor
    if start is not None:
        where.append("ts >= CAST($start AS TIMESTAMPTZ)")
        params["start"] = start
    if end is not None:
        where.append("ts <= CAST($end AS TIMESTAMPTZ)")
        params["end"] = end
    sql = ("SELECT site || '/' || line || '/' || device || '/' || sensor AS sensor_key, ts, value, quality, flags,"
           " seq, lot, recv_ts FROM {SOURCE}" + (" WHERE " + " AND ".join(where) if where else "")
           + " ORDER BY sensor_key, ts, seq")
    return query(root, sql, params)

"""Read-side queries over the Parquet dataset with DuckDB, for the CLI and the dashboard.

Each query opens its own in-memory DuckDB connection (cheap) over the files named by one snapshot
of the sink's commit record (``snapshot_files``), never a glob: a glob could see a file the sink
renamed but has not committed yet, or a compacted file together with the files it replaces. The
record also says which lots and which time span each file holds, so a lot or time query reads
only the files that may hold its rows. SQL refers to the dataset as ``{SOURCE}``; every value,
the file list included, is a bound parameter, never formatted in.

A file of an old snapshot may be deleted once its grace period ends
(``ingest.commit_record``); a query that hits a vanished file re-reads the record and runs again.
"""

from __future__ import annotations

import fnmatch
import logging
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ingest.commit_record import read_snapshot, state_dir_of
from ingest.sink_kernels import group_rows, partition_order
from qctrace.errors import DataFileChanged, SnapshotGone
from qctrace.schema import READING_SCHEMA

log = logging.getLogger(__name__)

SOURCE = "read_parquet($files, hive_partitioning = true, union_by_name = true)"
RETRIES = 3
THREADS = 2
_TS = READING_SCHEMA.field("ts").type


def snapshot_files(root: Path, lot: str | None = None, start_ns: int | None = None, end_ns: int | None = None,
                   state_dir: Path | None = None) -> list[str]:
    """The committed files of the dataset at ``root`` as of one read of its commit record, without
    those that certainly hold no row of ``lot`` within [start_ns, end_ns] (absolute paths)."""
    snap = read_snapshot(state_dir if state_dir is not None else state_dir_of(root))
    if snap is None:
        # Not written by the sink (another tool wrote Hive-partitioned files, or nothing yet): every
        # file is data, and nothing compacts it, so the glob is the file list.
        return sorted(str(p) for p in root.glob("site=*/line=*/date=*/part-*.parquet"))
    return [str(root / f.path) for f in snap.files if f.may_hold(lot, start_ns, end_ns)]


def _ns(when: str | None) -> int | None:
    """ISO 8601 to ns since the epoch (UTC when no offset), for pruning files by time."""
    if when is None:
        return None
    from datetime import UTC

    dt = datetime.fromisoformat(when.replace("Z", "+00:00"))
    return int((dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp() * 1_000_000_000)


def _raise_if_damaged(files: list[str], exc: Exception) -> None:
    """A file of the snapshot that is still there yet unreadable is damage, not a retired file."""
    damaged = next((f for f in files if f in str(exc) and Path(f).exists()), None)
    if damaged is not None:
        raise DataFileChanged(
            f"{damaged}: committed Parquet file is damaged ({str(exc).splitlines()[0]}); its readings"
            " cannot be read. `qctrace verify` lists every damaged file; restore it from a backup.") from None


def _read_failed(root: Path, files: list[str], attempt: int, exc: Exception) -> None:
    """A read of a snapshot failed: raise on damage or after the last retry (an empty answer would
    read as "no data"); otherwise a file was deleted after its grace period and the caller takes a
    fresh snapshot."""
    _raise_if_damaged(files, exc)
    log.warning("query.io_error attempt=%d error=%s", attempt + 1, exc)
    if attempt + 1 == RETRIES:
        raise SnapshotGone(
            f"{root}: files of the committed dataset were missing on {RETRIES} fresh snapshots in a row"
            f" ({str(exc).splitlines()[0]}). If compaction retires files faster than this query reads"
            " them, raise [sink] retired_grace_s above the query's time; if a file stays missing,"
            " `qctrace verify` lists it.") from None


def query(root: Path, sql: str, params: dict[str, Any] | None = None, lot: str | None = None,
          start_ns: int | None = None, end_ns: int | None = None) -> pa.Table:
    """Run ``sql`` (which reads ``SOURCE``) over the committed dataset; an empty table when there is
    none yet. ``lot`` / ``start_ns`` / ``end_ns`` only prune files: the SQL must filter rows itself."""
    for attempt in range(RETRIES):
        files = snapshot_files(root, lot, start_ns, end_ns)
        if not files:
            return pa.table({})
        con = duckdb.connect()
        try:
            con.execute(f"SET threads = {THREADS}")
            rel = con.sql(sql.replace("{SOURCE}", SOURCE), params={"files": files, **(params or {})})
            # DuckDB 2 names it to_arrow_table; 1.x has arrow(). Accept both.
            return rel.to_arrow_table() if hasattr(rel, "to_arrow_table") else rel.arrow()
        except (duckdb.IOException, duckdb.InvalidInputException) as exc:
            _read_failed(root, files, attempt, exc)
        finally:
            con.close()
    raise AssertionError("unreachable: the last attempt returns or raises")


def lot_summary(root: Path, lot: str) -> pa.Table:
    """Per sensor of a lot: readings, flagged, first/last timestamp, min/mean/max value."""
    return query(root, """
        SELECT site || '/' || line || '/' || device || '/' || sensor AS sensor_key,
               count(*) AS readings, count(*) FILTER (WHERE flags <> 0) AS flagged,
               min(ts) AS first_ts, max(ts) AS last_ts,
               min(value) AS min_value, avg(value) AS mean_value, max(value) AS max_value
        FROM {SOURCE} WHERE lot = $lot GROUP BY ALL ORDER BY sensor_key""", {"lot": lot}, lot=lot)


def lot_mkt(root: Path, lot: str, delta_h: float = 83144.0) -> dict[str, float]:
    """Mean kinetic temperature (°C) of each temperature sensor that recorded ``lot``: its good,
    finite readings, each weighted by the time it held (to the next reading; the last one gets the
    median interval)."""
    import numpy as np

    from ingest.detect.coldchain import mean_kinetic_temperature

    t = query(root, """
        SELECT site || '/' || line || '/' || device || '/' || sensor AS sensor_key, epoch_ns(ts) AS t, value
        FROM {SOURCE} WHERE lot = $lot AND sensor = 'temperature' AND quality = 0 AND isfinite(value)
        ORDER BY sensor_key, t""", {"lot": lot}, lot=lot)
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


_COLUMNS = ["device", "sensor", "ts", "value", "quality", "flags", "seq", "lot", "recv_ts"]


def _row_groups(md: pq.FileMetaData, lot: str | None, start_ns: int | None, end_ns: int | None) -> list[int]:
    """Row groups whose statistics allow a row of ``lot`` within [start, end]. (pyarrow's dataset
    scanner ignores statistics of dictionary-typed columns, so the pruning is done here.)"""
    idx = {md.schema.column(i).name: i for i in range(md.num_columns)}
    keep = []
    for g in range(md.num_row_groups):
        rg = md.row_group(g)
        st = rg.column(idx["lot"]).statistics if lot is not None else None
        if st is not None and st.has_min_max and not (st.min <= lot <= st.max):
            continue
        st = rg.column(idx["ts"]).statistics if start_ns is not None or end_ns is not None else None
        if st is not None and st.has_min_max and (
                (start_ns is not None and st.max_raw < start_ns) or (end_ns is not None and st.min_raw > end_ns)):
            continue
        keep.append(g)
    return keep


def _read_pruned(root: Path, files: list[str], lot: str | None, start_ns: int | None, end_ns: int | None) -> pa.Table:
    """The row groups of ``files`` that may hold matching rows, with ``site``/``line`` from the path
    as dictionary columns (nothing spelt out per row)."""
    parts = []
    for f in files:
        try:
            pf = pq.ParquetFile(f)
            groups = _row_groups(pf.metadata, lot, start_ns, end_ns)
            if not groups:
                continue
            t = pf.read_row_groups(groups, columns=_COLUMNS)
        except (OSError, pa.ArrowInvalid) as exc:
            _raise_if_damaged([f], RuntimeError(f"{f}: {exc}"))
            raise  # gone: retired past its grace period; the caller takes a fresh snapshot
        where = dict(p.split("=", 1) for p in Path(f).relative_to(root).parent.parts if "=" in p)
        zeros = pa.array(np.zeros(t.num_rows, dtype=np.int32))
        consts = [pa.DictionaryArray.from_arrays(zeros, pa.array([unquote(where[k])])) for k in ("site", "line")]
        parts.append(pa.table([*consts, *t.columns], names=["site", "line", *t.column_names]))
    if not parts:
        return pa.table({})
    return pa.concat_tables(parts, promote_options="permissive")


def select_readings(root: Path, lot: str | None = None, sensor: str | None = None, start: str | None = None,
                    end: str | None = None) -> pa.Table:
    """Readings of a lot and/or a sensor (a glob on ``site/line/device/sensor``) within [start, end]
    (ISO 8601 times; UTC when no offset), in sensor-key and time order, with the sensor key spelt out.

    Bulk rows rather than an aggregate, so they are read with pyarrow rather than DuckDB: the text
    columns stay dictionary-encoded end to end (DuckDB would spell out every row's strings, most of
    the time of a 600,000-row lot), the commit record's lot index picks the files and the row
    groups' lot and time statistics the row groups (files are sorted lot first; ``_row_groups``), and the result is
    put in order by the sink's counting-sort kernel, which finds it already sorted in the usual
    case of a lot inside one file.
    """
    start_ns, end_ns = _ns(start), _ns(end)
    cond = None
    for c in ([pc.field("lot") == lot] if lot is not None else []) + (
            [pc.field("ts") >= pa.scalar(start_ns, _TS)] if start_ns is not None else []) + (
            [pc.field("ts") <= pa.scalar(end_ns, _TS)] if end_ns is not None else []):
        cond = c if cond is None else cond & c
    for attempt in range(RETRIES):
        files = snapshot_files(root, lot, start_ns, end_ns)
        if not files:
            return pa.table({})
        try:
            table = _read_pruned(root, files, lot, start_ns, end_ns)
            if cond is not None and table.num_rows:
                table = table.filter(cond)
            break
        except (OSError, pa.ArrowInvalid) as exc:
            _read_failed(root, files, attempt, exc)
    if table.num_rows == 0:
        return pa.table({})
    table = table.unify_dictionaries().combine_chunks()
    cols = [table.column(c).chunk(0) for c in ("site", "line", "device", "sensor")]
    codes = [c.indices.to_numpy(zero_copy_only=False).astype(np.int64) for c in cols]
    sizes = [len(c.dictionary) for c in cols]
    combo = ((codes[0] * sizes[1] + codes[1]) * sizes[2] + codes[2]) * sizes[3] + codes[3]
    group, keys = group_rows(combo, sizes[0] * sizes[1] * sizes[2] * sizes[3])
    names = []
    for k in keys.tolist():
        k, sn = divmod(k, sizes[3])
        k, dv = divmod(k, sizes[2])
        st, ln = divmod(k, sizes[1])
        names.append("/".join(str(cols[i].dictionary[j]) for i, j in enumerate((st, ln, dv, sn))))
    keep = None
    if sensor is not None:
        wanted = np.array([fnmatch.fnmatchcase(n, sensor) for n in names], dtype=bool)
        keep = wanted[group]
    rank = np.argsort(np.argsort(np.array(names, dtype=object), kind="stable"), kind="stable")
    ts = table.column("ts").chunk(0).view(pa.int64()).to_numpy()
    order, _, _ = partition_order(np.zeros(len(ts), dtype=np.int64), rank[group], ts, len(names))
    if keep is not None:
        order = order[keep[order]]
    key = pa.DictionaryArray.from_arrays(pa.array(group.astype(np.int32)), pa.array(names, pa.string()))
    out = pa.table([key, *(table.column(c) for c in ("ts", "value", "quality", "flags", "seq", "lot", "recv_ts"))],
                   names=["sensor_key", "ts", "value", "quality", "flags", "seq", "lot", "recv_ts"])
    if len(order) != len(ts) or np.any(order[1:] != order[:-1] + 1):
        out = out.take(pa.array(order))
    return out


def flagged_by_line_day(root: Path) -> pa.Table:
    """Readings and flagged readings per (site, line, UTC day): the dashboard's quality overview."""
    return query(root, """
        SELECT site, line, CAST(date AS VARCHAR) AS day, count(*) AS readings,
               count(*) FILTER (WHERE flags <> 0) AS flagged
        FROM {SOURCE} GROUP BY ALL ORDER BY ALL""")

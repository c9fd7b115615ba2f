"""What each committed Parquet file holds, from its footer: so a refresh reads only the files it needs.

The sink never changes a file once it is renamed into place (``part-*.parquet``), so a file's
facts (rows, newest source and receive time, sensors) are read once and kept for the process's
life, keyed by path and size. Each refresh then lists the directory (cheap) and picks the files
whose time range reaches into the window asked for: the status tiles and charts read the newest
few files of a line, never the whole dataset, however large it grows.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ingest.query import snapshot_files

_lock = threading.Lock()
_facts: dict[tuple[str, int], PartFile] = {}


@dataclass(frozen=True, slots=True)
class PartFile:
    path: str
    site: str
    line: str
    rows: int
    ts_min: int  # ns since epoch, source time
    ts_max: int
    recv_max: int  # ns since epoch, receive time
    sensors: tuple[str, ...]  # "device/sensor", sorted


def _partition(path: Path) -> tuple[str, str]:
    site = line = ""
    for part in path.parts:
        if part.startswith("site="):
            site = unquote(part[5:])
        elif part.startswith("line="):
            line = unquote(part[5:])
    return site, line


def _stat_range(meta: pq.FileMetaData, column: str) -> tuple[int, int] | None:
    """(min, max) of a timestamp column over all row groups, from the footer's statistics."""
    idx = meta.schema.names.index(column)
    lo = hi = None
    for g in range(meta.num_row_groups):
        st = meta.row_group(g).column(idx).statistics
        if st is None or not st.has_min_max:
            return None
        a, b = _ns(st.min), _ns(st.max)
        lo = a if lo is None else min(lo, a)
        hi = b if hi is None else max(hi, b)
    return None if lo is None else (lo, hi)


def _ns(value: object) -> int:
    if hasattr(value, "value"):  # pandas Timestamp
        return int(value.value)
    if hasattr(value, "timestamp"):  # datetime (microsecond precision at best)
        return int(value.timestamp() * 1e9)
    return int(value)


def _read_facts(path: Path) -> PartFile:
    meta = pq.read_metadata(path)
    site, line = _partition(path)
    ts = _stat_range(meta, "ts")
    recv = _stat_range(meta, "recv_ts")
    table = pq.read_table(path, columns=["device", "sensor"] + ([] if ts and recv else ["ts", "recv_ts"]))
    if not ts or not recv:  # no statistics written: read the two columns once instead
        t = table.column("ts").cast("int64")
        r = table.column("recv_ts").cast("int64")
        ts = (pc.min(t).as_py() or 0, pc.max(t).as_py() or 0)
        recv = (pc.min(r).as_py() or 0, pc.max(r).as_py() or 0)
    return PartFile(str(path), site, line, meta.num_rows, ts[0], ts[1], recv[1],
                    _pairs(table.column("device"), table.column("sensor")))


def _pairs(device: pa.ChunkedArray, sensor: pa.ChunkedArray) -> tuple[str, ...]:
    """Distinct ``device/sensor`` names, computed on dictionary codes (a file holds ~100 k rows per name)."""
    out: set[str] = set()
    for dev, sen in zip(_dict_chunks(device), _dict_chunks(sensor), strict=True):
        d_codes, d_names = dev
        s_codes, s_names = sen
        combined = np.flatnonzero(np.bincount(d_codes.astype(np.int64) * (len(s_names) + 1) + s_codes))
        out |= {f"{d_names[c // (len(s_names) + 1)]}/{s_names[c % (len(s_names) + 1)]}" for c in combined.tolist()}
    return tuple(sorted(out))


def _dict_chunks(col: pa.ChunkedArray) -> list[tuple[np.ndarray, list[str]]]:
    col = col if pa.types.is_dictionary(col.type) else pc.dictionary_encode(col)
    chunks = col.chunks if isinstance(col, pa.ChunkedArray) else [col]
    return [(c.indices.to_numpy(zero_copy_only=False), c.dictionary.cast(pa.string()).to_pylist()) for c in chunks]


def files(root: Path) -> list[PartFile]:
    """Every committed file under ``root`` with its facts, oldest data first.

    The list comes from one snapshot of the commit record (``ingest.query.snapshot_files``), not a
    glob: compaction leaves the files a merged file replaced on disk for a grace period, and a
    glob would count their rows twice.
    """
    out = []
    for p in map(Path, snapshot_files(root)):
        try:
            size = p.stat().st_size
        except FileNotFoundError:  # removed by sink recovery between the listing and now
            continue
        key = (str(p), size)
        with _lock:
            facts = _facts.get(key)
        if facts is None:
            try:
                facts = _read_facts(p)
            except (OSError, ValueError) as exc:  # vanished or half-visible file: skip it this refresh
                _log_skip(p, exc)
                continue
            with _lock:
                _facts[key] = facts
        out.append(facts)
    out.sort(key=lambda f: (f.ts_max, f.path))
    return out


def _log_skip(path: Path, exc: Exception) -> None:
    import logging

    logging.getLogger(__name__).info("catalog.skip path=%s error=%s", path, exc)


def newest_commit_ns(data_dir: Path) -> int | None:
    """When ingest last committed (the commit record's modification time), or ``None`` before any."""
    rec = data_dir / "ingest" / "commit.json"
    try:
        return rec.stat().st_mtime_ns
    except FileNotFoundError:
        return None

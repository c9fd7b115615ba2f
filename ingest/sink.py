"""Parquet sink: Hive-partitioned (``site=/line=/date=``), zstd, sorted by (sensor, ts) per file.

Commit protocol (one writer per dataset):

1. Each partition's rows are written to ``.<name>.tmp`` beside the final name and fsynced.
2. Each temporary file is renamed to its final ``part-*.parquet`` name; the directory is fsynced.
3. The commit record ``<state>/commit.json`` (every committed file with its rows and SHA-256, and
   the highest ``seq`` per source) is written to a temporary file, fsynced and renamed over the
   old one. Only now is the batch committed.

On open, any ``part-*.parquet`` not named in the commit record (a crash between 2 and 3) and any
``.tmp`` file (a crash in 1) is deleted: its rows were never committed, so upstream still holds
them and will deliver them again. Rows whose ``seq`` is at or below their source's high-water mark
are dropped as duplicates before they are buffered.

Readers that glob the directory may briefly see a file between steps 2 and 3. The partition
columns live in the path only, as Hive layout expects; ``read_dataset`` restores them.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from qctrace.durable import fsync_dir, sha256_file
from qctrace.errors import SinkCommitError
from qctrace.schema import READING_SCHEMA, SCHEMA_VERSION, check_batch, source_keys

log = logging.getLogger(__name__)

PARTITION_COLUMNS = ("site", "line")
_FILE_SCHEMA = pa.schema([f for f in READING_SCHEMA if f.name not in PARTITION_COLUMNS],
                         metadata={b"qctrace.schema_version": str(SCHEMA_VERSION).encode()})


@dataclass(frozen=True, slots=True)
class CommittedFile:
    path: str  # relative to the dataset root
    rows: int
    sha256: str


def _codes(col: pa.ChunkedArray) -> tuple[np.ndarray, list[str]]:
    """Dictionary codes (int) and names of a string or dictionary column."""
    enc = pc.dictionary_encode(col.cast(pa.string()) if not pa.types.is_dictionary(col.type) else col)
    enc = enc.combine_chunks() if isinstance(enc, pa.ChunkedArray) else enc
    return enc.indices.to_numpy(zero_copy_only=False).astype(np.int64), enc.dictionary.cast(pa.string()).to_pylist()


class ParquetSink:
    def __init__(self, root: Path, state_dir: Path, flush_rows: int = 200_000, flush_age_s: float = 1.0) -> None:
        self.root = root
        self.state_dir = state_dir
        self.flush_rows = flush_rows
        self.flush_age_s = flush_age_s
        self.files: list[CommittedFile] = []
        self.committed_hwm: dict[str, int] = {}
        self._accepted_hwm: dict[str, int] = {}
        self._buffer: list[pa.RecordBatch] = []
        self._buffered_rows = 0
        self._first_buffered = 0.0
        self.duplicates_dropped = 0
        self.rows_committed = 0
        self.extra: dict = {}  # what else the last commit recorded (e.g. the detector state's file)
        self._open()

    @property
    def pending_rows(self) -> int:
        """Rows added but not yet committed."""
        return self._buffered_rows

    @property
    def commit_path(self) -> Path:
        return self.state_dir / "commit.json"

    def _open(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if self.commit_path.exists():
            rec = json.loads(self.commit_path.read_text())
            self.files = [CommittedFile(**f) for f in rec["files"]]
            self.committed_hwm = {k: int(v) for k, v in rec["hwm"].items()}
            self.extra = rec.get("extra", {})
        self._accepted_hwm = dict(self.committed_hwm)
        self.rows_committed = sum(f.rows for f in self.files)
        known = {f.path for f in self.files}
        for p in self.root.rglob("*"):
            rel = p.relative_to(self.root).as_posix()
            if p.is_file() and (p.name.endswith(".tmp") or (p.suffix == ".parquet" and rel not in known)):
                log.warning("sink.recover removing_uncommitted=%s", rel)
                p.unlink()

    def dedupe(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """The rows of ``batch`` not seen before (by source high-water mark); marks them seen.

        Sources deliver in ``seq`` order (the in-process transport and a per-source spool
        preserve it), so a high-water mark per source is an exact duplicate test.
        """
        check_batch(batch)
        if batch.num_rows == 0:
            return batch
        enc = pc.dictionary_encode(source_keys(batch))
        names = enc.dictionary.to_pylist()
        codes = enc.indices.to_numpy(zero_copy_only=False)
        seq = batch.column("seq").to_numpy().astype(np.int64)
        hwm = np.array([self._accepted_hwm.get(n, -1) for n in names], dtype=np.int64)
        fresh = seq > hwm[codes]
        new_max = np.full(len(names), -1, dtype=np.int64)
        np.maximum.at(new_max, codes, seq)
        for i, n in enumerate(names):
            if new_max[i] > self._accepted_hwm.get(n, -1):
                self._accepted_hwm[n] = int(new_max[i])
        kept = int(fresh.sum())
        self.duplicates_dropped += len(seq) - kept
        return batch if kept == len(seq) else batch.filter(pa.array(fresh))

    def add(self, batch: pa.RecordBatch) -> None:
        """Buffer rows (already deduplicated and flagged) for the next commit."""
        if batch.num_rows == 0:
            return
        if not self._buffer:
            self._first_buffered = time.monotonic()
        self._buffer.append(batch)
        self._buffered_rows += batch.num_rows

    def due(self) -> bool:
        return self._buffered_rows >= self.flush_rows or (
            self._buffered_rows > 0 and time.monotonic() - self._first_buffered >= self.flush_age_s)

    def flush(self, extra: dict | None = None) -> list[CommittedFile]:
        """Write and commit everything buffered; returns the files committed. ``extra`` goes into the
        same atomic commit record (ingest names the detector state that matches the data here)."""
        if not self._buffer:
            return []
        table = pa.Table.from_batches(self._buffer).unify_dictionaries().combine_chunks()
        # Partition and sort on integers: site/line dictionary codes and the UTC day number, then
        # each partition by (sensor name rank, ts). Formatting a date string per row and sorting on
        # strings cost 70 % of a commit (measured by bench/sink.py).
        site_codes, site_names = _codes(table.column("site"))
        line_codes, line_names = _codes(table.column("line"))
        sensor_codes, sensor_names = _codes(table.column("sensor"))
        sensor_rank = np.argsort(np.argsort(np.array(sensor_names, dtype=object), kind="stable"), kind="stable")
        ts = table.column("ts").cast(pa.int64()).to_numpy()
        day = ts // 86_400_000_000_000
        part = (site_codes.astype(np.int64) * (len(line_names) + 1) + line_codes) * 1_000_000 + (day - day.min())
        order = np.lexsort((ts, sensor_rank[sensor_codes], part))
        part_sorted = part[order]
        bounds = np.flatnonzero(np.diff(part_sorted)) + 1
        staged: list[tuple[Path, Path, int]] = []
        try:
            for chunk in np.split(order, bounds):
                first = chunk[0]
                site, line = site_names[site_codes[first]], line_names[line_codes[first]]
                when = datetime.fromtimestamp(int(day[first]) * 86_400, UTC).strftime("%Y-%m-%d")
                rows = table.take(pa.array(chunk)).drop_columns(list(PARTITION_COLUMNS)).replace_schema_metadata(
                    _FILE_SCHEMA.metadata)
                d = self.root / f"site={quote(site, safe='')}" / f"line={quote(line, safe='')}" / f"date={when}"
                d.mkdir(parents=True, exist_ok=True)
                final = d / f"part-{time.time_ns()}-{uuid.uuid4().hex[:8]}.parquet"
                tmp = d / f".{final.name}.tmp"
                # Step 1: write under a temporary name and fsync.
                with open(tmp, "wb") as fh:
                    pq.write_table(rows.cast(_FILE_SCHEMA), fh, compression="zstd", row_group_size=1 << 20)
                    fh.flush()
                    os.fsync(fh.fileno())
                staged.append((tmp, final, rows.num_rows))
            # Step 2: rename into place.
            new_files = []
            for tmp, final, n in staged:
                os.replace(tmp, final)
                fsync_dir(final.parent)
                new_files.append(CommittedFile(final.relative_to(self.root).as_posix(), n, sha256_file(final)))
            log.info("sink.step2 renamed=%d", len(new_files))
            # Step 3: the commit record, atomically.
            self._write_commit(self.files + new_files, self._accepted_hwm, extra or {})
        except OSError as exc:
            for tmp, _, _ in staged:
                tmp.unlink(missing_ok=True)
            raise SinkCommitError(f"{self.root}: cannot commit {table.num_rows} readings: {exc}") from exc
        self.files.extend(new_files)
        self.extra = extra or {}
        self.committed_hwm = dict(self._accepted_hwm)
        self.rows_committed += table.num_rows
        self._buffer.clear()
        self._buffered_rows = 0
        log.info("sink.commit files=%d rows=%d", len(new_files), table.num_rows)
        return new_files

    def _write_commit(self, files: list[CommittedFile], hwm: dict[str, int], extra: dict) -> None:
        rec = {"version": 1, "schema_version": SCHEMA_VERSION, "hwm": hwm, "extra": extra,
               "files": [{"path": f.path, "rows": f.rows, "sha256": f.sha256} for f in files]}
        tmp = self.commit_path.with_suffix(".tmp")
        with open(tmp, "w") as fh:
            json.dump(rec, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.commit_path)
        fsync_dir(self.state_dir)


def read_dataset(root: Path) -> pa.Table:
    """Every committed reading under ``root`` as a ``READING_SCHEMA`` table (cold path, tests)."""
    files = sorted(str(p) for p in root.rglob("part-*.parquet"))
    if not files:
        return READING_SCHEMA.empty_table()
    part = ds.partitioning(pa.schema([("site", pa.string()), ("line", pa.string())]), flavor="hive")
    dataset = ds.dataset(files, format="parquet", partitioning=part, partition_base_dir=str(root))
    table = dataset.to_table(columns=[*READING_SCHEMA.names])
    return pa.Table.from_arrays([table.column(f.name).cast(f.type) for f in READING_SCHEMA], schema=READING_SCHEMA)

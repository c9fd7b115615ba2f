"""Parquet sink: Hive-partitioned (``site=/line=/date=``), zstd, sorted by (lot, device, sensor, ts) per file.

Exactly once: a reading is named by (source, seq). The sink keeps, per source, the exact set of
committed seqs as merged intervals (``ingest.seqranges``), so a redelivered batch is dropped
whatever order batches arrive in (MQTT shared subscriptions and spool replay reorder them), and a
late reading is kept and lands in the partition of its own source time.

Commit protocol (several sinks may write one dataset, each under its own writer name, e.g. one per
ingest worker; the compactor and retention may change the record too):

1. Rows are ordered by partition, then (lot, device, sensor, ts) (``sort_order``: a counting-sort
   kernel in ``ingest.sink_kernels``); each partition is encoded to Parquet in memory, hashed (SHA-256) and written to
   ``.<name>.tmp`` beside its final name, and fsynced (in a helper thread, overlapping the next
   partition's encoding).
2. The commit lock is taken (``ingest.commit_record.locked``).
3. Each temporary file is renamed to its final ``part-*.parquet`` name; each directory is fsynced.
4. The commit record (files with rows, SHA-256, lots and time bounds; committed seq intervals per
   source; ``extra``, e.g. the detector state's file) is re-read if another writer changed it,
   merged, and replaced atomically. Only now is the batch committed. The lock is released.
   If another writer committed some of the same (source, seq) meanwhile (a payload redelivered to
   a second worker during a hand-over), those rows are dropped and the commit is redone without them.

A failure in any step raises ``SinkCommitError`` naming the path and the OS error; files of the
failed commit are removed, the rows stay buffered and the seqs uncommitted, so upstream is not
acknowledged and the next ``flush`` retries. On open (under the lock), any ``part-*.parquet`` the
record does not name (a crash between 3 and 4) and any sink ``.tmp`` file (a crash in 1) is
deleted, as is a ``.tmp`` file of a writer that is not running (each writer holds a ``flock`` on
``writers/<name>.lock``; another live writer's temporary files are its commit in progress): their
rows were never committed, so upstream still holds them and delivers them again.
Readers take the file list from the record (``ingest.query.snapshot_files``), never from a glob,
so they never see a file between 3 and 4. The partition columns live in the path only, as Hive
layout expects; ``read_dataset`` restores them.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from ingest.commit_record import CommittedFile, Snapshot, locked, read_snapshot, state_dir_of, write_snapshot
from ingest.seqranges import SeqRanges
from ingest.sink_kernels import fresh_rows, group_rows, partition_order
from qctrace.durable import fsync_dir, makedirs
from qctrace.errors import SinkCommitError
from qctrace.schema import READING_SCHEMA, SCHEMA_VERSION, check_batch, source_keys

log = logging.getLogger(__name__)

__all__ = ["CommittedFile", "ParquetSink", "read_dataset", "storage_error"]

PARTITION_COLUMNS = ("site", "line")
DAY_NS = 86_400_000_000_000
FILE_METADATA = {b"qctrace.schema_version": str(SCHEMA_VERSION).encode()}
_FILE_SCHEMA = pa.schema([f for f in READING_SCHEMA if f.name not in PARTITION_COLUMNS], metadata=FILE_METADATA)
ROW_GROUP_ROWS = 1 << 17
"""Rows per row group: large enough for scans, small enough that row-group statistics let a query
with a time or lot filter skip most of a compacted file."""


def storage_error(action: str, path: Path, exc: OSError, rows: int) -> SinkCommitError:
    """The error a user sees when the disk refuses a commit: what, where, why, and what happens now."""
    why = os.strerror(exc.errno) if exc.errno else str(exc)
    name = errno.errorcode.get(exc.errno or 0, "")
    hint = {errno.ENOSPC: "free disk space", errno.EDQUOT: "raise the quota", errno.EROFS: "remount read-write",
            errno.EACCES: "fix the permissions", errno.EPERM: "fix the permissions"}.get(exc.errno or 0,
                                                                                       "fix the cause")
    return SinkCommitError(f"{action} {exc.filename or path}: {why}{f' ({name})' if name else ''}; {rows} readings"
                           f" stay pending and are not acknowledged upstream; {hint} and ingest retries")


def encode_parquet(table: pa.Table, row_group_rows: int = ROW_GROUP_ROWS) -> tuple[pa.Buffer, str]:
    """A Parquet file's bytes and their SHA-256, encoded in memory: the hash costs no second read."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", row_group_size=row_group_rows, write_page_index=True)
    buf = sink.getvalue()
    return buf, hashlib.sha256(buf).hexdigest()


def write_durably(tmp: Path, buf: pa.Buffer) -> None:
    with open(tmp, "wb") as fh:
        fh.write(buf)
        fh.flush()
        os.fsync(fh.fileno())


def write_parquet(table: pa.Table, path: Path, row_group_rows: int = ROW_GROUP_ROWS, tmp: Path | None = None) -> str:
    """Write ``table`` to ``tmp`` (default ``.<name>.tmp`` beside ``path``) and fsync it; returns its SHA-256."""
    buf, sha = encode_parquet(table, row_group_rows)
    write_durably(tmp if tmp is not None else tmp_path(path), buf)
    return sha


def tmp_path(final: Path) -> Path:
    return final.with_name(f".{final.name}.tmp")


WRITER_NAME = re.compile(r"[A-Za-z0-9_.]{1,64}")


def writer_of(name: str) -> str:
    """The writer a sink file (``part-<ns>-<rand>-<writer>.parquet`` or its ``.tmp``) belongs to."""
    stem = name.removeprefix(".").removesuffix(".tmp").removesuffix(".parquet")
    parts = stem.split("-")
    return parts[3] if len(parts) == 4 else ""


_WRITER_CLAIMS: dict[Path, tuple[int, int]] = {}  # lock file -> (fd holding the flock, sinks open)


class _Conflict(Exception):
    """Another writer committed some of the buffered (source, seq) first (see ``flush``)."""

    def __init__(self, keep: np.ndarray, theirs: dict[str, SeqRanges]) -> None:
        self.keep = keep
        self.theirs = theirs


def partition_dir(root: Path, site: str, line: str, day: int) -> Path:
    when = datetime.fromtimestamp(day * 86_400, UTC).strftime("%Y-%m-%d")
    return root / f"site={quote(site, safe='')}" / f"line={quote(line, safe='')}" / f"date={when}"


def _indices(col: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, list[str]]:
    """Codes and names of a single-chunk dictionary column."""
    arr = col.chunk(0) if isinstance(col, pa.ChunkedArray) else col
    return arr.indices.to_numpy(zero_copy_only=False), arr.dictionary.to_pylist()


def _ranks(col: pa.Array) -> tuple[np.ndarray, int]:
    """Each row's rank by value of a single-chunk dictionary column (nulls first), and how many ranks."""
    names = col.dictionary.to_pylist()
    rank = np.argsort(np.argsort(np.array(names, dtype=object), kind="stable"), kind="stable") + 1
    codes = col.indices.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)  # null rows: 0 below
    r = rank[codes] if len(names) else np.zeros(len(col), dtype=np.int64)
    if col.null_count:
        r = np.where(col.is_null().to_numpy(zero_copy_only=False), 0, r)
    return r, len(names) + 1


def sort_order(table: pa.Table, part: np.ndarray, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The file order: by partition, then (lot, device, sensor, ts). Within a partition (one site and
    line) that is each lot's readings in sensor-key and time order, so one lot's rows are contiguous
    and the row groups' lot statistics let a lot query skip the rest of a large compacted file; a
    sink file, which rarely spans a lot change, is simply in (sensor, ts) order."""
    lot, n_lot = _ranks(table.column("lot").chunk(0))
    dev, n_dev = _ranks(table.column("device").chunk(0))
    sen, n_sen = _ranks(table.column("sensor").chunk(0))
    group, keys = group_rows((lot * n_dev + dev) * n_sen + sen, n_lot * n_dev * n_sen)
    return partition_order(part, group, ts, len(keys))


class ParquetSink:
    def __init__(self, root: Path, state_dir: Path | None = None, flush_rows: int = 200_000,
                 flush_age_s: float = 1.0, row_group_rows: int = ROW_GROUP_ROWS, writer: str = "ingest") -> None:
        if not WRITER_NAME.fullmatch(writer):
            raise SinkCommitError(f"sink writer name {writer!r}: use 1-64 letters, digits, '_' or '.'")
        self.root = root
        self.writer = writer
        self.state_dir = state_dir if state_dir is not None else state_dir_of(root)
        self.flush_rows = flush_rows
        self.flush_age_s = flush_age_s
        self.row_group_rows = row_group_rows
        self._snap = Snapshot()
        self._committed: dict[str, SeqRanges] = {}
        self._accepted: dict[str, SeqRanges] = {}
        self._buffer: list[pa.RecordBatch] = []
        self._buffered_rows = 0
        self._first_buffered = 0.0
        self.duplicates_dropped = 0
        self._io = ThreadPoolExecutor(1, thread_name_prefix="qctrace-sink-io")
        self._confirmed: set[str] = set()
        self._dirs: set[Path] = set()  # partition directories known to exist (retention may remove one: see flush)
        self._pending_sources: set[str] = set()  # sources of the buffered rows
        self.last_sources: list[str] = []  # sources of the last batch deduplicated (ingest maps nodes to them)
        self._writer_claim: Path | None = None
        self._open()

    # ------------------------------------------------------------------ what is committed

    @property
    def files(self) -> list[CommittedFile]:
        return self._snap.files

    @property
    def extra(self) -> dict:
        """What else the last commit recorded (e.g. the detector state's file)."""
        return self._snap.extra

    @property
    def rows_committed(self) -> int:
        return self._snap.rows

    @property
    def committed_hwm(self) -> dict[str, int]:
        """The highest committed seq per source (lower seqs may still be missing: see ``covers``)."""
        return {k: r.high for k, r in self._committed.items() if len(r)}

    def committed_ranges(self, source: str) -> list[tuple[int, int]]:
        """The committed seqs of ``source`` as sorted, disjoint, inclusive intervals."""
        r = self._committed.get(source)
        return r.pairs() if r is not None else []

    def covers(self, source: str, lo: int, hi: int) -> bool:
        """Every seq of ``source`` in [lo, hi] is committed: upstream may drop them (acknowledge)."""
        r = self._committed.get(source)
        return hi < lo or (r is not None and r.covers(lo, hi))

    def unreported(self) -> list[CommittedFile]:
        """Files this sink committed whose ledger event was not confirmed (``confirm_reported``),
        e.g. because the process died between the commit and the event: report them again."""
        want = set(self._snap.unreported) - self._confirmed
        return [f for f in self._snap.files
                if f.path in want and not f.replaces and writer_of(f.path.rsplit("/", 1)[-1]) == self.writer]

    def confirm_reported(self, files: list[CommittedFile]) -> None:
        """The ledger has these files' events. Kept in memory and written with the next commit: a
        crash before it only repeats an event, it never loses one."""
        self._confirmed.update(f.path for f in files)

    def save_confirmations(self) -> None:
        """Write pending confirmations now (a clean shutdown), so a restart repeats no event."""
        if not self._confirmed:
            return
        try:
            with locked(self.state_dir):
                self._reload()
                snap = self._snap
                snap.unreported = [p for p in snap.unreported if p not in self._confirmed]
                snap.generation += 1
                write_snapshot(self.state_dir, snap)
        except OSError as exc:
            raise storage_error("cannot update the commit record in", self.state_dir, exc, 0) from exc
        self._confirmed.clear()

    @property
    def pending_rows(self) -> int:
        """Rows added but not yet committed."""
        return self._buffered_rows

    @property
    def commit_path(self) -> Path:
        return self.state_dir / "commit.json"

    # ------------------------------------------------------------------ open and recover

    def _open(self) -> None:
        try:
            makedirs(self.root)
            self._writer_claim = self._claim_writer()
            with locked(self.state_dir):
                if read_snapshot(self.state_dir) is None:
                    self._first_open()
                self._reload()
                self._recover()
        except OSError as exc:
            raise storage_error("cannot open the dataset at", self.root, exc, 0) from exc
        self._committed = {k: SeqRanges(v) for k, v in self._snap.ranges.items()}
        self._accepted = {k: v.copy() for k, v in self._committed.items()}

    def _claim_writer(self) -> Path:
        """Hold ``writers/<name>.lock`` while any sink of this name is open in this process: a
        sink of the same name in another process would take our temporary files for a dead
        writer's. (Sinks of one name in one process share the claim: a test reopening a dataset is
        one writer restarting.)"""
        d = self.state_dir / "writers"
        makedirs(d)  # also the state directory, whose commit record must not vanish with it
        path = (d / f"{self.writer}.lock").resolve()
        held = _WRITER_CLAIMS.get(path)
        if held is not None:
            _WRITER_CLAIMS[path] = (held[0], held[1] + 1)
            return path
        fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)  # read-only: a remount ro stays possible
        for attempt in range(40):  # another worker checking whether we are alive holds it for a moment
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt < 39:
                    time.sleep(0.05)
        else:
            os.close(fd)
            raise SinkCommitError(f"{self.root}: an ingest worker named {self.writer!r} is already writing to this"
                                  " dataset; give each worker its own name (qctrace ingest --worker NAME)") from None
        _WRITER_CLAIMS[path] = (fd, 1)
        return path

    def close(self) -> None:
        """Release the writer name (also released when the process dies)."""
        path, self._writer_claim = self._writer_claim, None
        if path is not None and path in _WRITER_CLAIMS:
            fd, n = _WRITER_CLAIMS[path]
            if n > 1:
                _WRITER_CLAIMS[path] = (fd, n - 1)
            else:
                del _WRITER_CLAIMS[path]
                os.close(fd)
        self._io.shutdown(wait=True)

    def _writer_alive(self, writer: str) -> bool:
        if writer == self.writer:
            return False  # called while opening: files of our own name are a dead incarnation's
        if (self.state_dir / "writers" / f"{writer}.lock").resolve() in _WRITER_CLAIMS:
            return True
        try:
            fd = os.open(self.state_dir / "writers" / f"{writer}.lock", os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)

    def sync(self) -> None:
        """Learn what other writers committed (call before taking over their sources), so a
        redelivery of their readings is dropped here too."""
        try:
            with locked(self.state_dir):
                self._reload()
        except OSError as exc:
            raise storage_error("cannot read the commit record in", self.state_dir, exc, 0) from exc
        for k, pairs in self._snap.ranges.items():
            theirs = SeqRanges(pairs)
            for mine in (self._committed, self._accepted):
                r = mine.setdefault(k, SeqRanges())
                r.add_intervals(theirs.starts, theirs.ends)

    def _reload(self) -> None:
        """Re-read the record (with the lock held): the compactor or retention may have changed it."""
        self._snap = read_snapshot(self.state_dir) or Snapshot()

    def _merged_ranges(self, table: pa.Table) -> dict[str, SeqRanges]:
        """The record's seqs (with the lock held, just re-read) joined with ours. Raises ``_Conflict``
        when another writer committed a (source, seq) we hold buffered: the compactor and retention
        never change seqs, so a change is another worker's commit."""
        out: dict[str, SeqRanges] = {}
        theirs: dict[str, SeqRanges] = {}
        for k, pairs in self._snap.ranges.items():
            mine = self._committed.get(k)
            r = SeqRanges(pairs)
            if mine is None or mine.pairs() != r.pairs():
                theirs[k] = r
            out[k] = r
        clash = [k for k in theirs if k in self._pending_sources]
        if clash:
            src = source_keys(table)
            seq = table.column("seq").to_numpy().view(np.int64)
            keep = np.ones(table.num_rows, dtype=bool)
            for k in clash:
                rows = np.flatnonzero(pc.equal(src, k).to_numpy(zero_copy_only=False))
                keep[rows[theirs[k].contains(seq[rows])]] = False
            if not keep.all():
                raise _Conflict(keep, theirs)
        for k, r in self._accepted.items():
            o = out.setdefault(k, SeqRanges())
            o.add_intervals(r.starts, r.ends)
        return out

    def _first_open(self) -> None:
        """No commit record: a new dataset gets an empty one, so that later a missing record can only
        mean damage. Files without a record are never deleted as uncommitted: that would destroy
        a dataset whose record was lost."""
        found = next(self.root.rglob("part-*.parquet"), None)
        if found is not None:
            raise SinkCommitError(f"{self.commit_path}: missing, but {self.root} holds Parquet files (e.g. {found});"
                                  " restore the commit record from a backup, or move the files away to start a new"
                                  " dataset. Nothing was changed.")
        write_snapshot(self.state_dir, Snapshot())

    def _recover(self) -> None:
        known = {f.path for f in self._snap.files} | {r.path for r in self._snap.retired}
        for p in self.root.rglob("*part-*"):
            rel = p.relative_to(self.root).as_posix()
            uncommitted = p.name.startswith("part-") and p.suffix == ".parquet" and rel not in known
            orphan = p.name.startswith(".part-") and p.name.endswith(".tmp") and not self._writer_alive(
                writer_of(p.name))
            if uncommitted or orphan:
                log.warning("sink.recover removing_uncommitted=%s", rel)
                p.unlink()

    # ------------------------------------------------------------------ dedupe and buffer

    def dedupe(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """The rows of ``batch`` not seen before (by exact (source, seq)); marks them seen.

        Seen means committed or buffered for the next commit: a redelivery of either is dropped.
        Duplicates inside the batch keep their first row.
        """
        check_batch(batch)
        n = batch.num_rows
        if n == 0:
            return batch
        seq = batch.column("seq").to_numpy().view(np.int64)
        cols = [batch.column(c) for c in ("site", "line", "device")]
        codes = [c.indices.to_numpy(zero_copy_only=False).astype(np.int64) for c in cols]
        sizes = [len(c.dictionary) for c in cols]
        group, keys = group_rows((codes[0] * sizes[1] + codes[1]) * sizes[2] + codes[2], sizes[0] * sizes[1] * sizes[2])
        ranges = []
        names = [c.dictionary.to_pylist() for c in cols]
        self.last_sources = []
        for k in keys.tolist():
            s, rest = divmod(k, sizes[1] * sizes[2])
            ln, d = divmod(rest, sizes[2])
            name = f"{names[0][s]}/{names[1][ln]}/{names[2][d]}"
            self.last_sources.append(name)
            r = self._accepted.get(name)
            if r is None:
                r = self._accepted[name] = SeqRanges()
            ranges.append(r)
        off = np.cumsum([0] + [len(r) for r in ranges])
        starts = np.concatenate([r.starts for r in ranges])
        ends = np.concatenate([r.ends for r in ranges])
        keep, run_g, run_s, run_e = fresh_rows(group, seq, len(ranges), off, starts, ends)
        at = np.searchsorted(run_g, np.arange(len(ranges) + 1))
        for g, r in enumerate(ranges):
            r.add_intervals(run_s[at[g]:at[g + 1]], run_e[at[g]:at[g + 1]])
        kept = int(keep.sum())
        self.duplicates_dropped += n - kept
        return batch if kept == n else batch.filter(pa.array(keep))

    def add(self, batch: pa.RecordBatch) -> None:
        """Buffer rows (already deduplicated and flagged) for the next commit."""
        if batch.num_rows == 0:
            return
        if not self._buffer:
            self._first_buffered = time.monotonic()
        self._buffer.append(batch)
        self._buffered_rows += batch.num_rows
        self._pending_sources.update(self.last_sources)

    def due(self) -> bool:
        return self._buffered_rows >= self.flush_rows or (
            self._buffered_rows > 0 and time.monotonic() - self._first_buffered >= self.flush_age_s)

    # ------------------------------------------------------------------ commit

    def _layout(self, table: pa.Table) -> list[tuple[Path, pa.Table, CommittedFile]]:
        """Split and sort the buffered rows into one table per partition (no I/O)."""
        site_c, site_n = _indices(table.column("site"))
        line_c, line_n = _indices(table.column("line"))
        ts = table.column("ts").chunk(0).view(pa.int64()).to_numpy()
        day = ts // DAY_NS
        d0 = int(day.min())
        n_days = int(day.max()) - d0 + 1
        part = (site_c.astype(np.int64) * len(line_n) + line_c) * n_days + (day - d0)
        order, bounds, ids = sort_order(table, part, ts)
        data = table.drop_columns(list(PARTITION_COLUMNS)).take(pa.array(order)).replace_schema_metadata(
            FILE_METADATA)
        ts_sorted = ts[order]
        lot = table.column("lot").chunk(0)
        lot_c = lot.indices.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        lot_names = lot.dictionary.to_pylist()
        if lot.null_count:
            lot_c = np.where(lot.is_null().to_numpy(zero_copy_only=False), len(lot_names), lot_c)
        lot_sorted = lot_c[order]
        out = []
        for j, p in enumerate(ids.tolist()):
            a, b = int(bounds[j]), int(bounds[j + 1])
            rest, dd = divmod(p, n_days)
            s, ln = divmod(rest, len(line_n))
            present = np.flatnonzero(np.bincount(lot_sorted[a:b], minlength=len(lot_names) + 1)[:len(lot_names)])
            final = partition_dir(self.root, site_n[s], line_n[ln], d0 + dd) / \
                f"part-{time.time_ns()}-{uuid.uuid4().hex[:8]}-{self.writer}.parquet"
            meta = CommittedFile(final.relative_to(self.root).as_posix(), b - a, "",
                                 tuple(sorted({lot_names[i] for i in present.tolist()})),
                                 int(ts_sorted[a:b].min()), int(ts_sorted[a:b].max()))
            out.append((final, data.slice(a, b - a), meta))
        return out

    def flush(self, extra: dict | None = None) -> list[CommittedFile]:
        """Write and commit everything buffered; returns the files committed. ``extra`` goes into the
        same atomic commit record (ingest names the detector state that matches the data here)."""
        while True:
            if not self._buffer:
                return []
            table = pa.Table.from_batches(self._buffer).unify_dictionaries().combine_chunks()
            try:
                return self._commit(table, extra)
            except _Conflict as c:
                dropped = int((~c.keep).sum())
                log.warning("sink.conflict dropped=%d sources=%s: another writer committed them first", dropped,
                            ",".join(sorted(c.theirs)))
                self.duplicates_dropped += dropped
                for k, r in c.theirs.items():
                    for mine in (self._committed, self._accepted):
                        m = mine.setdefault(k, SeqRanges())
                        m.add_intervals(r.starts, r.ends)
                kept = table.filter(pa.array(c.keep))
                self._buffer = kept.to_batches() if kept.num_rows else []
                self._buffered_rows = kept.num_rows

    def _commit(self, table: pa.Table, extra: dict | None) -> list[CommittedFile]:
        n = table.num_rows
        staged: list[tuple[Path, CommittedFile]] = []
        touched: list[Path] = []  # every final name whose temporary file may exist
        renamed: list[Path] = []
        try:
            # Step 1: order, encode, hash, write under a temporary name, fsync. Writing and fsyncing a
            # partition's file (I/O, in a helper thread) overlaps encoding the next one (CPU).
            writes = []
            for final, rows, meta in self._layout(table):
                if final.parent not in self._dirs:
                    makedirs(final.parent)  # a new partition's directory must outlive a power cut
                    self._dirs.add(final.parent)
                touched.append(final)
                buf, sha = encode_parquet(rows, self.row_group_rows)
                writes.append(self._io.submit(write_durably, tmp_path(final), buf))
                staged.append((final, CommittedFile(meta.path, meta.rows, sha, meta.lots, meta.ts_min, meta.ts_max)))
            errors = [w.exception() for w in writes]  # wait for every write, even after a failure
            if any(errors):
                raise next(e for e in errors if e is not None)
            log.info("sink.step1 written=%d rows=%d", len(staged), n)
            # Step 2: the commit lock (the compactor or retention may be changing the record).
            with locked(self.state_dir):
                self._reload()
                ranges = self._merged_ranges(table)
                # Step 3: rename into place; fsync each directory once.
                for final, _ in staged:
                    os.replace(tmp_path(final), final)
                    renamed.append(final)
                for d in {f.parent for f, _ in staged}:
                    fsync_dir(d)
                log.info("sink.step3 renamed=%d", len(renamed))
                # Step 4: the commit record, atomically.
                new_files = [m for _, m in staged]
                snap = Snapshot(self._snap.generation + 1, self._snap.files + new_files,
                                {k: r.pairs() for k, r in ranges.items()}, _merge_extra(self._snap.extra, extra),
                                self._snap.retired,
                                [p for p in self._snap.unreported if p not in self._confirmed]
                                + [m.path for m in new_files])
                write_snapshot(self.state_dir, snap)
                self._snap = snap
        except (OSError, SinkCommitError, _Conflict) as exc:
            self._dirs.clear()  # a directory may be gone (retention, an operator): check them all again
            for final in touched:
                with_tmp = [tmp_path(final)] + ([final] if final in renamed else [])
                for p in with_tmp:
                    try:
                        p.unlink(missing_ok=True)
                    except OSError:
                        log.warning("sink.cleanup cannot_remove=%s", p)
            if isinstance(exc, SinkCommitError | _Conflict):
                raise
            raise storage_error("cannot commit to", self.root, exc, n) from exc
        self._committed = ranges
        self._accepted = {k: r.copy() for k, r in ranges.items()}
        self._pending_sources.clear()
        self._confirmed.clear()
        self._buffer.clear()
        self._buffered_rows = 0
        log.info("sink.commit generation=%d files=%d rows=%d", self._snap.generation, len(new_files), n)
        return new_files


def _merge_extra(old: dict, new: dict | None) -> dict:
    """``extra`` is shared by the writers: each writes its own keys; a dict value is merged key by
    key (e.g. ``detectors``: node → state file, where each worker writes the nodes it holds)."""
    out = dict(old)
    for k, v in (new or {}).items():
        out[k] = {**out[k], **v} if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_dataset(root: Path, state_dir: Path | None = None) -> pa.Table:
    """Every committed reading under ``root`` as a ``READING_SCHEMA`` table (cold path, tests), from
    the files the commit record names (so files being compacted or retired are never counted twice)."""
    snap = read_snapshot(state_dir if state_dir is not None else state_dir_of(root))
    files = [str(root / f.path) for f in snap.files] if snap else []
    if not files:
        return READING_SCHEMA.empty_table()
    part = ds.partitioning(pa.schema([("site", pa.string()), ("line", pa.string())]), flavor="hive")
    dataset = ds.dataset(files, format="parquet", partitioning=part, partition_base_dir=str(root))
    table = dataset.to_table(columns=[*READING_SCHEMA.names])
    return pa.Table.from_arrays([table.column(f.name).cast(f.type) for f in READING_SCHEMA], schema=READING_SCHEMA)


"""Background compaction: a partition's small files merged into larger ones, invisibly to readers.

Each merge reads the small files of one partition, sorts their rows as the sink does
(``ingest.sink.sort_order``), writes one file under a temporary name (``.compact-<name>.tmp``, a
name the sink's recovery leaves alone), and then, holding the commit lock, renames it into place and replaces the commit
record with one in which the new file stands where the old ones stood. The old files move to the
record's ``retired`` list: a reader's snapshot names either the old files or the new one, never
both and never neither, and the old files stay on disk for ``grace_s`` seconds so a reader still
holding an older snapshot finds them (``ingest.commit_record`` explains why a grace period).
``purge_retired`` deletes them afterwards; each compaction run starts with it.

A crash leaves either the old record (the new file, renamed or not, is not named in it: the next
compaction or the sink's recovery removes it) or the new one. Only one compaction runs at a time
per dataset (``compact.lock``); it may run in a thread beside ingest, or as another process.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ingest.commit_record import CommittedFile, Retired, Snapshot, locked, read_snapshot, write_snapshot
from ingest.leases import role_leases
from ingest.sink import FILE_METADATA, ROW_GROUP_ROWS, sort_order, write_parquet
from qctrace.durable import fsync_dir
from qctrace.errors import SinkCommitError

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]
COMPACT_LOCK = "compact.lock"


@dataclass
class CompactResult:
    merged: list[CommittedFile] = field(default_factory=list)  # the new files, each naming what it replaces
    files_in: int = 0
    rows: int = 0
    purged: int = 0
    skipped: int = 0  # groups whose files changed under us (retention) and were left alone

    def lines(self) -> list[str]:
        return [f"compacted {self.files_in} files ({self.rows} readings) into {len(self.merged)}",
                f"deleted {self.purged} replaced files past their grace period"
                + (f"; {self.skipped} groups left alone (changed meanwhile)" if self.skipped else "")]


def partition_of(path: str) -> str:
    return path.rsplit("/", 1)[0]


def plan(snap: Snapshot, min_files: int, target_rows: int) -> list[list[CommittedFile]]:
    """Groups of small files to merge: per partition, files under half of ``target_rows`` in time
    order, packed into groups of at least ``min_files`` files and at most ``target_rows`` rows."""
    small: dict[str, list[CommittedFile]] = {}
    for f in snap.files:
        if f.rows < target_rows // 2:
            small.setdefault(partition_of(f.path), []).append(f)
    groups = []
    for part in sorted(small):
        files = sorted(small[part], key=lambda f: (f.ts_min or 0, f.path))
        cur: list[CommittedFile] = []
        for f in files:
            if cur and sum(c.rows for c in cur) + f.rows > target_rows:
                if len(cur) >= min_files:
                    groups.append(cur)
                cur = []
            cur.append(f)
        if len(cur) >= min_files:
            groups.append(cur)
    return groups


@contextlib.contextmanager
def maintenance_lock(state_dir: Path) -> Iterator[None]:
    state_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(state_dir / COMPACT_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SinkCommitError(f"{state_dir / COMPACT_LOCK}: another compaction or retention run holds this"
                                  " dataset; wait for it to finish") from None
        yield
    finally:
        os.close(fd)


def _merge(root: Path, files: list[CommittedFile], row_group_rows: int) -> tuple[Path, Path, CommittedFile]:
    """Read, sort and write one group (no lock held): the new file under its temporary name."""
    table = pa.concat_tables([pq.read_table(root / f.path) for f in files], promote_options="default")
    table = table.unify_dictionaries().combine_chunks().replace_schema_metadata(FILE_METADATA)
    ts = table.column("ts").chunk(0).view(pa.int64()).to_numpy()
    order, _, _ = sort_order(table, np.zeros(len(ts), dtype=np.int64), ts)
    table = table.take(pa.array(order))
    final = root / partition_of(files[0].path) / f"part-{time.time_ns()}-{uuid.uuid4().hex[:8]}.parquet"
    tmp = final.with_name(f".compact-{final.name}.tmp")
    sha = write_parquet(table, final, row_group_rows, tmp=tmp)
    lots = sorted({x for x in table.column("lot").unique().to_pylist() if x is not None})
    meta = CommittedFile(final.relative_to(root).as_posix(), table.num_rows, sha, tuple(lots), int(ts.min()),
                         int(ts.max()), tuple(f.path for f in files))
    return tmp, final, meta


def _sweep(root: Path, state_dir: Path) -> None:
    """Remove final files the record does not name: a compaction that died between its rename and
    its record. Safe under the lock: every writer renames and records in one critical section."""
    with locked(state_dir):
        snap = read_snapshot(state_dir)
        if snap is None:
            return
        known = {f.path for f in snap.files} | {r.path for r in snap.retired}
        for p in root.rglob("part-*.parquet"):
            if p.relative_to(root).as_posix() not in known:
                log.warning("compact.recover removing_uncommitted=%s", p)
                p.unlink()


def unreported_files(state_dir: Path) -> list[CommittedFile]:
    """Compacted files still in the dataset whose ledger event was never confirmed."""
    snap = read_snapshot(state_dir)
    if snap is None or not snap.unreported:
        return []
    want = set(snap.unreported)
    return [f for f in snap.files if f.path in want and f.replaces]  # the sink reports its own files


def confirm_reported(state_dir: Path, paths: list[str]) -> None:
    """The ledger has these files' events: stop reporting them (and forget any no longer committed)."""
    with locked(state_dir):
        snap = read_snapshot(state_dir)
        if snap is None or not snap.unreported:
            return
        current = {f.path for f in snap.files}
        keep = [p for p in snap.unreported if p not in set(paths) and p in current]
        if keep != snap.unreported:
            snap.unreported = keep
            snap.generation += 1
            write_snapshot(state_dir, snap)


def purge_retired(root: Path, state_dir: Path, grace_s: float, now: float | None = None) -> int:
    """Delete retired files whose grace period is over; returns how many."""
    now = time.time() if now is None else now
    with locked(state_dir):
        snap = read_snapshot(state_dir)
        if snap is None:
            return 0
        due = [r for r in snap.retired if r.since + grace_s <= now]
        if not due:
            return 0
        for r in due:
            # Only the file: an emptied partition directory stays (the sink may be writing a late
            # reading into it right now, and it remembers which directories exist).
            (root / r.path).unlink(missing_ok=True)
        snap.retired = [r for r in snap.retired if r.since + grace_s > now]
        snap.generation += 1
        write_snapshot(state_dir, snap)
    log.info("compact.purge deleted=%d", len(due))
    return len(due)


def compact(root: Path, state_dir: Path, min_files: int = 4, target_rows: int = 2_000_000, grace_s: float = 300.0,
            row_group_rows: int = ROW_GROUP_ROWS, progress: Progress | None = None,
            on_files: Callable[[list[CommittedFile]], None] | None = None, confirm: bool = True) -> CompactResult:
    """One compaction pass over the dataset: purge expired retired files, then merge every group
    ``plan`` finds. ``on_files`` hears each new file as soon as it is committed (the ledger's
    ``data_committed`` event, naming what it replaces), and files an earlier run committed but
    never confirmed first. With ``confirm`` a file counts as reported once ``on_files`` returns;
    without, the caller confirms (``confirm_reported``) when its ledger has the event."""
    res = CompactResult()
    try:
        with maintenance_lock(state_dir):
            for p in root.rglob(".compact-*.tmp"):  # a compaction that died before its commit
                log.warning("compact.recover removing=%s", p)
                p.unlink()
            _sweep(root, state_dir)
            res.purged = purge_retired(root, state_dir, grace_s)
            if on_files and confirm and (late := unreported_files(state_dir)):
                on_files(late)
                confirm_reported(state_dir, [f.path for f in late])
            snap = read_snapshot(state_dir)
            groups = plan(snap, min_files, target_rows) if snap else []
            for k, group in enumerate(groups):
                if progress:
                    progress("compacting", k, len(groups))
                tmp, final, meta = _merge(root, group, row_group_rows)
                if not _publish(root, state_dir, group, tmp, final, meta):
                    res.skipped += 1
                    continue
                res.merged.append(meta)
                res.files_in += len(group)
                res.rows += meta.rows
                if on_files:
                    on_files([meta])
                    if confirm:
                        confirm_reported(state_dir, [meta.path])
            if progress:
                progress("compacting", len(groups), len(groups))
    except OSError as exc:
        from ingest.sink import storage_error

        raise storage_error("cannot compact", root, exc, 0) from exc
    return res


def _publish(root: Path, state_dir: Path, group: list[CommittedFile], tmp: Path, final: Path,
             meta: CommittedFile) -> bool:
    """Step 2 of a merge, under the commit lock: rename the new file in, swap it for the old ones in
    one atomic record update. False (and nothing changed) when the old files are no longer all
    committed (retention dropped one meanwhile)."""
    with locked(state_dir):
        snap = read_snapshot(state_dir) or Snapshot()
        current = {f.path for f in snap.files}
        old = {f.path for f in group}
        if not old <= current:
            tmp.unlink(missing_ok=True)
            return False
        os.replace(tmp, final)
        fsync_dir(final.parent)
        now = time.time()
        snap.files = [f for f in snap.files if f.path not in old] + [meta]
        snap.retired = snap.retired + [Retired(p, now, "compacted") for p in sorted(old)]
        snap.unreported = [*snap.unreported, meta.path]
        snap.generation += 1
        write_snapshot(state_dir, snap)
    log.info("compact.commit file=%s replaces=%d rows=%d", meta.path, len(group), meta.rows)
    return True


class BackgroundCompactor:
    """``compact`` every ``every_s`` seconds in a daemon thread beside ingest, by one worker at a time.

    Every ingest worker runs one, but only the holder of the ``compactor`` role lease
    (``ingest.leases.role_leases``) compacts; the others try for the lease on each pass. A killed
    holder frees it with its file descriptors, so compaction carries on in a surviving worker
    instead of waiting for the dead one to come back (the soak's Parquet file count grew while
    the one compacting worker kept being killed). One holder also means one reporter: merged
    files whose ledger event a dead holder never confirmed are handed on by whoever takes the
    lease next, once.

    The thread never touches the ledger (its connection belongs to ingest's thread): each new
    file waits in ``drain()`` until ingest hands it on as a fact and ``confirm``s it. A failure
    (a full disk, say) is logged and kept in ``error``; the next pass tries again, and ingest
    carries on meanwhile.
    """

    ROLE = "compactor"

    def __init__(self, root: Path, state_dir: Path, every_s: float, min_files: int = 4,
                 target_rows: int = 2_000_000, grace_s: float = 300.0, row_group_rows: int = ROW_GROUP_ROWS,
                 lease_poll_s: float = 5.0) -> None:
        """``lease_poll_s``: how soon after start, and how often while another worker holds the
        role, a pass is tried (see ``_loop``)."""
        self.root, self.state_dir, self.every_s = root, state_dir, every_s
        self.lease_poll_s = lease_poll_s
        self._args = (min_files, target_rows, grace_s, row_group_rows)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._new: list[CommittedFile] = []
        self._thread: threading.Thread | None = None
        self._lease = role_leases(state_dir)
        self.passes = 0
        self.passes_idle = 0  # passes another worker held the lease
        self.error: Exception | None = None

    @property
    def holds_lease(self) -> bool:
        return self._lease.holds(self.ROLE)

    def _take_lease(self) -> bool:
        if self._lease.holds(self.ROLE):
            return True
        if not self._lease.try_take(self.ROLE):
            return False
        late = unreported_files(self.state_dir)  # a previous holder died between a merge and its event
        log.info("compact.lease_taken state=%s unreported=%d", self.state_dir, len(late))
        self._keep(late)
        return True

    def _keep(self, files: list[CommittedFile]) -> None:
        with self._lock:
            self._new.extend(files)

    def drain(self) -> list[CommittedFile]:
        """The files compacted since the last call."""
        with self._lock:
            out, self._new = self._new, []
        return out

    def run_once(self) -> None:
        self.passes += 1
        if not self._take_lease():
            self.passes_idle += 1
            return
        min_files, target_rows, grace_s, rg = self._args
        try:
            compact(self.root, self.state_dir, min_files, target_rows, grace_s, rg, on_files=self._keep,
                    confirm=False)
            self.error = None
        except SinkCommitError as exc:  # another run holds the dataset, or the disk refused
            self.error = exc
            log.warning("compact.background_failed error=%s", exc)

    def _loop(self) -> None:
        """A pass every ``every_s`` while holding the role; otherwise a look at the lease every
        ``lease_poll_s``, and a first pass that soon after start. Waiting ``every_s`` for both, a
        holder killed every minute or two (the one-hour soak killed a worker every 78 s) left
        compaction to holders that never reached their first pass: its last quarter ran 5 passes
        where the second ran 12, and the live file count rose from a median of 254 to 366."""
        poll = min(self.every_s, self.lease_poll_s)
        wait = poll
        while not self._stop.wait(wait):
            self.run_once()
            wait = self.every_s if self.holds_lease else poll

    def confirm(self, files: list[CommittedFile]) -> None:
        """Ingest recorded these files' events in the ledger."""
        confirm_reported(self.state_dir, [f.path for f in files])

    def start(self) -> None:
        self._take_lease()  # at once: a restarted holder reports what its crash left unreported
        self._thread = threading.Thread(target=self._loop, name="qctrace-compactor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._lease.close()

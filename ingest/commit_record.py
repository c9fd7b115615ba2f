"""The dataset's commit record: the one source of truth for which Parquet files hold committed rows.

``<state>/commit.json`` is replaced atomically (``qctrace.durable.atomic_write``), so a reader
that reads it once holds a consistent snapshot: a file list in which every committed row appears
exactly once, whatever the sink, the compactor or retention do next. Writers (the sink, the
compactor, retention) change it only while holding ``<state>/commit.lock`` (``flock``), and each
re-reads the record under the lock, so none overwrites another's change.

``retired`` lists files that left the file list (replaced by a compacted file, or dropped by
retention) with the wall time they left it. They stay on disk for a grace period so that a
reader still holding an older snapshot finds its files; maintenance deletes them afterwards
(``ingest.compact.purge_retired``). ``unreported`` names compacted files whose ``data_committed``
event may not be in the ledger yet (a crash between the record and the event): they are reported
again until confirmed (``ingest.compact.confirm_reported``). A grace period rather than reader pins: readers are other
processes (dashboard, CLI, any DuckDB user) that may die without unpinning, and a query that
outlives the grace period gets an I/O error and retries on a fresh snapshot (``ingest.query``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from qctrace.durable import atomic_write, makedirs
from qctrace.schema import SCHEMA_VERSION

RECORD_NAME = "commit.json"
LOCK_NAME = "commit.lock"
RECORD_VERSION = 2


@dataclass(frozen=True, slots=True)
class CommittedFile:
    """A committed Parquet file. ``lots`` and the ``ts`` bounds let a query skip files; ``replaces``
    names the files a compacted file took the place of (they held exactly its rows)."""

    path: str  # relative to the dataset root
    rows: int
    sha256: str
    lots: tuple[str, ...] | None = None  # None: not recorded (a version 1 record)
    ts_min: int | None = None
    ts_max: int | None = None
    replaces: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, d: dict) -> CommittedFile:
        lots = d.get("lots")
        return cls(d["path"], int(d["rows"]), d["sha256"], None if lots is None else tuple(lots), d.get("ts_min"),
                   d.get("ts_max"), tuple(d.get("replaces", ())))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["lots"], d["replaces"] = None if self.lots is None else list(self.lots), list(self.replaces)
        return {k: v for k, v in d.items() if v is not None and (k != "replaces" or v)}

    def may_hold(self, lot: str | None = None, start_ns: int | None = None, end_ns: int | None = None) -> bool:
        """False only when the file certainly holds no row of ``lot`` within [start, end]."""
        if lot is not None and self.lots is not None and lot not in self.lots:
            return False
        if start_ns is not None and self.ts_max is not None and self.ts_max < start_ns:
            return False
        return not (end_ns is not None and self.ts_min is not None and self.ts_min > end_ns)


@dataclass(frozen=True, slots=True)
class Retired:
    path: str
    since: float  # wall-clock seconds when it left the file list
    reason: str  # "compacted" | "retention"


@dataclass
class Snapshot:
    """One version of the commit record."""

    generation: int = 0
    files: list[CommittedFile] = field(default_factory=list)
    ranges: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    retired: list[Retired] = field(default_factory=list)
    unreported: list[str] = field(default_factory=list)  # compacted files the ledger may not know yet

    @property
    def hwm(self) -> dict[str, int]:
        return {k: v[-1][1] for k, v in self.ranges.items() if v}

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.files)

    def to_json(self) -> bytes:
        return json.dumps({
            "version": RECORD_VERSION, "schema_version": SCHEMA_VERSION, "generation": self.generation,
            "hwm": self.hwm, "ranges": {k: [list(p) for p in v] for k, v in sorted(self.ranges.items())},
            "extra": self.extra, "files": [f.to_dict() for f in self.files],
            "retired": [asdict(r) for r in self.retired], "unreported": self.unreported,
        }, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Snapshot:
        rec = json.loads(data)
        if "ranges" in rec:
            ranges = {k: [(int(a), int(b)) for a, b in v] for k, v in rec["ranges"].items()}
        else:  # version 1 kept a high-water mark only: everything up to it was seen
            ranges = {k: [(0, int(v))] for k, v in rec.get("hwm", {}).items() if int(v) >= 0}
        return cls(int(rec.get("generation", 0)), [CommittedFile.from_dict(f) for f in rec["files"]], ranges,
                   rec.get("extra", {}), [Retired(**r) for r in rec.get("retired", ())],
                   list(rec.get("unreported", ())))


def state_dir_of(root: Path) -> Path:
    """Where the commit record of the dataset at ``root`` lives: ``DATA_DIR/ingest`` beside
    ``DATA_DIR/readings`` (the layout ``ingest.Ingest`` creates)."""
    return root.parent / "ingest"


def read_snapshot(state_dir: Path) -> Snapshot | None:
    """The current record, or ``None`` when nothing was ever committed."""
    try:
        return Snapshot.from_json((state_dir / RECORD_NAME).read_bytes())
    except FileNotFoundError:
        return None


def write_snapshot(state_dir: Path, snap: Snapshot) -> None:
    """Replace the record atomically and durably (call with the lock held)."""
    atomic_write(state_dir / RECORD_NAME, snap.to_json())


@contextlib.contextmanager
def locked(state_dir: Path) -> Iterator[None]:
    """Exclusive right to change the record, across threads and processes (``flock``)."""
    makedirs(state_dir)  # the record written under the lock must not vanish with its directory
    fd = os.open(state_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock

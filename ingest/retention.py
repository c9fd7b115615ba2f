"""Retention: partitions older than the configured age are dropped, except those of lots on hold.

A partition (``site=/line=/date=``) is dropped when its day ended more than ``retention_days``
ago and none of its files holds a reading of a protected lot (held or recalled and not released:
``protected_lots``, which the caller reads from the ledger; ingest does not import the ledger).
A file whose lots were never recorded (an old commit record) protects its partition: retention
never guesses. Dropping is one atomic commit-record update that moves the partition's files to
``retired``; they are deleted after the grace period like compacted files
(``ingest.compact.purge_retired``), so a reader holding an older snapshot still finds them.

What was dropped is written first to a manifest, ``_retention/retention-<ns>.json`` under the
dataset root (each file's path, rows and SHA-256), returned as a ``CommittedFile`` of 0 rows that
``replaces`` the dropped files: recorded in the ledger as a ``data_committed`` event, it tells an
auditor those files are gone on purpose, and its own hash proves the list was not changed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from ingest.commit_record import CommittedFile, Retired, locked, read_snapshot, write_snapshot
from ingest.compact import maintenance_lock, partition_of, purge_retired
from qctrace.durable import atomic_write

MANIFEST_DIR = "_retention"

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]


@dataclass
class RetentionResult:
    cutoff: date
    dropped: list[str] = field(default_factory=list)  # partitions
    kept_for_lots: dict[str, list[str]] = field(default_factory=dict)  # partition -> protected lots in it
    files: int = 0
    rows: int = 0
    purged: int = 0
    dry_run: bool = False
    manifest: CommittedFile | None = None

    def lines(self) -> list[str]:
        verb = "would drop" if self.dry_run else "dropped"
        out = [f"{verb} {len(self.dropped)} partitions before {self.cutoff} ({self.files} files, {self.rows} readings)"]
        out += [f"  {p}" for p in self.dropped]
        for p, lots in sorted(self.kept_for_lots.items()):
            out.append(f"kept {p}: lots on hold or recalled: {', '.join(lots)}")
        if not self.dry_run:
            out.append(f"deleted {self.purged} files past their grace period")
        return out


def _day(partition: str) -> date | None:
    for part in partition.split("/"):
        if part.startswith("date="):
            return date.fromisoformat(part.removeprefix("date="))
    return None


def select(files: Iterable[CommittedFile], cutoff: date, protected: set[str]) -> tuple[
        dict[str, list[CommittedFile]], dict[str, list[str]]]:
    """Partitions dated before ``cutoff``: those to drop (with their files), and those kept because
    they hold protected lots (with the lots)."""
    by_part: dict[str, list[CommittedFile]] = {}
    for f in files:
        d = _day(partition_of(f.path))
        if d is not None and d < cutoff:
            by_part.setdefault(partition_of(f.path), []).append(f)
    drop, kept = {}, {}
    for p, fs in sorted(by_part.items()):
        unknown = any(f.lots is None for f in fs)
        lots = sorted({lot for f in fs for lot in (f.lots or ()) if lot in protected})
        if lots or unknown:
            kept[p] = lots or ["(lots not recorded)"]
        else:
            drop[p] = fs
    return drop, kept


def apply_retention(root: Path, state_dir: Path, retention_days: int, protected_lots: set[str],
                    dry_run: bool = False, grace_s: float = 300.0, today: date | None = None,
                    progress: Progress | None = None,
                    on_manifest: Callable[[CommittedFile], None] | None = None) -> RetentionResult:
    """Drop expired partitions (see the module docstring); ``dry_run`` only reports what would go.
    ``on_manifest`` hears the manifest before the drop is committed (the ledger records it first:
    a crash in between leaves the ledger saying files are replaced that are still there, which is
    harmless; the other order could leave files gone that no event explains)."""
    today = today or datetime.now(UTC).date()
    cutoff = today - timedelta(days=retention_days)
    res = RetentionResult(cutoff, dry_run=dry_run)
    with maintenance_lock(state_dir):
        snap = read_snapshot(state_dir)
        if snap is None:
            return res
        drop, res.kept_for_lots = select(snap.files, cutoff, protected_lots)
        res.dropped = list(drop)
        res.files = sum(len(fs) for fs in drop.values())
        res.rows = sum(f.rows for fs in drop.values() for f in fs)
        if dry_run or not drop:
            if not dry_run:
                res.purged = purge_retired(root, state_dir, grace_s)
            return res
        gone = {f.path for fs in drop.values() for f in fs}
        listing = json.dumps({"cutoff": cutoff.isoformat(), "protected_lots": sorted(protected_lots), "files": [
            {"path": f.path, "rows": f.rows, "sha256": f.sha256} for fs in drop.values() for f in fs]},
            indent=1).encode()
        rel = f"{MANIFEST_DIR}/retention-{time.time_ns()}.json"
        atomic_write(root / rel, listing)
        res.manifest = CommittedFile(rel, 0, hashlib.sha256(listing).hexdigest(), (), None, None,
                                     tuple(sorted(gone)))
        if on_manifest:
            on_manifest(res.manifest)
        with locked(state_dir):
            snap = read_snapshot(state_dir)
            assert snap is not None
            now = time.time()
            # Files the compactor wrote meanwhile are judged on the next run; these go now.
            snap.retired = snap.retired + [Retired(f.path, now, "retention") for f in snap.files if f.path in gone]
            snap.files = [f for f in snap.files if f.path not in gone]
            snap.generation += 1
            write_snapshot(state_dir, snap)
        for k, p in enumerate(res.dropped):
            log.info("retention.drop partition=%s", p)
            if progress:
                progress("retention", k + 1, len(res.dropped))
        res.purged = purge_retired(root, state_dir, grace_s)
    return res

"""The stored side of anchoring: one job per checkpoint in the ledger's SQLite file, and the lock
that says which process drives them. ``ledger.anchoring`` has the state machine and the rules.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from ledger.anchor import AnchorReceipt, Inclusion, SignedAnchorTx

__all__ = ["AnchorJob", "AnchorLock", "JobState", "JobStore", "read_jobs", "summarize"]


class JobState(StrEnum):
    PENDING = "pending"  # nothing signed yet (or signed again after its nonce was taken)
    SENT = "sent"  # signed, stored, broadcast; in no canonical block yet
    MINED = "mined"  # in a canonical block, not yet `confirmations` deep
    FINAL = "final"  # recorded in the ledger; never touched again


@dataclass(frozen=True, slots=True)
class AnchorJob:
    """One checkpoint's way to its anchor, as stored."""

    size: int
    state: JobState = JobState.PENDING
    chain_id: int | None = None
    sender: str | None = None
    nonce: int | None = None
    txs: tuple[SignedAnchorTx, ...] = ()  # every transaction signed for this nonce, oldest first
    mined: Inclusion | None = None
    waiting_since: float | None = None  # unix s; the stuck timer runs from here or the newest tx
    error: str = ""  # the last failure, cleared by the next step that works
    updated: float = 0.0

    @property
    def status(self) -> str:
        """``pending``, ``sent``, ``mined``, ``final``, or ``error: ...`` (for status pages)."""
        return f"error: {self.error}" if self.error and self.state is not JobState.FINAL else self.state.value

    def describe(self) -> str:
        what = {JobState.PENDING: "pending",
                JobState.SENT: f"sent tx {self.txs[-1].tx_hash if self.txs else '?'} (nonce {self.nonce}"
                               + (f", {len(self.txs)} fee levels)" if len(self.txs) > 1 else ")"),
                JobState.MINED: f"mined in block {self.mined.block_number if self.mined else '?'},"
                                " waiting for confirmations",
                JobState.FINAL: "final" + (f" in block {self.mined.block_number}" if self.mined else "")}[self.state]
        failing = self.error and self.state is not JobState.FINAL
        return f"checkpoint {self.size}: {what}" + (f" (error: {self.error})" if failing else "")


_SCHEMA = """
CREATE TABLE IF NOT EXISTS anchor_jobs (
    size          INTEGER PRIMARY KEY,
    state         TEXT NOT NULL,
    chain_id      INTEGER,
    sender        TEXT,
    nonce         INTEGER,
    txs           TEXT NOT NULL DEFAULT '[]',
    mined         TEXT,
    waiting_since REAL,
    error         TEXT NOT NULL DEFAULT '',
    updated       REAL NOT NULL
);
"""
_COLS = "size, state, chain_id, sender, nonce, txs, mined, waiting_since, error, updated"


def _job_of(row: tuple[Any, ...]) -> AnchorJob:
    size, state, chain_id, sender, nonce, txs, mined, waiting_since, error, updated = row
    return AnchorJob(size, JobState(state), chain_id, sender, nonce,
                     tuple(SignedAnchorTx.from_dict(t) for t in json.loads(txs)),
                     Inclusion.from_dict(json.loads(mined)) if mined else None, waiting_since, error, updated)


class JobStore:
    """The ``anchor_jobs`` table in the ledger's SQLite file, on a connection of its own.

    Its own connection because the ledger's belongs to the ingest thread: a statement of ours must
    never land inside one of ingest's transactions. ``synchronous=FULL``: a job saved as ``sent``
    before its broadcast survives a power loss, so the transaction is found again, not re-signed.
    """

    def __init__(self, ledger_path: Path, *, readonly: bool = False) -> None:
        self.path = ledger_path
        uri = ledger_path.resolve().as_uri() + ("?mode=ro" if readonly else "")
        self._db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False, timeout=30)
        if not readonly:
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def add(self, sizes: Iterable[int]) -> None:
        self._db.executemany("INSERT OR IGNORE INTO anchor_jobs (size, state, updated) VALUES (?, 'pending', ?)",
                             [(s, time.time()) for s in sizes])

    def add_unanchored(self) -> None:
        """A job for every signed checkpoint that has neither an anchor nor a job yet."""
        self._db.execute("INSERT OR IGNORE INTO anchor_jobs (size, state, updated) SELECT size, 'pending', ?"
                         " FROM checkpoints WHERE size NOT IN (SELECT size FROM anchors)", (time.time(),))

    def get(self, size: int) -> AnchorJob | None:
        row = self._db.execute(f"SELECT {_COLS} FROM anchor_jobs WHERE size = ?", (size,)).fetchone()
        return None if row is None else _job_of(row)

    def all(self) -> list[AnchorJob]:
        try:
            return [_job_of(r) for r in self._db.execute(f"SELECT {_COLS} FROM anchor_jobs ORDER BY size")]
        except sqlite3.OperationalError as exc:  # a ledger no anchorer has opened yet
            if "no such table" in str(exc):
                return []
            raise

    def unfinished(self, limit: int = -1) -> list[AnchorJob]:
        return [_job_of(r) for r in self._db.execute(
            f"SELECT {_COLS} FROM anchor_jobs WHERE state != 'final' ORDER BY size LIMIT ?", (limit,))]

    def save(self, job: AnchorJob) -> AnchorJob:
        job = replace(job, updated=time.time())
        self._db.execute(
            "UPDATE anchor_jobs SET state = ?, chain_id = ?, sender = ?, nonce = ?, txs = ?, mined = ?,"
            " waiting_since = ?, error = ?, updated = ? WHERE size = ?",
            (job.state.value, job.chain_id, job.sender, job.nonce, json.dumps([t.to_dict() for t in job.txs]),
             json.dumps(job.mined.to_dict()) if job.mined else None, job.waiting_since, job.error, job.updated,
             job.size))
        return job

    def note_error(self, sizes: Iterable[int], error: str) -> None:
        self._db.executemany("UPDATE anchor_jobs SET error = ?, updated = ? WHERE size = ? AND state != 'final'",
                             [(error, time.time(), s) for s in sizes])

    def next_nonce(self, chain_id: int, sender: str) -> int:
        """One past the highest nonce of our transactions still in flight (the node may not count them yet)."""
        row = self._db.execute("SELECT max(nonce) FROM anchor_jobs WHERE state IN ('sent', 'mined') AND chain_id = ?"
                               " AND sender = ?", (chain_id, sender)).fetchone()
        return 0 if row[0] is None else row[0] + 1

    def recorded_anchor(self, size: int) -> AnchorReceipt | None:
        row = self._db.execute("SELECT receipt FROM anchors WHERE size = ?", (size,)).fetchone()
        return None if row is None else AnchorReceipt.from_dict(json.loads(row[0]))


def read_jobs(ledger_path: Path) -> list[AnchorJob]:
    """Every anchoring job of a ledger, read-only: what ``qctrace status`` and the dashboard show."""
    if not ledger_path.exists():
        return []
    store = JobStore(ledger_path, readonly=True)
    try:
        return store.all()
    finally:
        store.close()


def summarize(jobs: Iterable[AnchorJob]) -> str:
    """One line for a status page: ``12 final, 1 sent`` and the newest error, or ``no anchoring jobs``."""
    jobs = list(jobs)
    if not jobs:
        return "no anchoring jobs"
    counts = {state: sum(j.state is state for j in jobs) for state in JobState}
    line = ", ".join(f"{n} {state.value}" for state, n in counts.items() if n)
    failing = [j for j in jobs if j.status.startswith("error")]
    if failing:
        newest = max(failing, key=lambda j: j.updated)
        line += f"; checkpoint {newest.size}: {newest.status}"
    return line


class AnchorLock:
    """The right to anchor for one ledger: an exclusive ``flock`` on ``<ledger>-anchor.lock``.

    ``flock`` belongs to the open file, so two anchorers in one process exclude each other as two
    processes do, and a process that dies (even by SIGKILL) lets go of it.
    """

    def __init__(self, ledger_path: Path) -> None:
        self.path = ledger_path.with_name(ledger_path.name + "-anchor.lock")
        self._fh: Any = None

    @property
    def held(self) -> bool:
        return self._fh is not None

    def try_acquire(self) -> bool:
        if self._fh is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")  # held open for as long as the lock is
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            return False
        fh.seek(0)
        fh.truncate()
        fh.write(f"{socket.gethostname()} pid {os.getpid()}\n")
        fh.flush()
        self._fh = fh
        return True

    def holder(self) -> str:
        """Who holds it, as the holder wrote it (for messages)."""
        try:
            return self.path.read_text().strip() or "another process"
        except OSError:
            return "another process"

    def release(self) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None

"""The ledger: an append-only SQLite table of canonical-JSON events, chained by SHA-256.

``hash[i] = SHA-256(hash[i-1] || body[i])`` with ``hash[-1]`` = 32 zero bytes. ``body`` holds the
exact canonical bytes that were hashed; verification hashes those stored bytes and never
re-serialises. ``kind``, ``lot`` and ``event_time`` are copies of body fields kept as indexed
columns for queries; verification checks that they still agree with the body, so editing an
index column cannot mislead a trace either.

WAL mode: readers (dashboard, auditors) never block the writer. ``synchronous=FULL``: an append
that returned survives power loss.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ledger.canonical import canonical_bytes
from qctrace.errors import ChainBroken, LedgerError, LedgerIntegrityError

GENESIS = bytes(32)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    idx        INTEGER PRIMARY KEY,
    kind       TEXT NOT NULL,
    lot        TEXT,
    event_time TEXT NOT NULL,
    body       BLOB NOT NULL,
    prev_hash  BLOB NOT NULL,
    hash       BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS events_lot ON events(lot);
CREATE INDEX IF NOT EXISTS events_kind ON events(kind);
"""


@dataclass(frozen=True, slots=True)
class StoredEvent:
    idx: int
    kind: str
    lot: str | None
    event_time: str
    body: bytes
    prev_hash: bytes
    hash: bytes

    def as_dict(self) -> dict[str, Any]:
        return json.loads(self.body)


@dataclass(frozen=True, slots=True)
class VerifyReport:
    events: int
    head: str  # hex hash of the last event, or of GENESIS when empty


class Ledger:
    def __init__(self, path: Path, readonly: bool = False) -> None:
        self.path = path
        self.readonly = readonly
        if readonly and not path.exists():
            raise LedgerError(f"{path}: no ledger here (run the pipeline first, or check --data-dir)")
        if not readonly:
            path.parent.mkdir(parents=True, exist_ok=True)
        uri = path.resolve().as_uri() + ("?mode=ro" if readonly else "")
        self._db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        try:
            if not readonly:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
                self._db.executescript(_SCHEMA)
            self._db.execute("SELECT idx, kind, lot, event_time, body, prev_hash, hash FROM events LIMIT 1").fetchall()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise LedgerError(f"{path}: not a qctrace ledger ({exc})") from None

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM events").fetchone()[0])

    def head(self) -> tuple[int, bytes]:
        """(number of events, hash of the last one)."""
        row = self._db.execute("SELECT idx, hash FROM events ORDER BY idx DESC LIMIT 1").fetchone()
        return (0, GENESIS) if row is None else (row[0] + 1, bytes(row[1]))

    def append(self, event: dict[str, Any]) -> StoredEvent:
        return self.append_many([event])[-1]

    def append_many(self, events: Iterable[dict[str, Any]]) -> list[StoredEvent]:
        """Append events in one transaction, chained; nothing is written if any is invalid."""
        if self.readonly:
            raise LedgerError(f"{self.path}: opened read-only")
        prepared = []
        for ev in events:
            kind = ev.get("kind")
            if not isinstance(kind, str) or "eventTime" not in ev:
                raise LedgerError(f"event needs 'kind' and 'eventTime': {ev!r:.200}")
            prepared.append((kind, ev.get("lot"), ev["eventTime"], canonical_bytes(ev)))
        out: list[StoredEvent] = []
        cur = self._db.cursor()
        cur.execute("BEGIN IMMEDIATE")  # one writer at a time; the head is read inside the lock
        try:
            row = cur.execute("SELECT idx, hash FROM events ORDER BY idx DESC LIMIT 1").fetchone()
            n, prev = (0, GENESIS) if row is None else (row[0] + 1, bytes(row[1]))
            for kind, lot, t, body in prepared:
                h = hashlib.sha256(prev + body).digest()
                cur.execute("INSERT INTO events VALUES (?,?,?,?,?,?,?)", (n, kind, lot, t, body, prev, h))
                out.append(StoredEvent(n, kind, lot, t, body, prev, h))
                n, prev = n + 1, h
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        return out

    def events(self, lot: str | None = None, kind: str | None = None) -> Iterator[StoredEvent]:
        sql, args = "SELECT idx, kind, lot, event_time, body, prev_hash, hash FROM events", []
        where = []
        if lot is not None:
            where.append("lot = ?")
            args.append(lot)
        if kind is not None:
            where.append("kind = ?")
            args.append(kind)
        if where:
            sql += " WHERE " + " AND ".join(where)
        for r in self._db.execute(sql + " ORDER BY idx", args):
            yield StoredEvent(r[0], r[1], r[2], r[3], bytes(r[4]), bytes(r[5]), bytes(r[6]))

    def lots(self) -> list[str]:
        return [r[0] for r in self._db.execute(
            "SELECT lot FROM events WHERE lot IS NOT NULL GROUP BY lot ORDER BY min(idx)")]

    def verify(self, progress: Callable[[int, int], None] | None = None) -> VerifyReport:
        """Check the whole chain; raises ``LedgerIntegrityError`` naming the first bad event."""
        total = len(self)
        prev = GENESIS
        expected_idx = 0
        try:
            rows = self._db.execute("SELECT idx, kind, lot, event_time, body, prev_hash, hash FROM events ORDER BY idx")
            for idx, kind, lot, t, body, prev_hash, h in rows:
                body, prev_hash, h = bytes(body), bytes(prev_hash), bytes(h)
                where = f"event #{idx}"
                if idx != expected_idx:
                    raise ChainBroken(f"event #{expected_idx} is missing (next stored is #{idx}): events were deleted",
                                      index=expected_idx)
                if prev_hash != prev:
                    raise ChainBroken(f"{where}: prev_hash does not match the hash of event #{idx - 1}"
                                      " (an event was changed, inserted or reordered)", index=idx,
                                      expected=prev.hex(), computed=prev_hash.hex())
                computed = hashlib.sha256(prev + body).digest()
                if computed != h:
                    raise ChainBroken(f"{where}: content changed after it was written (stored hash"
                                      f" {h.hex()[:16]}…, content hashes to {computed.hex()[:16]}…)", index=idx,
                                      expected=h.hex(), computed=computed.hex())
                try:
                    doc = json.loads(body)
                except ValueError:
                    raise ChainBroken(f"{where}: body is not JSON", index=idx) from None
                if (doc.get("kind"), doc.get("lot"), doc.get("eventTime")) != (kind, lot, t):
                    raise LedgerIntegrityError(f"{where}: index columns (kind, lot, event_time) disagree with"
                                               " the hashed body", index=idx)
                prev = h
                expected_idx += 1
                if progress is not None and expected_idx % 10_000 == 0:
                    progress(expected_idx, total)
        except sqlite3.DatabaseError as exc:
            raise LedgerIntegrityError(f"{self.path}: the ledger file is damaged near event #{expected_idx}: {exc}",
                                       index=expected_idx) from None
        if progress is not None:
            progress(expected_idx, total)
        return VerifyReport(events=expected_idx, head=prev.hex())

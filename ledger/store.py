"""The ledger: an append-only SQLite table of canonical-JSON EPCIS events, hash-chained and Merkle-tree'd.

Two structures over the same stored bytes, because they answer different questions:

* the chain, ``hash[i] = SHA-256(hash[i-1] || body[i])`` from 32 zero bytes, finds the *first*
  changed, deleted, inserted or reordered event during a full scan;
* the RFC 9162 Merkle tree, ``leaf[i] = SHA-256(0x00 || body[i])``, gives signed checkpoints and
  logarithmic inclusion and consistency proofs that an auditor checks without the whole log.

``body`` holds the exact canonical bytes that were hashed; verification hashes those stored bytes
and never re-serialises. ``kind``, ``lot`` and ``event_time`` and the ``lot_refs``/``links`` trace
indexes are derived from the body on append; verification re-derives them, so editing an index
cannot mislead a trace.

Concurrency: WAL mode, so readers (dashboard, auditors, trace) never block the writer;
``BEGIN IMMEDIATE`` serialises writers across processes, and the chain head and the Merkle
frontier are read inside that lock. ``synchronous=FULL``: an append that returned survives power
loss.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ledger import events as ev_mod
from ledger.canonical import canonical_bytes
from ledger.merkle import leaf_hash
from ledger.tree import MerkleNodes
from qctrace.errors import ChainBroken, InvalidEvent, LedgerError, LedgerIntegrityError

GENESIS = bytes(32)
SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    idx        INTEGER PRIMARY KEY,
    kind       TEXT NOT NULL,
    lot        TEXT,
    event_time TEXT NOT NULL,
    body       BLOB NOT NULL,
    hash       BLOB NOT NULL,
    leaf       BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS events_kind ON events(kind);
CREATE TABLE IF NOT EXISTS lot_refs (lot TEXT NOT NULL, idx INTEGER NOT NULL, PRIMARY KEY (lot, idx)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS links (src TEXT NOT NULL, dst TEXT NOT NULL, idx INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS links_src ON links(src);
CREATE INDEX IF NOT EXISTS links_dst ON links(dst);
CREATE TABLE IF NOT EXISTS checkpoints (size INTEGER PRIMARY KEY, note BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS anchors (size INTEGER PRIMARY KEY, receipt TEXT NOT NULL);
"""
_COLS = "idx, kind, lot, event_time, body, hash, leaf"


@dataclass(frozen=True, slots=True)
class StoredEvent:
    idx: int
    kind: str
    lot: str | None
    event_time: str
    body: bytes
    hash: bytes
    leaf: bytes

    def as_dict(self) -> dict[str, Any]:
        return json.loads(self.body)


@dataclass(frozen=True, slots=True)
class ScanReport:
    events: int
    head: str  # hex chain hash of the last event (of GENESIS when empty)
    root: bytes  # Merkle root over all events
    leaves: list[bytes]  # leaf hashes, for checkpoint and proof checks that follow the scan


def _derive(ev: dict[str, Any]) -> tuple[str, str | None, str, list[str], list[tuple[str, str]]]:
    lots = ev_mod.lots_in(ev)
    return ev_mod.kind_of(ev), (lots[0] if lots else None), ev["eventTime"], lots, ev_mod.links_of(ev)


class Ledger:
    def __init__(self, path: Path, readonly: bool = False) -> None:
        self.path = path
        self.readonly = readonly
        if readonly and not path.exists():
            raise LedgerError(f"{path}: no ledger here (run the pipeline first, or check --data-dir)")
        if not readonly:
            path.parent.mkdir(parents=True, exist_ok=True)
        uri = path.resolve().as_uri() + ("?mode=ro" if readonly else "")
        self._db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False, timeout=30)
        try:
            if not readonly:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
                version = self._db.execute("PRAGMA user_version").fetchone()[0]
                if version not in (0, SCHEMA_VERSION):
                    raise LedgerError(f"{path}: ledger schema version {version}, this qctrace reads"
                                      f" {SCHEMA_VERSION}; open it with the qctrace release that wrote it")
                self._db.executescript(_SCHEMA + MerkleNodes.SCHEMA)
                self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            self._db.execute(f"SELECT {_COLS} FROM events LIMIT 1").fetchall()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise LedgerError(f"{path}: not a qctrace ledger ({exc})") from None
        self.tree = MerkleNodes(self._db)

    # ------------------------------------------------------------ lifecycle

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        row = self._db.execute("SELECT max(idx) FROM events").fetchone()
        return 0 if row[0] is None else int(row[0]) + 1

    def head(self) -> tuple[int, bytes]:
        """(number of events, chain hash of the last one)."""
        row = self._db.execute("SELECT idx, hash FROM events ORDER BY idx DESC LIMIT 1").fetchone()
        return (0, GENESIS) if row is None else (row[0] + 1, bytes(row[1]))

    # ------------------------------------------------------------ writing

    def append(self, event: dict[str, Any]) -> StoredEvent:
        return self.append_many([event])[-1]

    def append_many(self, events: Iterable[dict[str, Any]]) -> list[StoredEvent]:
        """Append events in one transaction, chained; nothing is written if any is invalid."""
        if self.readonly:
            raise LedgerError(f"{self.path}: opened read-only")
        prepared = []
        for ev in events:
            ev_mod.validate(ev)
            try:
                derived = _derive(ev)
            except (KeyError, TypeError, AttributeError, IndexError, ValueError) as exc:
                raise InvalidEvent(f"{ev_mod.kind_of(ev)}: malformed quantity, party or location list"
                                   f" ({exc!r})") from None
            body = canonical_bytes(ev)
            prepared.append((*derived, body, leaf_hash(body)))
        if not prepared:
            return []
        out: list[StoredEvent] = []
        rows, refs, links = [], [], []
        cur = self._db.cursor()
        cur.execute("BEGIN IMMEDIATE")  # one writer at a time; the head is read inside the lock
        try:
            row = cur.execute("SELECT idx, hash FROM events ORDER BY idx DESC LIMIT 1").fetchone()
            first, prev = (0, GENESIS) if row is None else (row[0] + 1, bytes(row[1]))
            n = first
            sha = hashlib.sha256
            for kind, lot, t, lots, edges, body, leaf in prepared:
                h = sha(prev + body).digest()
                rows.append((n, kind, lot, t, body, h, leaf))
                refs.extend((x, n) for x in lots)
                links.extend((s, d, n) for s, d in edges)
                out.append(StoredEvent(n, kind, lot, t, body, h, leaf))
                n, prev = n + 1, h
            cur.executemany("INSERT INTO events VALUES (?,?,?,?,?,?,?)", rows)
            cur.executemany("INSERT OR IGNORE INTO lot_refs VALUES (?,?)", refs)
            cur.executemany("INSERT INTO links VALUES (?,?,?)", links)
            self.tree.extend(cur, first, [r[6] for r in rows])
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        return out

    def add_checkpoint(self, size: int, note: bytes) -> None:
        if self.readonly:
            raise LedgerError(f"{self.path}: opened read-only")
        self._db.execute("INSERT OR REPLACE INTO checkpoints VALUES (?, ?)", (size, note))

    def add_anchor(self, size: int, receipt: dict[str, Any]) -> None:
        if self.readonly:
            raise LedgerError(f"{self.path}: opened read-only")
        self._db.execute("INSERT OR REPLACE INTO anchors VALUES (?, ?)", (size, json.dumps(receipt, sort_keys=True)))

    # ------------------------------------------------------------ reading

    def _rows(self, sql: str, args: Sequence[Any] = ()) -> Iterator[StoredEvent]:
        for r in self._db.execute(sql, args):
            yield StoredEvent(r[0], r[1], r[2], r[3], bytes(r[4]), bytes(r[5]), bytes(r[6]))

    def events(self, lot: str | None = None, kind: str | None = None) -> Iterator[StoredEvent]:
        """Events in ledger order; ``lot`` matches every event that names the lot, in any role."""
        if lot is not None:
            sql = f"SELECT {_COLS} FROM events WHERE idx IN (SELECT idx FROM lot_refs WHERE lot = ?)"
            args: list[Any] = [lot]
            if kind is not None:
                sql += " AND kind = ?"
                args.append(kind)
            return self._rows(sql + " ORDER BY idx", args)
        if kind is not None:
            return self._rows(f"SELECT {_COLS} FROM events WHERE kind = ? ORDER BY idx", [kind])
        return self._rows(f"SELECT {_COLS} FROM events ORDER BY idx")

    def events_at(self, indices: Iterable[int]) -> list[StoredEvent]:
        ids = sorted(set(indices))
        out: list[StoredEvent] = []
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            out += self._rows(f"SELECT {_COLS} FROM events WHERE idx IN ({','.join('?' * len(chunk))}) ORDER BY idx",
                              chunk)
        return out

    def lots(self) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT lot FROM lot_refs GROUP BY lot ORDER BY min(idx)")]

    def reach(self, start: str, forward: bool = True) -> dict[str, set[int]]:
        """Every genealogy node reachable from ``start`` (a node URI), with the events that link it."""
        a, b = ("src", "dst") if forward else ("dst", "src")
        sql = (f"WITH RECURSIVE reach(node) AS (SELECT ? UNION SELECT links.{b} FROM links JOIN reach "
               f"ON links.{a} = reach.node) SELECT node FROM reach")
        out: dict[str, set[int]] = {r[0]: set() for r in self._db.execute(sql, (start,))}
        nodes = list(out)
        for i in range(0, len(nodes), 500):  # the edges leaving each reached node that stay inside the set
            chunk = nodes[i:i + 500]
            for far, idx in self._db.execute(
                    f"SELECT {b}, idx FROM links WHERE {a} IN ({','.join('?' * len(chunk))})", chunk):
                if far in out:
                    out[far].add(idx)
        return out

    def checkpoints(self) -> list[tuple[int, bytes]]:
        return [(r[0], bytes(r[1])) for r in self._db.execute("SELECT size, note FROM checkpoints ORDER BY size")]

    def anchors(self) -> list[tuple[int, dict[str, Any]]]:
        return [(r[0], json.loads(r[1])) for r in self._db.execute("SELECT size, receipt FROM anchors ORDER BY size")]

    def root(self, size: int | None = None) -> bytes:
        return self.tree.root(len(self) if size is None else size)

    def inclusion_proof(self, idx: int, size: int | None = None) -> list[bytes]:
        return self.tree.inclusion_proof(idx, len(self) if size is None else size)

    def consistency_proof(self, m: int, n: int | None = None) -> list[bytes]:
        return self.tree.consistency_proof(m, len(self) if n is None else n)

    # ------------------------------------------------------------ verification

    def scan(self, progress: Callable[[int, int], None] | None = None, check_index: bool = True) -> ScanReport:
        """Check chain, leaf hashes, derived columns and the stored Merkle nodes; raise on the first bad event.

        ``check_index`` re-parses every body to check the trace indexes (the costliest part).
        """
        total = len(self)
        prev = GENESIS
        expected = 0
        leaves: list[bytes] = []
        refs: set[tuple[str, int]] = set()
        links: set[tuple[str, str, int]] = set()
        sha = hashlib.sha256
        try:
            for idx, kind, lot, t, body, h, leaf in self._db.execute(f"SELECT {_COLS} FROM events ORDER BY idx"):
                where = f"event #{idx}"
                if idx != expected:
                    raise ChainBroken(f"event #{expected} is missing (next stored is #{idx}): events were deleted",
                                      index=expected)
                computed = sha(prev + body).digest()
                if computed != h:
                    raise ChainBroken(f"{where}: content changed, or events were reordered or inserted, after it"
                                      f" was written (stored hash {bytes(h).hex()[:16]}…, recomputed"
                                      f" {computed.hex()[:16]}…)", index=idx, expected=bytes(h).hex(),
                                      computed=computed.hex())
                lh = leaf_hash(body)
                if lh != leaf:
                    raise ChainBroken(f"{where}: stored Merkle leaf does not hash its body", index=idx,
                                      expected=bytes(leaf).hex(), computed=lh.hex())
                leaves.append(lh)
                if check_index:
                    try:
                        doc = json.loads(body)
                        d_kind, d_lot, d_t, d_lots, d_links = _derive(doc)
                    except (ValueError, KeyError, TypeError, InvalidEvent) as exc:
                        raise ChainBroken(f"{where}: body is not a qctrace event ({exc})", index=idx) from None
                    if (d_kind, d_lot, d_t) != (kind, lot, t):
                        raise LedgerIntegrityError(f"{where}: index columns (kind, lot, event_time) disagree with"
                                                   " the hashed body", index=idx)
                    refs.update((x, idx) for x in d_lots)
                    links.update((s, d, idx) for s, d in d_links)
                prev = computed
                expected += 1
                if progress is not None and expected % 50_000 == 0:
                    progress(expected, total)
            if check_index:
                self._check_index("lot_refs", "lot, idx", refs)
                self._check_index("links", "src, dst, idx", links)
        except sqlite3.DatabaseError as exc:
            raise LedgerIntegrityError(f"{self.path}: the ledger file is damaged near event #{expected}: {exc}",
                                       index=expected) from None
        if progress is not None:
            progress(expected, total)
        root = self.tree.check(leaves)
        return ScanReport(events=expected, head=prev.hex(), root=root, leaves=leaves)

    def _check_index(self, table: str, cols: str, want: set) -> None:
        have = {tuple(r) for r in self._db.execute(f"SELECT {cols} FROM {table}")}
        if have != want:
            bad = sorted((have ^ want), key=lambda r: r[-1])[0]
            state = "is not stated by" if bad in have else "is missing for"
            raise LedgerIntegrityError(f"event #{bad[-1]}: trace index {table} row {bad[:-1]} {state} the hashed"
                                       " event (the index was edited; a trace could mislead)", index=bad[-1])

"""The ledger's Merkle tree on disk: stored interior nodes so roots and proofs stay fast as it grows.

Hashing a million leaves to answer one proof takes about a second; reading about twenty stored
nodes takes well under a millisecond. Storing every node, though, would cost an extra row per
event inside the append transaction, and appends must stay cheap. So the store keeps only the
perfect subtrees of height ``STRIDE`` (256 leaves) and up in ``merkle_nodes``: about one row per
128 events. Anything lower is rebuilt on demand from the ``events.leaf`` column, at most one
256-leaf block per proof edge.

Nodes are written once, by :meth:`MerkleNodes.extend` inside the ledger's own write transaction,
when the last leaf under them arrives; they never change afterwards. Readers therefore need no
transaction of their own: anything they read under a tree size that was committed is final.

The node table is derived data, so it is not trusted: :meth:`MerkleNodes.check` recomputes every
stored node from the leaves during full verification and names the first one that disagrees.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Protocol

from ledger.merkle import EMPTY_ROOT, _pair_up, _split, consistency_proof, inclusion_proof, node_hash, root_of
from qctrace.errors import LedgerError, RootMismatch

__all__ = ["MerkleNodes"]


class _Queryable(Protocol):
    def execute(self, sql: str, parameters: Sequence[object] = ..., /) -> sqlite3.Cursor: ...


class MerkleNodes:
    """RFC 9162 tree over ``events.leaf`` (dense 0-based ``events.idx``), with sparse stored nodes."""

    STRIDE = 8
    """Lowest stored height. Part of the file format: changing it needs a rebuild of merkle_nodes."""

    SCHEMA = """
CREATE TABLE IF NOT EXISTS merkle_nodes (
    height INTEGER NOT NULL,  -- perfect subtree of 2**height leaves
    idx    INTEGER NOT NULL,  -- its position on that level: leaves [idx << height, (idx + 1) << height)
    hash   BLOB NOT NULL,
    PRIMARY KEY (height, idx)
) WITHOUT ROWID;
"""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    # ------------------------------------------------------------ writing

    def extend(self, cur: sqlite3.Cursor, first_index: int, leaf_hashes: Sequence[bytes]) -> None:
        """Store the nodes that leaves ``first_index ..`` complete; call inside the append transaction.

        Earlier leaves and nodes are read through ``cur`` because another process may have appended
        them since this one last looked; the caller's ``BEGIN IMMEDIATE`` makes that read exact.
        Most calls complete no node and return after two shifts.
        """
        s = self.STRIDE
        end = first_index + len(leaf_hashes)
        lo, hi = first_index >> s, end >> s  # new nodes at height s: [lo, hi)
        if hi == lo:
            return
        take = (hi << s) - first_index
        level = list(leaf_hashes[:take])
        if first_index != lo << s:  # the first block began in an earlier append
            level = _read_leaves(cur, lo << s, first_index) + level
        for _ in range(s):
            level = _pair_up(level)
        rows = [(s, lo + i, h) for i, h in enumerate(level)]
        height = s
        while True:
            height += 1
            nlo, nhi = first_index >> height, end >> height
            if nhi == nlo:  # no node completes here, so none above either
                break
            children = level[: (nhi << 1) - lo]
            if nlo << 1 != lo:  # the first new node's left child was stored by an earlier append
                children.insert(0, _read_node(cur, height - 1, lo - 1))
            level = _pair_up(children)
            rows.extend((height, nlo + i, h) for i, h in enumerate(level))
            lo = nlo
        cur.executemany("INSERT INTO merkle_nodes (height, idx, hash) VALUES (?, ?, ?)", rows)

    def rebuild(self, cur: sqlite3.Cursor, leaf_hashes: Sequence[bytes]) -> None:
        """Replace every stored node from all the ledger's leaves (migration, or repair after ``check``)."""
        cur.execute("DELETE FROM merkle_nodes")
        self.extend(cur, 0, leaf_hashes)

    # ------------------------------------------------------------ reading

    def subtree(self, a: int, b: int) -> bytes:
        """MTH(D[a:b]); any 0 <= a <= b works, but only ranges proofs use are fast."""
        if not 0 <= a <= b:
            raise LedgerError(f"no Merkle subtree over events [{a}, {b}): need 0 <= start <= end")
        return _Reader(self._db, self.STRIDE, b).mth(a, b)

    def root(self, size: int) -> bytes:
        """The root a checkpoint of ``size`` events signs."""
        if size < 0:
            raise LedgerError(f"no Merkle root for a tree of {size} events")
        return _Reader(self._db, self.STRIDE, size).mth(0, size)

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """RFC 9162 inclusion proof of event ``index`` in the tree of the first ``size`` events."""
        return inclusion_proof(index, size, _Reader(self._db, self.STRIDE, size).mth)

    def consistency_proof(self, m: int, n: int) -> list[bytes]:
        """RFC 9162 proof that the first ``m`` events are unchanged in the tree of the first ``n``."""
        return consistency_proof(m, n, _Reader(self._db, self.STRIDE, n).mth)

    # ------------------------------------------------------------ verification

    def check(self, leaf_hashes: Sequence[bytes]) -> bytes:
        """Recompute every stored node from all leaves in order; raise on the first that differs; return the root.

        "First" is the node whose leaf range ends earliest, the lowest if several end together: a
        changed leaf makes every ancestor differ, and this picks the smallest range around it, while
        an edited node table is reported at its first edit. Missing and surplus nodes are failures
        too: a proof that needs them would fail or, worse, be served from a node no leaf supports.
        """
        n = len(leaf_hashes)
        stored: dict[int, list[tuple[int, bytes]]] = {}
        for height, idx, h in self._db.execute("SELECT height, idx, hash FROM merkle_nodes ORDER BY height, idx"):
            stored.setdefault(height, []).append((idx, bytes(h)))
        bad: list[tuple[int, int, int, str, str, str]] = []  # (first leaf, height, idx, what, stored, computed)
        level = list(leaf_hashes)
        height = 0
        while True:
            have = stored.pop(height, [])
            if height < self.STRIDE:
                bad.extend((i << height, height, i, "is stored below the stride", h.hex(), "")
                           for i, h in have[:1])
            else:
                bad.extend(_first_difference(have, level[: n >> height], height))
            if len(level) <= 1:
                break
            level = _pair_up(level)
            height += 1
        for height, have in stored.items():  # heights above the whole tree
            i, h = have[0]
            bad.append((i << height, height, i, "is beyond the ledger's last event", h.hex(), ""))
        if bad:
            first, height, i, what, want, got = min(bad, key=lambda b: ((b[2] + 1) << b[1], b[1]))
            raise RootMismatch(
                f"Merkle node height {height} #{i} over events [{first}, {(i + 1) << height}) {what}: the node table"
                " disagrees with the events' leaves (edited, or events deleted); roots and proofs served from it"
                " would be wrong. Rebuild it with MerkleNodes.rebuild once the events themselves verify.",
                index=first, expected=want, computed=got)
        return level[0] if level else EMPTY_ROOT


def _first_difference(have: list[tuple[int, bytes]], want: list[bytes],
                      height: int) -> list[tuple[int, int, int, str, str, str]]:
    """The first stored node on one level that is wrong, missing or surplus (empty list when none)."""
    if len(have) == len(want) and all(h == w for (_, h), w in zip(have, want, strict=True)) \
            and (not have or have[-1][0] == len(have) - 1):
        return []
    for pos, (i, h) in enumerate(have):
        if i != pos and pos < len(want):  # idx is unique and sorted, so the first gap is at ``pos``
            return [(pos << height, height, pos, "is missing", "", want[pos].hex())]
        if i >= len(want):
            return [(i << height, height, i, "is beyond the ledger's last event", h.hex(), "")]
        if h != want[i]:
            return [(i << height, height, i, "has a different hash", h.hex(), want[i].hex())]
    pos = len(have)
    return [(pos << height, height, pos, "is missing", "", want[pos].hex())]


def _read_leaves(q: _Queryable, a: int, b: int) -> list[bytes]:
    rows = q.execute("SELECT leaf FROM events WHERE idx >= ? AND idx < ? ORDER BY idx", (a, b)).fetchall()
    if len(rows) != b - a:
        raise LedgerError(f"events [{a}, {b}) are not all in the ledger ({len(rows)} of {b - a} found): the tree"
                          " size asked for is beyond the ledger, or events were deleted (run a full verify)")
    return [bytes(r[0]) for r in rows]


def _read_node(q: _Queryable, height: int, idx: int) -> bytes:
    row = q.execute("SELECT hash FROM merkle_nodes WHERE height = ? AND idx = ?", (height, idx)).fetchone()
    if row is None:
        raise LedgerError(f"Merkle node height {height} #{idx} (events [{idx << height}, {(idx + 1) << height}))"
                          " is not stored: the tree size asked for is beyond the ledger, or the ledger was"
                          " written without extending its tree (run a full verify)")
    return bytes(row[0])


class _Reader:
    """MTH(D[a:b]) for one request, from stored nodes plus leaf blocks read at most once each."""

    def __init__(self, q: _Queryable, stride: int, size: int) -> None:
        self._q = q
        self._stride = stride
        self._size = size  # never read leaves past this, so a short ledger is an error, not a short block
        self._blocks: dict[int, list[bytes]] = {}

    def mth(self, a: int, b: int) -> bytes:
        if b > self._size:
            raise LedgerError(f"events [{a}, {b}) reach past the tree size {self._size} this read was opened for")
        n = b - a
        if n <= 0:
            return EMPTY_ROOT
        s = self._stride
        if n & (n - 1) == 0 and a & (n - 1) == 0 and n >> s:  # perfect, aligned and tall enough: stored
            height = n.bit_length() - 1
            return _read_node(self._q, height, a >> height)
        if a >> s == (b - 1) >> s:  # inside one block: hash its leaves
            base = a >> s << s
            return root_of(self._block(a >> s)[a - base: b - base])
        k = _split(n)
        return node_hash(self.mth(a, a + k), self.mth(a + k, b))

    def _block(self, j: int) -> list[bytes]:
        block = self._blocks.get(j)
        if block is None:
            base = j << self._stride
            block = self._blocks[j] = _read_leaves(self._q, base, min(base + (1 << self._stride), self._size))
        return block

"""RFC 9162 §2.1 Merkle tree hashing, proofs and proof verification, as pure functions.

A checkpoint signs one root over every ledger event; an auditor holding that root checks a single
event with an inclusion proof and checks that a later root only extends an earlier one with a
consistency proof. Everything here is byte-exact RFC 9162 (the same tree as RFC 6962), so any
independent implementation (e.g. transparency-dev/merkle) agrees with our roots and proofs.

Proof *generation* takes a ``subtree(a, b)`` callable returning MTH(D[a:b]) rather than a list of
leaves, so the same code serves a list in memory and the SQLite node store in ``ledger.tree``.
Proof *verification* raises :class:`~qctrace.errors.RootMismatch` on every failure, malformed
input included, and never returns ``False``: a caller cannot forget to look at the result.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

from qctrace.errors import LedgerError, RootMismatch

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "Subtree",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "root_of",
    "subtree_of",
    "verify_consistency",
    "verify_inclusion",
]

_sha256 = hashlib.sha256
_LEAF = b"\x00"
_NODE = b"\x01"

HASH_SIZE = 32
EMPTY_ROOT = _sha256(b"").digest()  # MTH({}): the root of a ledger with no events

Subtree = Callable[[int, int], bytes]
"""``subtree(a, b)`` returns MTH(D[a:b]) over whatever storage holds the leaves."""


def leaf_hash(entry: bytes) -> bytes:
    """MTH of one entry; the 0x00 prefix keeps a leaf from ever being read as an interior node."""
    return _sha256(_LEAF + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Interior node; the 0x01 prefix is the other half of RFC 6962 domain separation."""
    return _sha256(_NODE + left + right).digest()


def root_of(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH over leaf hashes (not entries), built a level at a time.

    Pairing neighbours and carrying an odd last node up unchanged yields exactly the RFC's
    left-balanced tree (split at the largest power of two below n), without recursion and with
    one list per level, so a million leaves cost a million hashlib calls and little else.
    """
    level = list(leaf_hashes)
    if not level:
        return EMPTY_ROOT
    while len(level) > 1:
        level = _pair_up(level)
    return level[0]


def _pair_up(level: list[bytes]) -> list[bytes]:
    n = len(level)
    it = iter(level[: n & ~1])
    sha, pre = _sha256, _NODE
    nxt = [sha(pre + left + right).digest() for left, right in zip(it, it, strict=True)]
    if n & 1:
        nxt.append(level[-1])
    return nxt


def subtree_of(leaf_hashes: Sequence[bytes]) -> Subtree:
    """A ``subtree`` callable over leaf hashes in memory (tests, small trees, re-verification)."""

    def subtree(a: int, b: int) -> bytes:
        return root_of(leaf_hashes[a:b])

    return subtree


def _split(n: int) -> int:
    """The largest power of two strictly below ``n`` (n >= 2): where RFC 9162 splits D[n]."""
    return 1 << ((n - 1).bit_length() - 1)


def inclusion_proof(index: int, size: int, subtree: Subtree) -> list[bytes]:
    """PATH(index, D[0:size]) of RFC 9162 §2.1.3.1, leaf level first.

    The recursion is unrolled: each step records the sibling subtree and descends into the half
    holding ``index``; reversing at the end gives the RFC's bottom-up order.
    """
    if not 0 <= index < size:
        raise LedgerError(f"no inclusion proof for event #{index} in a tree of {size} events:"
                          " ask for an index below the tree size")
    lo, hi, path = 0, size, []
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            path.append(subtree(lo + k, hi))
            hi = lo + k
        else:
            path.append(subtree(lo, lo + k))
            lo += k
    path.reverse()
    return path


def consistency_proof(m: int, n: int, subtree: Subtree) -> list[bytes]:
    """PROOF(m, D[0:n]) of RFC 9162 §2.1.4.1: SUBPROOF(m, D[0:n], true), unrolled.

    ``m == n`` gives the empty proof. ``m == 0`` is refused: every tree extends the empty one, so
    there is nothing to prove and RFC 9162 verifiers reject it.
    """
    if not 0 < m <= n:
        raise LedgerError(f"no consistency proof from {m} to {n} events: need 0 < old size <= new size")
    # Within D[lo:hi]; ``known`` while D[lo:m] is the verifier's whole old tree, whose root it holds.
    lo, hi, known, path = 0, n, True, []
    while m != hi:
        k = _split(hi - lo)
        if m - lo <= k:
            path.append(subtree(lo + k, hi))
            hi = lo + k
        else:
            path.append(subtree(lo, lo + k))
            lo, known = lo + k, False
    if not known:
        path.append(subtree(lo, hi))
    path.reverse()
    return path


def _lsb(x: int) -> int:
    return x & 1


def _check_hashes(what: str, hashes: Sequence[bytes], index: int | None) -> None:
    for i, h in enumerate(hashes):
        if not isinstance(h, bytes | bytearray) or len(h) != HASH_SIZE:
            raise RootMismatch(f"{what}: proof hash #{i} is not {HASH_SIZE} bytes ({h!r:.40}): the proof is"
                               " malformed (truncated or padded in transit?)", index=index)


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> None:
    """RFC 9162 §2.1.3.2: raise RootMismatch unless ``proof`` shows ``leaf`` at ``index`` under ``root``.

    ``leaf`` is the leaf *hash* (see :func:`leaf_hash`). The proof's length is checked before any
    hashing so a padded or truncated proof gets a message that says so.
    """
    if not 0 <= index < size:
        raise RootMismatch(f"inclusion: index {index} is not in a tree of size {size}; check the tree size"
                           " the proof was made for", index=index)
    if len(leaf) != HASH_SIZE:
        raise RootMismatch(f"inclusion: leaf hash for event #{index} is {len(leaf)} bytes, not {HASH_SIZE}:"
                           " pass leaf_hash(entry), not the entry", index=index)
    want = _inclusion_length(index, size)
    if len(proof) != want:
        raise RootMismatch(f"inclusion: proof for event #{index} in a tree of {size} has {len(proof)} hashes,"
                           f" needs {want}: the proof is for another index/size or was altered", index=index)
    _check_hashes("inclusion", proof, index)
    fn, sn, r = index, size - 1, bytes(leaf)
    for p in proof:
        if sn == 0:  # unreachable after the length check; kept so the loop is the RFC's, verbatim
            raise RootMismatch("inclusion: proof is longer than the tree is deep", index=index)
        if _lsb(fn) or fn == sn:
            r = node_hash(p, r)
            while not _lsb(fn) and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0 or r != root:
        raise RootMismatch(f"inclusion: event #{index} with this proof hashes to root {r.hex()[:16]}…, not the"
                           f" expected {bytes(root).hex()[:16]}… of tree size {size}: the event, the proof or"
                           " the signed root was changed", index=index, expected=bytes(root).hex(), computed=r.hex())


def _inclusion_length(index: int, size: int) -> int:
    """Proof length: one hash per level below where paths to ``index`` and ``size-1`` split, plus
    one per left sibling on the right border above it."""
    inner = (index ^ (size - 1)).bit_length()
    return inner + (index >> inner).bit_count()


def verify_consistency(m: int, n: int, root_m: bytes, root_n: bytes, proof: Sequence[bytes]) -> None:
    """RFC 9162 §2.1.4.2: raise RootMismatch unless ``proof`` shows tree ``n`` only appends to tree ``m``.

    Equal sizes are consistent iff the roots are equal and the proof is empty (transparency-dev
    semantics, kept so its published vectors pass). ``m == 0`` always fails: the empty tree is a
    prefix of everything, so a "proof" from it says nothing and is most likely a caller's bug.
    """
    if m <= 0 or m > n:
        raise RootMismatch(f"consistency: sizes {m} -> {n} are not 0 < old <= new; a ledger never shrinks and"
                           " a proof from the empty tree proves nothing")
    if m == n:
        if proof:
            raise RootMismatch(f"consistency: sizes are equal ({m}) but the proof has {len(proof)} hashes; it"
                               " must be empty")
        if bytes(root_m) != bytes(root_n):
            raise RootMismatch(f"consistency: two different roots for the same size {m}: the ledger forked",
                               expected=bytes(root_m).hex(), computed=bytes(root_n).hex())
        return
    if not proof:
        raise RootMismatch(f"consistency: empty proof for sizes {m} -> {n}")
    _check_hashes("consistency", proof, None)
    path = list(proof)
    if m & (m - 1) == 0:  # old tree is a perfect subtree: the verifier's own root starts the path
        path.insert(0, bytes(root_m))
    fn, sn = m - 1, n - 1
    while _lsb(fn):
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise RootMismatch(f"consistency: proof for sizes {m} -> {n} has {len(proof)} hashes, more than the"
                               " tree needs: the proof is for other sizes or was padded")
        if _lsb(fn) or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not _lsb(fn) and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise RootMismatch(f"consistency: proof for sizes {m} -> {n} has {len(proof)} hashes, fewer than the"
                           " tree needs: the proof is for other sizes or was truncated")
    if fr != root_m:
        raise RootMismatch(f"consistency: the proof does not rebuild the old root of size {m}: the proof or the"
                           " old checkpoint was altered", expected=bytes(root_m).hex(), computed=fr.hex())
    if sr != root_n:
        raise RootMismatch(f"consistency: the proof does not rebuild the new root of size {n}: the ledger was"
                           f" rewritten below size {m}, or the proof or new root was altered",
                           expected=bytes(root_n).hex(), computed=sr.hex())

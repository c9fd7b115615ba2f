"""Which sequence numbers of one source are committed, as sorted, merged, inclusive intervals.

A high-water mark is exact only when a source delivers in ``seq`` order. MQTT shared
subscriptions and spool replay reorder batches, so a batch below the mark may be new and a batch
above it may be a redelivery of rows committed out of order. Intervals are exact in every order
and stay small: the edge allocates ``seq`` in reserved blocks, so a source has only a few holes
(a block lost in a crash, a batch still in flight), each one interval boundary.

Membership and insertion are NumPy operations over a whole batch (``searchsorted`` and a
cumulative maximum), never a Python loop per reading.
"""

from __future__ import annotations

import numpy as np

_EMPTY = np.empty(0, dtype=np.int64)


def runs(seqs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The intervals ``(starts, ends)`` (inclusive) that exactly cover a set of seqs, sorted."""
    if len(seqs) == 0:
        return _EMPTY, _EMPTY
    s = np.unique(seqs) if not (len(seqs) == 1 or bool(np.all(seqs[1:] > seqs[:-1]))) else seqs
    brk = np.flatnonzero(np.diff(s) != 1) + 1
    starts = np.concatenate(([s[0]], s[brk]))
    ends = np.concatenate((s[brk - 1], [s[-1]]))
    return starts.astype(np.int64, copy=False), ends.astype(np.int64, copy=False)


def merge(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Union of intervals, as sorted disjoint intervals with adjacent ones joined."""
    if len(starts) <= 1:
        return starts.astype(np.int64), ends.astype(np.int64)
    o = np.argsort(starts, kind="stable")
    s, e = starts[o], ends[o]
    reach = np.maximum.accumulate(e)
    # An interval opens a new group unless it overlaps or touches everything before it.
    new = np.concatenate(([True], s[1:] > reach[:-1] + 1))
    gi = np.flatnonzero(new)
    return s[gi].astype(np.int64), np.maximum.reduceat(e, gi).astype(np.int64)


class SeqRanges:
    """The committed (or accepted) seqs of one source."""

    __slots__ = ("ends", "starts")

    def __init__(self, pairs: list[list[int]] | list[tuple[int, int]] | None = None) -> None:
        pairs = pairs or []
        self.starts = np.array([p[0] for p in pairs], dtype=np.int64)
        self.ends = np.array([p[1] for p in pairs], dtype=np.int64)
        self.starts, self.ends = merge(self.starts, self.ends)

    def copy(self) -> SeqRanges:
        out = SeqRanges()
        out.starts, out.ends = self.starts.copy(), self.ends.copy()
        return out

    def contains(self, seqs: np.ndarray) -> np.ndarray:
        """A boolean per seq: is it in the set."""
        if len(self.starts) == 0:
            return np.zeros(len(seqs), dtype=bool)
        i = np.searchsorted(self.starts, seqs, side="right") - 1
        return (i >= 0) & (seqs <= self.ends[np.maximum(i, 0)])

    def add(self, seqs: np.ndarray) -> None:
        s, e = runs(seqs)
        self.add_intervals(s, e)

    def add_intervals(self, starts: np.ndarray, ends: np.ndarray) -> None:
        if len(starts) == 0:
            return
        if len(self.starts) and starts[0] > self.ends[-1] and bool(np.all(starts[1:] > ends[:-1] + 1)):
            # The common case: seqs above everything so far (``starts``/``ends`` come from ``runs``).
            if starts[0] == self.ends[-1] + 1:
                self.ends[-1] = ends[0]
                starts, ends = starts[1:], ends[1:]
            if len(starts):
                self.starts = np.concatenate((self.starts, starts))
                self.ends = np.concatenate((self.ends, ends))
            return
        self.starts, self.ends = merge(np.concatenate((self.starts, starts)), np.concatenate((self.ends, ends)))

    def covers(self, lo: int, hi: int) -> bool:
        """Every seq in [lo, hi] is in the set."""
        if hi < lo:
            return True
        i = int(np.searchsorted(self.starts, lo, side="right")) - 1
        return i >= 0 and int(self.ends[i]) >= hi

    @property
    def high(self) -> int:
        """The highest seq in the set; -1 when empty."""
        return int(self.ends[-1]) if len(self.ends) else -1

    def pairs(self) -> list[tuple[int, int]]:
        return [(int(a), int(b)) for a, b in zip(self.starts, self.ends, strict=True)]

    def __len__(self) -> int:
        return len(self.starts)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SeqRanges) and self.pairs() == other.pairs()

    def __repr__(self) -> str:
        return f"SeqRanges({self.pairs()})"

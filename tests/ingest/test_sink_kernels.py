"""The sink's Numba kernels agree with their plain-Python references, and interval sets are exact."""

from __future__ import annotations

import itertools

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from ingest import sink_kernels, sink_reference
from ingest.seqranges import SeqRanges, merge, runs

_rows = st.lists(st.tuples(st.integers(0, 5), st.integers(0, 3), st.integers(-5, 5)), max_size=80)


@given(_rows)
def test_partition_order_kernel_matches_reference(rows):
    part = np.array([r[0] for r in rows], dtype=np.int64)
    sensor = np.array([r[1] for r in rows], dtype=np.int64)
    ts = np.array([r[2] for r in rows], dtype=np.int64)
    got = sink_kernels.partition_order(part, sensor, ts, 4)
    want = sink_reference.partition_order(part, sensor, ts, 4)
    for g, w in zip(got, want, strict=True):
        assert g.tolist() == w.tolist()


def test_partition_order_names_the_fix_for_bad_input():
    import pytest

    with pytest.raises(ValueError, match="sensor ranks in"):
        sink_kernels.partition_order(np.array([0]), np.array([4]), np.array([0]), 4)


_sets = st.lists(st.lists(st.integers(0, 40), max_size=20), min_size=1, max_size=4)


@given(_sets, st.lists(st.tuples(st.integers(0, 3), st.integers(0, 45)), max_size=60))
def test_fresh_rows_kernel_matches_reference(seen, rows):
    ranges = [SeqRanges() for _ in seen]
    for r, s in zip(ranges, seen, strict=True):
        r.add(np.array(s, dtype=np.int64))
    rows = [(g % len(seen), s) for g, s in rows]
    group = np.array([r[0] for r in rows], dtype=np.int64)
    seq = np.array([r[1] for r in rows], dtype=np.int64)
    off = np.cumsum([0] + [len(r) for r in ranges])
    starts = np.concatenate([r.starts for r in ranges])
    ends = np.concatenate([r.ends for r in ranges])
    got = sink_kernels.fresh_rows(group, seq, len(ranges), off, starts, ends)
    want = sink_reference.fresh_rows(group, seq, len(ranges), off, starts, ends)
    for g, w in zip(got, want, strict=True):
        assert g.tolist() == w.tolist()


@given(st.lists(st.lists(st.integers(0, 60), max_size=15), max_size=8), st.integers(0, 60), st.integers(0, 60))
def test_interval_set_is_exactly_the_union_of_what_was_added(chunks, lo, hi):
    r = SeqRanges()
    seen: set[int] = set()
    for c in chunks:
        r.add(np.array(c, dtype=np.int64))
        seen |= set(c)
    assert r.contains(np.arange(62)).tolist() == [i in seen for i in range(62)]
    assert r.covers(lo, hi) == all(i in seen for i in range(lo, hi + 1))
    assert r.high == max(seen, default=-1)
    pairs = r.pairs()
    assert all(b + 1 < c for (_, b), (c, _) in itertools.pairwise(pairs))  # merged: no touching pairs
    assert SeqRanges(pairs) == r


def test_runs_and_merge_join_touching_intervals():
    assert [x.tolist() for x in runs(np.array([5, 3, 4, 9, 9]))] == [[3, 9], [5, 9]]
    assert [x.tolist() for x in merge(np.array([10, 0, 4]), np.array([12, 3, 9]))] == [[0], [12]]

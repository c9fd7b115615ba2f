"""The campaign's oracle counts a sample read twice even when each copy has its own seq."""

from __future__ import annotations

from qctrace.campaign import samples_repeated
from qctrace.schema import batch_from_columns

T0 = 1_793_599_200 * 10**9


def _table(rows):
    import pyarrow as pa

    n = len(rows)
    return pa.Table.from_batches([batch_from_columns({
        "ts": [T0 + t for _, _, t, _ in rows], "recv_ts": [T0] * n, "site": ["p"] * n,
        "line": [line for line, _, _, _ in rows], "device": ["plc"] * n, "sensor": [s for _, s, _, _ in rows],
        "value": [1.0] * n, "quality": [0] * n, "seq": [q for _, _, _, q in rows], "lot": ["L"] * n})])


def test_a_sample_read_twice_under_two_seqs_counts_once_per_extra_copy():
    clean = [("l1", "a", 0, 0), ("l1", "b", 0, 1), ("l1", "a", 1, 2), ("l2", "a", 0, 0)]  # same time, other line
    assert samples_repeated(_table(clean)) == 0
    twice = [*clean, ("l1", "a", 1, 7), ("l1", "a", 1, 8)]  # one sample three times, each its own seq
    assert samples_repeated(_table(twice)) == 2

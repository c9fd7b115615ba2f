"""``source_spans`` (on the forwarder's hot path, works on dictionary codes) against a plain reference."""

from __future__ import annotations

import pyarrow as pa
from hypothesis import given
from hypothesis import strategies as st

from edge.forward import source_spans
from qctrace.schema import batch_from_columns, source_keys


def _reference(batch: pa.RecordBatch) -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    for name, t in zip(source_keys(batch).to_pylist(), batch.column("ts").cast(pa.int64()).to_pylist(), strict=True):
        lo, hi = out.get(name, (t, t))
        out[name] = (min(lo, t), max(hi, t))
    return out


def _dict(codes: list[int], values: list[str]) -> pa.DictionaryArray:
    return pa.DictionaryArray.from_arrays(pa.array(codes, pa.int32()), pa.array(values))


rows = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 3), st.integers(0, 1), st.integers(0, 10**12)),
                min_size=1, max_size=60)


@given(rows, st.booleans())
def test_spans_per_source_match_the_reference(data, repeated_values):
    # With repeated_values the dictionaries hold one value twice (a batch concatenated from two
    # others does): two codes, one source.
    sites = ["p1", "p2", "p1" if repeated_values else "p3"]
    lines = ["l1", "l2", "l3", "l1" if repeated_values else "l4"]
    devices = ["plc", "logger"]
    n = len(data)
    batch = batch_from_columns({
        "ts": [r[3] for r in data], "recv_ts": [r[3] for r in data],
        "site": _dict([r[0] for r in data], sites), "line": _dict([r[1] for r in data], lines),
        "device": _dict([r[2] for r in data], devices), "sensor": ["s"] * n, "value": [1.0] * n,
        "quality": [0] * n, "seq": list(range(n))})
    assert source_spans(batch) == _reference(batch)

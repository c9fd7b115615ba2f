"""The edge → ingest payload: round trips, and every kind of bad payload named for what it is."""

from __future__ import annotations

import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from qctrace import wire
from qctrace.errors import PayloadError
from qctrace.schema import Gap, batch_from_columns

T0 = 1_793_599_200 * 10**9


def batch(n: int = 5, lot: str = "L-1", start: int = 0) -> pa.RecordBatch:
    return batch_from_columns({
        "ts": [T0 + i * 10**9 for i in range(n)], "recv_ts": [T0] * n, "site": ["plant1"] * n, "line": ["line1"] * n,
        "device": ["plc1"] * n, "sensor": ["weight"] * n, "value": [500.0 + i for i in range(n)], "quality": [0] * n,
        "seq": list(range(start, start + n)), "lot": [lot] * n,
    })


@given(n=st.integers(0, 50), rid=st.integers(0, 2**64 - 1), node=st.text(min_size=1, max_size=20))
def test_batches_round_trip_with_node_and_rid(n, rid, node):
    b = batch(n)
    env = wire.decode(wire.encode(node, rid, b))
    assert (env.node, env.rid) == (node, rid)
    assert env.item.equals(b)
    assert wire.peek(wire.encode(node, rid, b)) == (node, rid)


def test_gap_records_round_trip():
    g = Gap("plant1/line1/plc1", 1, 2, "connection lost: <b>x</b>")
    assert wire.decode(wire.encode("e1", 7, g)).item == g


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda p: b"HTTP" + p[4:], "not a qctrace payload"),
    (lambda p: p[:4] + bytes([9]) + p[5:], "payload version 9 is not supported"),
    (lambda p: p[:5] + bytes([7]) + p[6:], "unknown payload kind 7"),
    (lambda p: p[:10], "too short"),
    (lambda p: p[:60], "not a readable Arrow IPC stream"),
    (lambda p: b"", "too short"),
])
def test_malformed_payloads_are_refused_with_the_reason(mutate, message):
    good = wire.encode("edge1", 3, batch())
    with pytest.raises(PayloadError, match=message):
        wire.decode(mutate(good))


def test_oversized_payload_is_refused_unread():
    with pytest.raises(PayloadError, match="exceeds the limit"):
        wire.decode(b"QCTW" + bytes(wire.MAX_PAYLOAD_BYTES))


def test_a_batch_of_another_schema_is_refused():
    other = pa.record_batch({"x": [1, 2]})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, other.schema) as w:
        w.write_batch(other)
    good = wire.encode("edge1", 3, batch())
    head = good[: len(good) - len(_body(good))]
    with pytest.raises(PayloadError, match="expected the reading schema"):
        wire.decode(head + sink.getvalue().to_pybytes())


def _body(payload: bytes) -> bytes:
    sink = pa.BufferOutputStream()
    b = wire.decode(payload).item
    with pa.ipc.new_stream(sink, b.schema) as w:
        w.write_batch(b)
    return sink.getvalue().to_pybytes()

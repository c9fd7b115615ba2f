"""Batches carry per-source sequence numbers that never repeat and the lot current at source time."""

from __future__ import annotations

from edge.batcher import BatchBuilder, StreamTable, fixed_lot
from edge.sequence import SeqAllocator
from qctrace.schema import READING_SCHEMA, batch_to_readings


def test_seq_is_contiguous_per_source_in_arrival_order():
    st = StreamTable()
    a = st.add("s", "l1", "plc", "t1")
    b = st.add("s", "l2", "plc", "t1")
    bb = BatchBuilder(st, SeqAllocator(None))
    for i in range(5):
        bb.add(a, i, 1.0, 0)
        bb.add(b, i, 2.0, 0)
    rows = batch_to_readings(bb.build())
    assert [r.seq for r in rows if r.line == "l1"] == [0, 1, 2, 3, 4]
    assert [r.seq for r in rows if r.line == "l2"] == [0, 1, 2, 3, 4]
    bb.add(a, 9, 1.0, 0)
    assert batch_to_readings(bb.build())[0].seq == 5


def test_lot_follows_source_timestamp_not_arrival():
    st = StreamTable()
    t = st.add("s", "l", "plc", "w")
    st.timeline("s/l").set(100, "LOT-1")
    st.timeline("s/l").set(200, "LOT-2")
    bb = BatchBuilder(st, SeqAllocator(None))
    for ts in (250, 150, 50):
        bb.add(t, ts, 1.0, 0)
    batch = bb.build()
    assert batch.schema.equals(READING_SCHEMA)
    assert [r.lot for r in batch_to_readings(batch)] == ["LOT-2", "LOT-1", None]


def test_fixed_lot_applies_at_any_time():
    st = StreamTable()
    t = st.add("coldchain", "SHP-1", "logger", "temperature", lot_scope="coldchain/SHP-1/logger")
    fixed_lot(st, "coldchain/SHP-1/logger", "LOT-9")
    bb = BatchBuilder(st, SeqAllocator(None))
    bb.add(t, 1, 4.0, 0)
    assert batch_to_readings(bb.build())[0].lot == "LOT-9"


def test_seq_is_never_reused_after_a_crash(tmp_path):
    path = tmp_path / "seq.json"
    first = SeqAllocator(path, block=10)
    used = [first.take("src", 3), first.take("src", 4)]
    assert used == [0, 3]
    # The process dies here without any shutdown; a new one starts from the persisted reservation.
    second = SeqAllocator(path, block=10)
    assert second.take("src", 1) >= 7


def test_a_reservation_that_could_not_be_persisted_is_not_used(tmp_path, monkeypatch):
    """A full disk while reserving the next block: the numbers past the one on disk are refused,
    not handed out (a crash would reissue them, and ingest would drop the new readings as repeats)."""
    import pytest

    path = tmp_path / "seq.json"
    seqs = SeqAllocator(path, block=10)
    assert seqs.take("src", 5) == 0  # reserved up to 15 on disk
    real_open = open

    def full(p, *a, **k):
        if str(p).endswith(".tmp"):
            raise OSError(28, "No space left on device")
        return real_open(p, *a, **k)

    monkeypatch.setattr("builtins.open", full)
    assert seqs.take("src", 10) == 5  # within the reservation on disk: no write needed
    with pytest.raises(OSError):
        seqs.take("src", 1)  # the next block could not be reserved
    with pytest.raises(OSError):
        seqs.take("src", 1)  # and is still not assumed reserved
    monkeypatch.setattr("builtins.open", real_open)
    assert SeqAllocator(path, block=10).take("src", 1) >= 15
    assert seqs.take("src", 1) == 15

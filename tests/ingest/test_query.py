"""Queries read the sink's commit record; a dataset another tool wrote (no record) is read as it lies."""

from __future__ import annotations

import shutil

from ingest.query import flagged_by_line_day, select_readings, snapshot_files
from ingest.sink import ParquetSink
from qctrace.schema import batch_from_columns

DAY = 1_793_577_600 * 10**9


def _batch(seqs, line):
    n = len(seqs)
    return batch_from_columns({
        "ts": [DAY + q * 10**9 for q in seqs], "recv_ts": [DAY] * n, "site": ["s"] * n, "line": [line] * n,
        "device": ["d"] * n, "sensor": ["b", "a"] * (n // 2), "value": [float(q) for q in seqs],
        "quality": [0] * n, "seq": list(seqs), "lot": [f"L{q // 10}" for q in seqs], "flags": [q % 3 for q in seqs]})


def test_select_readings_orders_by_sensor_key_and_time_and_counts_flags_by_line_and_day(tmp_path):
    sink = ParquetSink(tmp_path / "readings", tmp_path / "ingest")
    for line in ("l1", "l2"):
        sink.add(sink.dedupe(_batch(list(range(20)), line)))
    sink.flush()
    t = select_readings(tmp_path / "readings", lot="L1", sensor="*/l2/*")
    keys = list(zip(t.column("sensor_key").cast("string").to_pylist(), t.column("ts").cast("int64").to_pylist(),
                    strict=True))
    assert keys == sorted(keys) and len(keys) == 10 and {k for k, _ in keys} == {"s/l2/d/a", "s/l2/d/b"}
    assert set(t.column("lot").to_pylist()) == {"L1"}
    f = flagged_by_line_day(tmp_path / "readings")
    assert f.column("readings").to_pylist() == [20, 20]
    assert f.column("flagged").to_pylist() == [13, 13]  # q % 3 != 0 for 13 of 0..19


def test_a_dataset_without_a_commit_record_is_read_from_its_files(tmp_path):
    sink = ParquetSink(tmp_path / "w" / "readings", tmp_path / "w" / "ingest")
    sink.add(sink.dedupe(_batch(list(range(20)), "l1")))
    sink.flush()
    shutil.copytree(tmp_path / "w" / "readings", tmp_path / "other" / "readings")  # files only, no record
    assert len(snapshot_files(tmp_path / "other" / "readings")) == 1
    assert select_readings(tmp_path / "other" / "readings", lot="L0").num_rows == 10

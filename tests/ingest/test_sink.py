"""The Parquet sink writes each (source, seq) once, partitioned and sorted, and recovers from a crash."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pyarrow.parquet as pq
import pytest

from ingest.sink import ParquetSink, read_dataset
from qctrace.errors import SinkCommitError
from qctrace.schema import SCHEMA_VERSION, batch_from_columns, source_keys

DAY = 1_793_577_600 * 10**9  # 2026-11-02T00:00:00Z


def _batch(seqs, line="l1", ts0=DAY, sensor="w"):
    n = len(seqs)
    return batch_from_columns({
        "ts": [ts0 + 10**9 * (n - i) for i in range(n)],  # deliberately newest first
        "recv_ts": [ts0] * n, "site": ["s"] * n, "line": [line] * n, "device": ["plc"] * n,
        "sensor": [sensor] * n, "value": [float(q) for q in seqs], "quality": [0] * n, "seq": list(seqs),
        "lot": ["LOT-1"] * n,
    })


def _sink(tmp_path, **kw):
    return ParquetSink(tmp_path / "readings", tmp_path / "ingest", **kw)


def test_redelivered_rows_are_not_committed_twice(tmp_path):
    sink = _sink(tmp_path)
    sink.add(sink.dedupe(_batch(range(0, 10))))
    sink.add(sink.dedupe(_batch(range(5, 15))))  # 5..9 again
    sink.flush()
    sink.add(sink.dedupe(_batch(range(0, 15))))  # all again, after a commit
    sink.flush()
    table = read_dataset(tmp_path / "readings")
    assert sorted(table.column("seq").to_pylist()) == list(range(15))
    assert sink.duplicates_dropped == 5 + 15


def test_files_are_hive_partitioned_sorted_and_carry_the_schema_version(tmp_path):
    sink = _sink(tmp_path)
    sink.add(sink.dedupe(_batch(range(3), line="l1")))
    sink.add(sink.dedupe(_batch(range(2), line="l2", ts0=DAY + 86_400 * 10**9)))
    files = sink.flush()
    assert sorted(f.path.rsplit("/", 1)[0] for f in files) == ["site=s/line=l1/date=2026-11-02",
                                                               "site=s/line=l2/date=2026-11-03"]
    f = next(p for p in (tmp_path / "readings").rglob("*.parquet") if "line=l1" in str(p))
    t = pq.read_table(f)
    assert t.column("ts").to_pylist() == sorted(t.column("ts").to_pylist())
    assert pq.read_metadata(f).metadata[b"qctrace.schema_version"] == str(SCHEMA_VERSION).encode()
    assert "site" not in t.column_names  # the path holds it


def test_each_file_is_one_partition_sorted_by_sensor_then_time_across_midnight(tmp_path):
    sink = _sink(tmp_path)
    late = DAY - 3 * 10**9  # three seconds before midnight: these rows belong to the day before
    sink.add(sink.dedupe(_batch(range(0, 6), sensor="zeta", ts0=late)))
    sink.add(sink.dedupe(batch_from_columns({
        "ts": [late + 4 * 10**9, late + 2 * 10**9, late + 5 * 10**9], "recv_ts": [DAY] * 3, "site": ["s"] * 3,
        "line": ["l1"] * 3, "device": ["plc2"] * 3, "sensor": ["alpha"] * 3, "value": [1.0, 2.0, 3.0],
        "quality": [0] * 3, "seq": [0, 1, 2], "lot": ["LOT-1"] * 3})))
    files = sink.flush()
    dates = sorted(f.path.split("/")[2] for f in files)
    assert dates == ["date=2026-11-01", "date=2026-11-02"]
    total = 0
    for f in files:
        t = pq.read_table(tmp_path / "readings" / f.path)
        keys = list(zip(t.column("sensor").cast("string").to_pylist(), t.column("ts").cast("int64").to_pylist(),
                        strict=True))
        assert keys == sorted(keys)
        day = f.path.split("/")[2].removeprefix("date=")
        assert all(datetime.fromtimestamp(ts // 10**9, UTC).strftime("%Y-%m-%d") == day for _, ts in keys)
        total += t.num_rows
    assert total == 9


def test_a_crash_between_rename_and_commit_record_leaves_no_trace_after_restart(tmp_path):
    sink = _sink(tmp_path)
    sink.add(sink.dedupe(_batch(range(10))))
    sink.flush()
    committed = json.loads((tmp_path / "ingest" / "commit.json").read_text())
    # Simulate the crash: a second flush renamed its file but died before the commit record.
    sink.add(sink.dedupe(_batch(range(10, 20))))
    sink.flush()
    (tmp_path / "ingest" / "commit.json").write_text(json.dumps(committed))
    (tmp_path / "readings" / "site=s" / ".part-x.parquet.tmp").write_bytes(b"half a file")
    restarted = _sink(tmp_path)
    assert restarted.committed_hwm == {"s/l1/plc": 9}
    assert sorted(read_dataset(tmp_path / "readings").column("seq").to_pylist()) == list(range(10))
    assert not list((tmp_path / "readings").rglob("*.tmp"))
    # Upstream still holds 10..19 (never acknowledged) and delivers them again: they are accepted.
    restarted.add(restarted.dedupe(_batch(range(10, 20))))
    restarted.flush()
    t = read_dataset(tmp_path / "readings")
    assert sorted(t.column("seq").to_pylist()) == list(range(20))
    assert set(source_keys(t).to_pylist()) == {"s/l1/plc"}


def test_a_write_failure_is_a_commit_error_and_keeps_the_rows_buffered(tmp_path):
    sink = _sink(tmp_path)
    sink.add(sink.dedupe(_batch(range(5))))
    blocker = tmp_path / "readings" / "site=s"
    blocker.write_text("a file where the partition directory must go")  # fails even for root
    with pytest.raises(SinkCommitError, match="Not a directory .*5 readings stay pending"):
        sink.flush()
    assert not (tmp_path / "ingest" / "commit.json").exists()
    blocker.unlink()
    assert sink.flush()  # nothing was lost: the rows commit once the cause is gone
    assert read_dataset(tmp_path / "readings").num_rows == 5

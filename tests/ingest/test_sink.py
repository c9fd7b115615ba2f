"""The Parquet sink writes each (source, seq) once, partitioned and sorted, and recovers from a crash."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from datetime import UTC, datetime

import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


def test_each_file_is_one_partition_sorted_by_lot_sensor_then_time_across_midnight(tmp_path):
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
        keys = list(zip(*(t.column(c).cast("string").to_pylist() for c in ("lot", "device", "sensor")),
                        t.column("ts").cast("int64").to_pylist(), strict=True))
        assert keys == sorted(keys)
        day = f.path.split("/")[2].removeprefix("date=")
        assert all(datetime.fromtimestamp(k[-1] // 10**9, UTC).strftime("%Y-%m-%d") == day for k in keys)
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
    with pytest.raises(SinkCommitError, match=r"Not a directory .*5 readings stay pending"):
        sink.flush()
    assert json.loads((tmp_path / "ingest" / "commit.json").read_text())["files"] == []
    blocker.unlink()
    assert sink.flush()  # nothing was lost: the rows commit once the cause is gone
    assert read_dataset(tmp_path / "readings").num_rows == 5


# ---------------------------------------------------------------- exactly once in any order

def _rows(source_dev, seqs):
    """Readings of device ``source_dev`` whose source time jumps across days with ``seq``, so late
    and early readings of one batch belong to different partitions."""
    n = len(seqs)
    return batch_from_columns({
        "ts": [DAY + (q * 7919 % 4) * 86_400 * 10**9 + q * 10**9 for q in seqs], "recv_ts": [DAY] * n,
        "site": ["s"] * n, "line": ["l1"] * n, "device": [source_dev] * n, "sensor": [f"x{q % 3}" for q in seqs],
        "value": [float(q) for q in seqs], "quality": [0] * n, "seq": list(seqs), "lot": ["LOT-1"] * n,
    })


def _exactly_once(root):
    t = read_dataset(root)
    keys = list(zip(source_keys(t).to_pylist(), t.column("seq").to_pylist(), strict=True))
    assert len(keys) == len(set(keys)), "a reading is in the dataset twice"
    return t, set(keys)


@st.composite
def _deliveries(draw):
    """Batches of two sources cut at random, delivered in random order with random redeliveries,
    with flushes and restarts (the unflushed buffer lost) at random points."""
    plan = []
    for dev in ("plcA", "plcB"):
        n = draw(st.integers(1, 30))
        cuts = sorted(draw(st.sets(st.integers(1, max(n - 1, 1)), max_size=6)) - {n})
        edges = [0, *cuts, n]
        plan += [(dev, list(range(a, b))) for a, b in itertools.pairwise(edges) if b > a]
    order = draw(st.permutations(plan))
    extra = draw(st.lists(st.sampled_from(plan), max_size=6))
    items = list(order)
    for e in extra:
        items.insert(draw(st.integers(0, len(items))), e)
    actions = draw(st.lists(st.sampled_from(["none", "none", "flush", "restart"]), min_size=len(items),
                            max_size=len(items)))
    return plan, items, actions


@settings(max_examples=40, deadline=None)
@given(_deliveries())
def test_any_order_duplication_and_restart_commits_each_reading_exactly_once(tmp_path_factory, case):
    plan, items, actions = case
    tmp = tmp_path_factory.mktemp("eo")
    sink = _sink(tmp)
    for (dev, seqs), act in zip(items, actions, strict=True):
        sink.add(sink.dedupe(_rows(dev, seqs)))
        if act == "flush":
            sink.flush()
        elif act == "restart":
            sink = _sink(tmp)  # a crash: what was buffered is lost, upstream still holds it
    sink.flush()
    # Upstream redelivers every batch the sink does not cover (never acknowledged), in plan order.
    for dev, seqs in plan:
        if not sink.covers(f"s/l1/{dev}", seqs[0], seqs[-1]):
            sink.add(sink.dedupe(_rows(dev, seqs)))
    sink.flush()
    _t, keys = _exactly_once(tmp / "readings")
    want = {(f"s/l1/{dev}", q) for dev, seqs in plan for q in seqs}
    assert keys == want
    for dev in ("plcA", "plcB"):
        n = sum(len(s) for d, s in plan if d == dev)
        assert sink.committed_ranges(f"s/l1/{dev}") == [(0, n - 1)]
        assert sink.committed_hwm[f"s/l1/{dev}"] == n - 1
    for f in sink.files:  # late and early readings sit in the partition of their own source day
        day = f.path.split("/")[2].removeprefix("date=")
        ts = pq.read_table(tmp / "readings" / f.path).column("ts").cast("int64").to_pylist()
        assert {datetime.fromtimestamp(x // 10**9, UTC).strftime("%Y-%m-%d") for x in ts} == {day}


def test_a_batch_below_the_high_water_mark_is_still_new(tmp_path):
    sink = _sink(tmp_path)
    sink.add(sink.dedupe(_rows("plc", range(10, 20))))  # a later block arrives first
    sink.flush()
    assert sink.committed_hwm == {"s/l1/plc": 19} and not sink.covers("s/l1/plc", 0, 9)
    fresh = sink.dedupe(_rows("plc", range(0, 12)))  # the earlier block, overlapping by two
    assert fresh.column("seq").to_pylist() == list(range(10))
    sink.add(fresh)
    sink.flush()
    assert sink.committed_ranges("s/l1/plc") == [(0, 19)] and sink.covers("s/l1/plc", 0, 19)
    assert _sink(tmp_path).committed_ranges("s/l1/plc") == [(0, 19)]  # kept in the commit record


# ---------------------------------------------------------------- a crash at every step

class _Crash(BaseException):
    """kill -9 stand-in: not an OSError, so the sink's own cleanup does not run."""


def test_a_crash_at_any_step_of_a_commit_loses_and_doubles_nothing(tmp_path, monkeypatch):
    import os

    import ingest.sink as sink_mod
    from qctrace import durable

    batches = [_rows("plc", range(a, a + 7)) for a in range(0, 35, 7)]
    step = 0
    while True:
        step += 1
        root = tmp_path / f"run{step}"
        calls = {"n": 0}

        def boom(real, calls=calls, step=step):
            def inner(*a, **kw):
                calls["n"] += 1
                if calls["n"] == step:
                    raise _Crash()
                return real(*a, **kw)
            return inner

        sink = _sink(root)
        sink.add(sink.dedupe(batches[0]))
        sink.flush()
        for b in batches[1:3]:
            sink.add(sink.dedupe(b))
        # Every disk step the commit takes: temporary writes, fsyncs, renames, the record.
        with monkeypatch.context() as m:
            m.setattr(sink_mod, "write_parquet", boom(sink_mod.write_parquet))
            m.setattr(os, "replace", boom(os.replace))
            m.setattr(os, "fsync", boom(os.fsync))
            m.setattr(durable, "fsync_dir", boom(durable.fsync_dir))
            m.setattr(sink_mod, "fsync_dir", boom(sink_mod.fsync_dir))
            try:
                sink.flush()
                crashed = False
            except _Crash:
                crashed = True
        restarted = _sink(root)
        for b in batches:  # upstream redelivers everything it was not told is committed
            seqs = b.column("seq").to_pylist()
            if not restarted.covers("s/l1/plc", seqs[0], seqs[-1]):
                restarted.add(restarted.dedupe(b))
        restarted.flush()
        _t, keys = _exactly_once(root / "readings")
        assert keys == {("s/l1/plc", q) for q in range(35)}, f"crash at disk step {step}"
        on_disk = {p.relative_to(root / "readings").as_posix() for p in (root / "readings").rglob("*")
                   if p.is_file()}
        assert on_disk == {f.path for f in restarted.files}, f"stray files after a crash at step {step}"
        if not crashed:
            break
    assert step > 5  # the commit really went through several disk steps


def test_a_dataset_whose_commit_record_is_lost_is_refused_not_wiped(tmp_path):
    sink = _sink(tmp_path)
    sink.add(sink.dedupe(_batch(range(5))))
    sink.flush()
    (tmp_path / "ingest" / "commit.json").unlink()
    with pytest.raises(SinkCommitError, match=r"commit\.json: missing, but .* holds Parquet files"):
        _sink(tmp_path)
    assert len(list((tmp_path / "readings").rglob("part-*.parquet"))) == 1  # nothing deleted


async def test_a_file_committed_just_before_a_crash_still_reaches_the_ledger_after_restart(tmp_path):
    from ingest import Ingest
    from ingest.sink import CommittedFile
    from qctrace.config import load_config

    cfg = load_config(None).with_overrides(**{"sink.compact_every_s": 0})

    def dies_on_files(facts):
        if any(isinstance(f, CommittedFile) for f in facts):
            raise _Crash()

    first = Ingest(tmp_path, cfg.detect, cfg.sink, dies_on_files)
    first.process(_rows("plc", range(20)))
    with pytest.raises(_Crash):
        first.flush()  # committed, then the process died before the ledger heard of the file
    heard: list = []

    async def nothing():
        return
        yield

    second = Ingest(tmp_path, cfg.detect, cfg.sink, heard.extend)
    await second.run(nothing())
    files = [f for f in heard if isinstance(f, CommittedFile)]
    assert [f.path for f in files] == [f.path for f in second.sink.files] and sum(f.rows for f in files) == 20
    second.process(_rows("plc", range(20, 30)))
    second.finish()  # a clean stop writes what the ledger confirmed: a third start repeats nothing
    assert Ingest(tmp_path, cfg.detect, cfg.sink, heard.extend).sink.unreported() == []


def test_two_writers_on_one_dataset_merge_their_seqs_and_drop_what_the_other_committed_first(tmp_path):
    a, b = _sink(tmp_path, writer="a"), _sink(tmp_path, writer="b")
    a.add(a.dedupe(_batch(range(10))))
    a.flush()
    b.add(b.dedupe(_batch(range(5, 15))))  # b cannot know a committed 5..9 (a redelivery during a hand-over)
    b.flush()
    assert b.duplicates_dropped == 5 and b.pending_rows == 0 and b.covers("s/l1/plc", 0, 14)
    assert sorted(read_dataset(tmp_path / "readings").column("seq").to_pylist()) == list(range(15))
    assert not list((tmp_path / "readings").rglob("*.tmp"))
    a.add(a.dedupe(_batch(range(10, 20))))  # a learns b's 10..14 at its next commit
    a.flush()
    assert sorted(read_dataset(tmp_path / "readings").column("seq").to_pylist()) == list(range(20))
    assert _sink(tmp_path, writer="c").committed_ranges("s/l1/plc") == [(0, 19)]


def test_a_sink_of_a_writer_name_another_process_holds_is_refused(tmp_path):
    a = _sink(tmp_path, writer="w1")
    code = ("import sys; from pathlib import Path; from ingest.sink import ParquetSink; from qctrace.errors import"
            " SinkCommitError\ntry:\n    ParquetSink(Path(sys.argv[1]) / 'readings', Path(sys.argv[1]) / 'ingest',"
            " writer='w1')\nexcept SinkCommitError as e:\n    print(e)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True)
    assert "an ingest worker named 'w1' is already writing" in out.stdout
    a.close()
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True)
    assert out.stdout == ""  # released with the first


def test_a_live_writers_temporary_file_survives_another_writers_start_but_a_dead_ones_is_removed(tmp_path):
    a = _sink(tmp_path, writer="a")
    part = tmp_path / "readings" / "site=s" / "line=l1" / "date=1970-01-01"
    part.mkdir(parents=True)
    live = part / ".part-1-abcd1234-a.parquet.tmp"
    dead = part / ".part-1-abcd1234-gone.parquet.tmp"
    live.write_bytes(b"in progress")
    dead.write_bytes(b"left by a crash")
    _sink(tmp_path, writer="b")
    assert live.exists() and not dead.exists()
    a.close()
    _sink(tmp_path, writer="c")
    assert not live.exists()

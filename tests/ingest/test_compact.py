"""Compaction merges small files without a reader ever seeing a row missing or twice, and tells the ledger."""

from __future__ import annotations

import threading
import time

import pyarrow.parquet as pq
import pytest

from ingest.commit_record import read_snapshot
from ingest.compact import compact, purge_retired
from ingest.query import query, select_readings, snapshot_files
from ingest.sink import ParquetSink, read_dataset
from ledger import Ledger
from ledger.audit import verify_ledger
from ledger.events import data_committed
from qctrace.errors import DataFileChanged, SnapshotGone
from qctrace.schema import batch_from_columns, source_keys

DAY = 1_793_577_600 * 10**9  # 2026-11-02T00:00:00Z


def _batch(dev, seqs, line="l1"):
    n = len(seqs)
    return batch_from_columns({
        "ts": [DAY + q * 10**9 for q in seqs], "recv_ts": [DAY] * n, "site": ["s"] * n, "line": [line] * n,
        "device": [dev] * n, "sensor": [f"x{q % 5}" for q in seqs], "value": [float(q) for q in seqs],
        "quality": [0] * n, "seq": list(seqs), "lot": [f"LOT-{q // 40}" for q in seqs],
    })


def _fill(tmp_path, flushes=12, per=20):
    sink = ParquetSink(tmp_path / "readings", tmp_path / "ingest")
    for k in range(flushes):
        for line in ("l1", "l2"):
            sink.add(sink.dedupe(_batch(f"plc-{line}", range(k * per, (k + 1) * per), line)))
        sink.flush()
    return sink


def _keys(table):
    return sorted(zip(source_keys(table).to_pylist(), table.column("seq").to_pylist(), strict=True))


def test_small_files_become_one_sorted_file_per_partition_with_the_same_rows(tmp_path):
    sink = _fill(tmp_path)
    before = _keys(read_dataset(tmp_path / "readings"))
    res = compact(tmp_path / "readings", tmp_path / "ingest", min_files=3, target_rows=10_000, grace_s=60)
    assert res.files_in == 24 and len(res.merged) == 2 and res.rows == 480
    snap = read_snapshot(tmp_path / "ingest")
    assert sorted(f.path for f in snap.files) == sorted(m.path for m in res.merged)
    assert _keys(read_dataset(tmp_path / "readings")) == before
    for m in res.merged:
        assert len(m.replaces) == 12 and all(r.rsplit("/", 1)[0] == m.path.rsplit("/", 1)[0] for r in m.replaces)
        t = pq.read_table(tmp_path / "readings" / m.path)
        keys = list(zip(*(t.column(c).cast("string").to_pylist() for c in ("lot", "device", "sensor")),
                        t.column("ts").cast("int64").to_pylist(), strict=True))
        assert keys == sorted(keys)  # each lot's rows together, in sensor and time order
        assert m.lots == tuple(f"LOT-{i}" for i in range(6))
    # The replaced files wait out their grace period (a reader may hold an old snapshot), then go.
    assert all((tmp_path / "readings" / r.path).is_file() for r in snap.retired) and len(snap.retired) == 24
    assert purge_retired(tmp_path / "readings", tmp_path / "ingest", grace_s=60) == 0
    assert purge_retired(tmp_path / "readings", tmp_path / "ingest", grace_s=60, now=time.time() + 61) == 24
    assert not any((tmp_path / "readings" / r.path).exists() for r in snap.retired)
    # The sink carries on after compaction changed the record under it; nothing is lost.
    sink.add(sink.dedupe(_batch("plc-l1", range(240, 250))))
    sink.flush()
    assert len(_keys(read_dataset(tmp_path / "readings"))) == 490
    reopened = ParquetSink(tmp_path / "readings", tmp_path / "ingest")
    assert reopened.committed_ranges("s/l1/plc-l1") == [(0, 249)]
    assert len(_keys(read_dataset(tmp_path / "readings"))) == 490


def test_lot_queries_read_only_the_files_that_hold_the_lot(tmp_path):
    _fill(tmp_path)
    every = snapshot_files(tmp_path / "readings")
    some = snapshot_files(tmp_path / "readings", lot="LOT-2")
    assert len(every) == 24 and len(some) == 4  # LOT-2 is seqs 80..119: two flushes, two lines
    t = query(tmp_path / "readings", "SELECT seq FROM {SOURCE} WHERE lot = $lot", {"lot": "LOT-2"}, lot="LOT-2")
    assert sorted(t.column("seq").to_pylist()) == sorted(list(range(80, 120)) * 2)


def test_compaction_beside_ingest_and_queries_never_shows_a_row_missing_or_twice(tmp_path):
    sink = _fill(tmp_path, flushes=4)
    root, state = tmp_path / "readings", tmp_path / "ingest"
    stop = threading.Event()
    errors: list[BaseException] = []
    passes = {"compact": 0, "ingest": 0}

    def ingest():
        k = 4
        try:
            while not stop.is_set() and k < 60:
                for line in ("l1", "l2"):
                    sink.add(sink.dedupe(_batch(f"plc-{line}", range(k * 20, (k + 1) * 20), line)))
                sink.flush()
                passes["ingest"] += 1
                k += 1
        except BaseException as exc:
            errors.append(exc)

    def compactor():
        try:
            while not stop.is_set():
                # Retired files outlive a query (here at most a second or so, on a loaded machine):
                # a grace shorter than that makes every retry find its snapshot gone.
                compact(root, state, min_files=2, target_rows=200, grace_s=1.0)
                passes["compact"] += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=ingest), threading.Thread(target=compactor)]
    for t in threads:
        t.start()
    queries = 0
    deadline = time.monotonic() + 6
    try:
        while time.monotonic() < deadline and (threads[0].is_alive() or queries < 20):
            t = query(root, "SELECT site || '/' || line || '/' || device AS src, seq FROM {SOURCE}")
            rows = list(zip(t.column("src").to_pylist(), t.column("seq").to_pylist(), strict=True))
            assert len(rows) == len(set(rows)), "a query saw a row twice"
            for src in ("s/l1/plc-l1", "s/l2/plc-l2"):
                seqs = sorted(q for s, q in rows if s == src)
                # Ingest commits in seq order, so any snapshot holds exactly 0..k of each source.
                assert seqs == list(range(len(seqs))), f"a query missed rows of {src}"
            queries += 1
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors
    assert queries >= 20 and passes["compact"] >= 3 and passes["ingest"] >= 3
    final = _keys(read_dataset(root))
    assert len(final) == len(set(final)) == 2 * 20 * (4 + passes["ingest"])


def test_a_query_whose_snapshots_keep_losing_files_says_so_instead_of_answering_no_data(tmp_path):
    """Retries take a fresh snapshot when a retired file was deleted under a query. Once they ran
    out, the query answered an empty table: "no readings", which a compliance query must never
    say of readings that are there. Now the last retry raises, naming the file and the setting."""
    _fill(tmp_path, flushes=2)
    root = tmp_path / "readings"
    gone = sorted(root.rglob("*.parquet"))[0]
    gone.unlink()  # what every snapshot lists and no read finds
    for run in (lambda: query(root, "SELECT count(*) AS n FROM {SOURCE}"), lambda: select_readings(root)):
        with pytest.raises(SnapshotGone, match="retired_grace_s") as err:
            run()
        assert gone.name in str(err.value) and "3 fresh snapshots" in str(err.value)


def test_compacted_files_go_to_the_ledger_and_verify_passes_once_the_old_files_are_gone(tmp_path):
    sink = _fill(tmp_path, flushes=4)
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.append_many([data_committed(f.path, f.sha256, f.rows, DAY) for f in sink.files])
    res = compact(tmp_path / "readings", tmp_path / "ingest", min_files=2, grace_s=0,
                  on_files=lambda files: ledger.append_many(
                      [data_committed(f.path, f.sha256, f.rows, DAY, replaces=f.replaces) for f in files]))
    purge_retired(tmp_path / "readings", tmp_path / "ingest", grace_s=0)
    bodies = [e.as_dict()["qctrace:data"] for e in ledger.events(kind="data_committed")]
    assert [len(b.get("replaces", ())) for b in bodies[-2:]] == [4, 4]
    assert verify_ledger(ledger, [], data_root=tmp_path / "readings").data_files == 8 + len(res.merged)
    # A file nobody replaced that goes missing is still a finding.
    (tmp_path / "readings" / res.merged[0].path).unlink()
    with pytest.raises(DataFileChanged, match="is missing"):
        verify_ledger(ledger, [], data_root=tmp_path / "readings")
    ledger.close()


async def test_ingest_compacts_in_the_background_and_reports_the_new_files_as_facts(tmp_path):
    import asyncio

    from ingest import Ingest
    from ingest.commit_record import CommittedFile
    from qctrace.config import load_config

    cfg = load_config(None).with_overrides(**{"sink.flush_rows": 20, "sink.compact_every_s": 0.05,
                                              "sink.compact_min_files": 2, "sink.retired_grace_s": 0.0})
    facts = []
    ingest = Ingest(tmp_path, cfg.detect, cfg.sink, facts.extend)

    async def batches():
        for k in range(30):
            yield _batch("plc-l1", range(k * 20, (k + 1) * 20))
            await asyncio.sleep(0.02)

    await ingest.run(batches(), flush_check_s=0.01)
    files = [f for f in facts if isinstance(f, CommittedFile)]
    merged = [f for f in files if f.replaces]
    assert merged and ingest.compactor.passes >= 3 and ingest.compactor.error is None
    assert sum(f.rows for f in files if not f.replaces) == 600  # every sink commit, then the merges
    assert _keys(read_dataset(tmp_path / "readings")) == [("s/l1/plc-l1", q) for q in range(600)]
    assert len(read_snapshot(tmp_path / "ingest").files) < 30


def test_the_dashboard_catalog_does_not_count_files_waiting_out_their_grace_period(tmp_path):
    from dashboard import catalog

    _fill(tmp_path)
    compact(tmp_path / "readings", tmp_path / "ingest", min_files=3, grace_s=600)
    assert len(list((tmp_path / "readings").rglob("part-*.parquet"))) == 26  # 24 replaced files still there
    listed = catalog.files(tmp_path / "readings")
    assert len(listed) == 2 and sum(f.rows for f in listed) == 480


class _Crash(BaseException):
    """kill -9 stand-in between a merge's commit and its ledger event."""


def test_a_merge_whose_ledger_event_was_lost_in_a_crash_is_reported_again(tmp_path):
    from ingest.compact import BackgroundCompactor, unreported_files

    _fill(tmp_path, flushes=4)
    root, state = tmp_path / "readings", tmp_path / "ingest"

    def crash(files):
        raise _Crash()

    with pytest.raises(_Crash):
        compact(root, state, min_files=2, on_files=crash)
    lost = unreported_files(state)
    assert len(lost) == 1 and lost[0].replaces  # committed, but the ledger never heard of it
    # A restarted ingest's background compactor hands it on first; confirming stops the repeats.
    bg = BackgroundCompactor(root, state, every_s=3600, min_files=2)
    bg.start()
    bg.stop()
    again = bg.drain()
    assert [f.path for f in again] == [lost[0].path]
    bg.confirm(again)
    assert unreported_files(state) == []
    # The CLI's compaction does the same before merging anything new.
    with pytest.raises(_Crash):
        compact(root, state, min_files=2, on_files=crash)  # the other line's files this time
    lost = unreported_files(state)
    assert len(lost) == 1
    heard = []
    compact(root, state, min_files=2, on_files=heard.extend)
    assert heard == lost and unreported_files(state) == []


def test_a_compactor_takes_a_freed_role_within_its_lease_poll_and_compacts_at_once(tmp_path):
    """A worker that is not the compactor looks at the role every lease_poll_s, not every every_s,
    and the one that takes it merges at once: a holder killed every minute or two no longer
    leaves the dataset uncompacted for whole compaction intervals."""
    from ingest.compact import BackgroundCompactor

    _fill(tmp_path, flushes=4)
    root, state = tmp_path / "readings", tmp_path / "ingest"
    first = BackgroundCompactor(root, state, every_s=3600, min_files=2, lease_poll_s=3600)
    first.start()
    second = BackgroundCompactor(root, state, every_s=3600, min_files=2, lease_poll_s=0.1)
    second.start()
    try:
        assert first.holds_lease and not second.holds_lease
        time.sleep(0.5)
        assert len(read_snapshot(state).files) == 8 and second.passes_idle >= 2  # looking, not compacting
        first.stop()  # the holder goes: its lease is free
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and len(read_snapshot(state).files) != 2:
            time.sleep(0.05)
        assert second.holds_lease and len(read_snapshot(state).files) == 2  # each line merged into one
    finally:
        second.stop()
        first.stop()


def test_compaction_moves_to_a_live_worker_when_the_compacting_one_is_killed(tmp_path):
    """Every worker runs a background compactor; one at a time holds the role lease. kill -9 of the
    holder frees it: the next worker compacts and reports, once, a merge the dead one never reported."""
    import os
    import signal
    import subprocess
    import sys
    import textwrap

    from ingest.compact import BackgroundCompactor, unreported_files

    _fill(tmp_path, flushes=4)
    root, state = tmp_path / "readings", tmp_path / "ingest"

    def crash(files):
        raise _Crash()

    with pytest.raises(_Crash):
        compact(root, state, min_files=2, on_files=crash)  # one line merged, its event never recorded
    lost = unreported_files(state)
    assert len(lost) == 1
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from pathlib import Path
        from ingest.compact import BackgroundCompactor
        bg = BackgroundCompactor(Path({str(root)!r}), Path({str(state)!r}), every_s=3600, min_files=2,
                                 lease_poll_s=3600)
        bg.start()
        print(bg.holds_lease, len(bg.drain()), flush=True)
        time.sleep(600)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().split() == ["True", "1"]  # it took the lease and the late merge
        other = BackgroundCompactor(root, state, every_s=3600, min_files=2)
        other.run_once()
        assert not other.holds_lease and other.passes_idle == 1 and other.drain() == []
        assert len(read_snapshot(state).files) == 5  # the other line's 4 files are still unmerged
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(10)
        other.run_once()
        assert other.holds_lease and other.passes_idle == 1 and other.error is None
        got = other.drain()
        assert got[0].path == lost[0].path and len(got) == 2  # the dead holder's merge, then its own
        assert len(read_snapshot(state).files) == 2
        other.confirm(got)
        assert unreported_files(state) == []
        other.stop()
        again = BackgroundCompactor(root, state, every_s=3600, min_files=2)
        again.run_once()
        assert again.holds_lease and again.drain() == []  # reported once, not by every later holder
        again.stop()
    finally:
        holder.kill()
        holder.wait()

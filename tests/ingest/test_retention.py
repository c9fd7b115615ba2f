"""Retention drops old partitions but never those of held or recalled lots, and the ledger knows why files are gone."""

from __future__ import annotations

import time

from click.testing import CliRunner

from ingest.commit_record import read_snapshot
from ingest.retention import apply_retention
from ingest.sink import ParquetSink, read_dataset
from ledger import Ledger
from ledger import events as ev
from ledger.audit import verify_ledger
from qctrace.cli import cli
from qctrace.schema import batch_from_columns

GTIN = "0614141.107346"
DAY_NS = 86_400 * 10**9
TODAY = (time.time_ns() // DAY_NS) * DAY_NS


def _batch(seqs, days_ago, lot):
    n = len(seqs)
    t0 = TODAY - days_ago * DAY_NS + 3600 * 10**9
    return batch_from_columns({
        "ts": [t0 + q * 10**9 for q in range(n)], "recv_ts": [t0] * n, "site": ["s"] * n, "line": ["l1"] * n,
        "device": ["plc"] * n, "sensor": ["w"] * n, "value": [1.0] * n, "quality": [0] * n, "seq": list(seqs),
        "lot": [lot] * n,
    })


def _dataset(tmp_path):
    sink = ParquetSink(tmp_path / "readings", tmp_path / "ingest")
    for seqs, days, lot in ((range(0, 10), 60, "L-OLD"), (range(10, 20), 50, "L-HELD"), (range(20, 30), 40, "L-RCL"),
                            (range(30, 40), 2, "L-NEW")):
        sink.add(sink.dedupe(_batch(seqs, days, lot)))
    files = sink.flush()
    with Ledger(tmp_path / "ledger.sqlite") as led:
        led.append_many([ev.data_committed(f.path, f.sha256, f.rows, TODAY) for f in files])
        led.append(ev.lot_held([ev.lot_class("L-HELD", GTIN)], "qa", "investigation", TODAY))
        led.append(ev.lot_held([ev.lot_class("L-RCL", GTIN)], "qa", "suspect", TODAY))
        led.append(ev.lot_recalled([ev.lot_class("L-RCL", GTIN)], "qa", "contaminated", TODAY, {}))
    return sink


def _lots(tmp_path):
    return set(read_dataset(tmp_path / "readings").column("lot").to_pylist())


def test_dry_run_lists_and_run_drops_old_partitions_but_keeps_held_and_recalled_lots(tmp_path):
    _dataset(tmp_path)
    args = ["retention", "--days", "30", "--data-dir", str(tmp_path)]
    res = CliRunner().invoke(cli, [*args, "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "would drop 1 partitions" in res.output and "L-HELD" in res.output and "L-RCL" in res.output
    assert _lots(tmp_path) == {"L-OLD", "L-HELD", "L-RCL", "L-NEW"}  # a dry run changes nothing
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert "dropped 1 partitions" in res.output and "10 readings" in res.output
    assert _lots(tmp_path) == {"L-HELD", "L-RCL", "L-NEW"}
    snap = read_snapshot(tmp_path / "ingest")
    assert [r.reason for r in snap.retired] == ["retention"]  # still on disk for readers of older snapshots
    assert (tmp_path / "readings" / snap.retired[0].path).is_file()
    # A release lifts the hold; a recall with no release keeps protecting its lot.
    with Ledger(tmp_path / "ledger.sqlite") as led:
        led.append(ev.lot_released([ev.lot_class("L-HELD", GTIN)], "qa", "cleared", TODAY))
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert _lots(tmp_path) == {"L-RCL", "L-NEW"}


def test_files_dropped_by_retention_are_explained_in_the_ledger_after_deletion(tmp_path):
    _dataset(tmp_path)
    with Ledger(tmp_path / "ledger.sqlite") as led:
        from qctrace.sink_ops import protected_lots

        held = protected_lots(led)
        assert held == {"L-HELD", "L-RCL"}
        res = apply_retention(tmp_path / "readings", tmp_path / "ingest", 30, held, grace_s=0,
                              on_manifest=lambda m: led.append(
                                  ev.data_committed(m.path, m.sha256, m.rows, TODAY, replaces=m.replaces)))
        assert res.purged == 1 and not list((tmp_path / "readings" / res.dropped[0]).glob("*.parquet"))
        report = verify_ledger(led, [], data_root=tmp_path / "readings")
        assert report.data_files == 5  # four data files (one gone, explained) and the manifest


def test_retention_without_a_configured_age_says_how_to_set_one(tmp_path):
    _dataset(tmp_path)
    res = CliRunner().invoke(cli, ["retention", "--data-dir", str(tmp_path)])
    assert res.exit_code == 2
    assert "set [sink] retention_days" in res.output
    assert _lots(tmp_path) == {"L-OLD", "L-HELD", "L-RCL", "L-NEW"}

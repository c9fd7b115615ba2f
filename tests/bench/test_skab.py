"""SKAB's metrics as its README defines them, and the protocol's train/test split, on made-up files
(the real data is GPL-3.0 and stays outside the repository)."""

from __future__ import annotations

import numpy as np
import pytest

from bench.skab import Confusion, confusion, fault_files, load_file, metrics, row_flags, train_rules
from ingest.detect import Detector


def test_metrics_follow_the_readme_formulas():
    c = Confusion(tp=30, fp=10, fn=20, tn=40)
    m = metrics(c)
    assert m["f1"] == pytest.approx(30 / (30 + (10 + 20) / 2))  # 0.6667
    assert m["far_pct"] == pytest.approx(100 * 10 / 50)  # 20 %
    assert m["mar_pct"] == pytest.approx(100 * 20 / 50)  # 40 %


def test_flagging_every_row_gives_far_100_and_mar_0():
    truth = np.array([1, 1, 0, 1, 0, 0, 1, 1, 1, 0], bool)
    c = confusion(np.ones(10, bool), truth)
    assert c == Confusion(6, 4, 0, 0)
    assert metrics(c) == {"f1": pytest.approx(6 / 8), "far_pct": 100.0, "mar_pct": 0.0}


def test_confusion_counts_and_pools():
    pred = np.array([1, 0, 1, 0], bool)
    truth = np.array([1, 1, 0, 0], bool)
    assert confusion(pred, truth) == Confusion(1, 1, 1, 1)
    assert confusion(pred, truth) + Confusion(2, 0, 0, 3) == Confusion(3, 1, 1, 4)
    assert metrics(Confusion(0, 0, 0, 0)) == {"f1": None, "far_pct": None, "mar_pct": None}


def _write(path, n, anomaly_from, jump=0.0):
    rng = np.random.default_rng(1)
    lines = ["datetime;Pressure;Volume Flow RateRMS;anomaly;changepoint"]
    for i in range(n):
        bad = i >= anomaly_from
        p = 1.0 + 0.01 * rng.standard_normal() + (jump if bad else 0.0)
        lines.append(f"2020-03-09 10:{i // 60:02d}:{i % 60:02d};{p:.5f};32.0;{float(bad)};0.0")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def test_files_limits_from_the_training_part_only_and_rows_flagged(tmp_path):
    for g, names in (("valve1", ("10", "2")), ("valve2", ("0",)), ("other", ("1",)), ("anomaly-free", ("x",))):
        for nm in names:
            _write(tmp_path / g / f"{nm}.csv", 500, 450, jump=5.0)
    assert [f"{p.parent.name}/{p.stem}" for p in fault_files(tmp_path)] == \
        ["valve1/2", "valve1/10", "valve2/0", "other/1"]
    f = load_file(tmp_path / "valve1" / "2.csv")
    assert f.sensors == ("Pressure", "Volume_Flow_RateRMS") and f.values.shape == (500, 2)
    assert f.anomaly[:450].sum() == 0 and f.anomaly[450:].all()
    assert f.ts_ns[1] - f.ts_ns[0] == 1_000_000_000
    rules = {r.match: r for r in train_rules(f, 3.0, "skab/l/testbed")}
    p = rules["skab/l/testbed/Pressure"]
    assert p.lsl == pytest.approx(1.0, abs=0.05) and p.usl < 1.1  # the 5.0 jump after row 450 is not seen
    flags = row_flags(f, lambda c: Detector(c, families=()), 3.0)  # spec limits + EWMA: whatever else lands
    assert flags.shape == (100,)  # test part: rows 400..499
    assert (flags[50:] != 0).all()  # every jumped row is flagged (above the spec limit at least)

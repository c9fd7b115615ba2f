"""bench/alarms.py runs alone and ends with one JSON object of unit-bearing figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_alarms_bench_quick_mode_prints_rates_and_reduction():
    res = subprocess.run([sys.executable, "bench/alarms.py", "--quick"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    doc = json.loads(res.stdout.strip().splitlines()[-1])
    assert doc["quick"] is True and doc["labelled_faults"] == 3
    assert 0 < doc["alarms"] <= doc["episodes"]
    assert doc["worst_line_peak_alarms_per_10min"] <= doc["worst_line_peak_episodes_per_10min"]
    assert doc["worst_line_peak_flagged_readings_per_10min"] >= doc["worst_line_peak_episodes_per_10min"]
    assert {"eemua_avg_met", "eemua_peak_met", "flood_reduction_ratio_vs_episodes"} <= set(doc)


def test_alarms_bench_help_explains_it():
    res = subprocess.run([sys.executable, "bench/alarms.py", "--help"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, check=False)
    assert res.returncode == 0 and "EEMUA 191" in res.stdout and "--quick" in res.stdout

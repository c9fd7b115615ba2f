"""bench/results.py runs benchmarks and writes the results table with goals, baselines and ratios."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_results_table_has_a_row_per_goal_of_the_benchmarks_run(tmp_path):
    out = tmp_path / "RESULTS.md"
    r = subprocess.run([sys.executable, "bench/results.py", "--only", "alarms,sink", "--quick", "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["benchmarks"] == 2 and summary["benchmarks_failed"] == 0
    assert summary["goals_met"] + summary["goals_missed"] == 5  # 3 sink goals, 2 EEMUA goals
    text = out.read_text()
    assert "| sink | sink_readings_per_s | >= 2,000,000 readings/s |" in text
    assert "write_table_readings_per_s" in text and "| alarms | worst_line_peak_alarms_per_10min |" in text
    assert "cores, Python" in text

"""bench/dashboard.py runs alone in its short mode and ends with one JSON object of its figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "dashboard.py"


def test_dashboard_bench_quick_prints_its_figures_as_json():
    res = subprocess.run([sys.executable, str(BENCH), "--quick"], capture_output=True, text=True, timeout=120,
                         check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    figures = json.loads(res.stdout.strip().splitlines()[-1])
    assert figures["readings"] >= 100_000 and figures["files"] == 11 and figures["ledger_events"] > 0
    assert figures["chart_query_p95_ms"] > 0 and figures["status_query_p95_ms"] > 0
    assert figures["baseline_full_scan_status_ms"] > 0  # the same status answer by scanning every file


def test_dashboard_bench_help_explains_the_options():
    res = subprocess.run([sys.executable, str(BENCH), "--help"], capture_output=True, text=True, timeout=60,
                         check=False)
    assert res.returncode == 0 and "--readings" in res.stdout and "--quick" in res.stdout

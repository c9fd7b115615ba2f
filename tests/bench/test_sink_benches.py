"""bench/sink.py and bench/query.py run in their short modes and end with one JSON object of figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _last_json(args):
    r = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_sink_bench_quick_reports_rates_ratio_and_size():
    out = _last_json(["bench/sink.py", "--quick"])
    assert out["readings"] == 200_000
    assert out["sink_readings_per_s"] > 0 and out["write_table_readings_per_s"] > 0
    assert 0 < out["ratio_vs_write_table"] and 0 < out["bytes_per_reading"] < 50


def test_query_bench_quick_reports_lot_and_flagged_times(tmp_path):
    out = _last_json(["bench/query.py", "--quick", "--cache", str(tmp_path / "ds")])
    assert out["readings"] == 500_000 and out["lot_rows"] > 0 and out["lot_files_read"] >= 1
    assert out["lot_query_ms"] > 0 and out["flagged_by_line_day_ms"] > 0 and out["flagged_baseline_ms"] > 0


def test_benches_explain_themselves():
    for name in ("sink", "query"):
        r = subprocess.run([sys.executable, f"bench/{name}.py", "--help"], cwd=ROOT, capture_output=True, text=True)
        assert r.returncode == 0 and "--quick" in r.stdout and "--readings" in r.stdout

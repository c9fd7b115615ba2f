"""bench/edge_opcua.py runs alone in its short mode and ends with one JSON object of its figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "edge_opcua.py"


def test_edge_opcua_bench_quick_reads_every_sample_over_an_encrypted_link():
    res = subprocess.run([sys.executable, str(BENCH), "--quick"], capture_output=True, text=True, timeout=180,
                         check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    f = json.loads(res.stdout.strip().splitlines()[-1])
    assert f["tags"] == 100 and f["servers"] == 2 and f["security"] == "Basic256Sha256/SignAndEncrypt"
    assert f["readings_missing"] == 0 and f["tags_read_to_the_last_tick"] == 100 and f["gaps"] == 0
    assert f["notifications_per_s"] > 50 and f["baseline_asyncua_notifications_per_s"] > 50
    assert 0 <= f["lag_start_p50_ms"] <= f["lag_start_p99_ms"] and 0 <= f["lag_end_p50_ms"] <= f["lag_end_p99_ms"]
    assert f["reader_cpu_pct"] >= 0 and f["cpu_ratio_vs_asyncua_handler"] > 0


def test_edge_opcua_bench_help_explains_the_options():
    res = subprocess.run([sys.executable, str(BENCH), "--help"], capture_output=True, text=True, timeout=60,
                         check=False)
    assert res.returncode == 0 and "--minutes" in res.stdout and "--quick" in res.stdout

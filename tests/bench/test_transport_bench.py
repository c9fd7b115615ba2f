"""bench/transport.py in its short mode: edge → Mosquitto → `qctrace ingest`, counted at the far end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_transport_bench_quick_delivers_everything_once():
    r = subprocess.run([sys.executable, "bench/transport.py", "--quick"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["readings"] == 200_000
    assert out["lost_readings"] == 0 and out["doubled_readings"] == 0
    assert out["readings_per_s"] > 0 and out["raw_paho_qos1_readings_per_s"] > 0 and out["ratio_vs_raw_paho"] > 0

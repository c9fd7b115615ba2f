"""bench/edge_serial.py runs in its short mode and ends with one JSON object of figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_edge_serial_bench_quick_reports_decoder_pty_and_modbus_figures():
    r = subprocess.run([sys.executable, "bench/edge_serial.py", "--quick"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["decoder_frames_recovered"] == out["frames_sent"] == 2000  # every frame out of the noise
    assert out["line_reader_frames_recovered"] < out["frames_sent"]  # what a readline() reader keeps
    assert out["decoder_mb_per_s"] > 0 and out["pty_reader_mb_per_s"] > 0 and out["pty_ratio_vs_raw_read"] > 0
    assert out["modbus_requests_per_s"] > 0 and out["modbus_ratio_vs_raw_client"] > 0

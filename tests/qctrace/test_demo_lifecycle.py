"""Ctrl-C stops the demo cleanly and leaves no process behind; a killed demo takes its children along."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = next((ln for ln in (d / "status").read_text().splitlines() if ln.startswith("State:")), "")
        except OSError:
            continue
        if text in cmd and "zombie" not in state:
            found.append(int(d.name))
    return found


def _start(tmp_path: Path, dashboard: bool) -> subprocess.Popen:
    cfg = tmp_path / "qctrace.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "data"}"\n[dashboard]\nport = {_free_port()}\n')
    args = [sys.executable, "-m", "qctrace", "demo", "--config", str(cfg)]
    if not dashboard:
        args.append("--no-dashboard")
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    assert proc.stderr is not None
    while time.monotonic() < deadline:  # wait until the pipeline says it is running
        line = proc.stderr.readline()
        if "running" in line:
            return proc
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"demo did not start: {proc.stderr.read()}")


def _wait_gone(marker: str, seconds: float = 15) -> list[int]:
    deadline = time.monotonic() + seconds
    while (left := _processes_mentioning(marker)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def test_ctrl_c_stops_everything_and_prints_the_summary(tmp_path):
    proc = _start(tmp_path, dashboard=True)
    time.sleep(3)
    marker = str(tmp_path / "data")
    assert _processes_mentioning(marker), "the simulator and dashboard should be running"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err[-2000:]
    assert "readings per source" in out and "ledger:" in out
    assert _wait_gone(marker) == []


def test_a_killed_demo_leaves_no_simulator_or_dashboard_behind(tmp_path):
    proc = _start(tmp_path, dashboard=True)
    time.sleep(2)
    marker = str(tmp_path / "data")
    proc.kill()  # kill -9: no cleanup code runs in the demo
    proc.wait(timeout=10)
    assert _wait_gone(marker) == []  # children get SIGTERM when their parent dies (PR_SET_PDEATHSIG)

"""Shared test setup: a deterministic hypothesis profile for CI, and data-dir helpers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("ci", derandomize=True, max_examples=60, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=100, deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture(autouse=True)
def _keep_main_module():
    """Streamlit's script runner (AppTest) puts the page script in ``sys.modules["__main__"]`` and
    leaves it there; a later test that spawns a process (multiprocessing re-runs ``__main__`` in the
    child) would then run a dashboard page instead of its own code. Put the real one back."""
    main = sys.modules.get("__main__")
    yield
    if main is not None:
        sys.modules["__main__"] = main


# One demo data directory per test session (dashboard and KPI report tests), made by the CLI
# exactly as a user makes it.
#
# ``qctrace demo --duration 15 --no-dashboard --speed 20`` runs the simulated plant for 300
# simulated seconds: both lines' lots, the cold-chain shipment, the injected faults (spike 45 s,
# shift 150 s, door 200 s), anomaly episodes, alarms, a signed and anchored checkpoint. Tests that
# write (hold, recall, acknowledge) work on a copy, so every test sees the same starting ledger.

DEMO_ENV = "QCTRACE_DASHBOARD_DEMO_DIR"
"""Reuse a data directory made earlier by the same command (speeds up local iterations)."""


@pytest.fixture(scope="session")
def demo_session(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess | None]:
    """The demo's data directory and what the command printed (None when reused through DEMO_ENV)."""
    if os.environ.get(DEMO_ENV):
        return Path(os.environ[DEMO_ENV]), None
    data = tmp_path_factory.mktemp("demo") / "data"
    res = subprocess.run([sys.executable, "-m", "qctrace", "demo", "--data-dir", str(data), "--duration", "15",
                          "--no-dashboard", "--speed", "20"], capture_output=True, text=True, timeout=180, check=False)
    return data, res


@pytest.fixture(scope="session")
def demo_dir(demo_session) -> Path:
    data, res = demo_session
    if res is not None:
        # Exit 1 with a printed summary means the demo ran but its ground-truth audit found readings
        # missing (tests/test_end_to_end.py owns that check); the data directory is still a real one.
        ran = res.returncode == 0 or (res.returncode == 1 and "ledger:" in res.stdout)
        assert ran and (data / "ledger.sqlite").is_file(), res.stderr[-3000:]
    return data


@pytest.fixture
def demo_copy(demo_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the demo data directory for a test that appends to the ledger."""
    dst = tmp_path / "data"
    shutil.copytree(demo_dir, dst, ignore=shutil.ignore_patterns("dev"), symlinks=True)
    return dst


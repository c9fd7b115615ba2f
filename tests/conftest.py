"""Shared test setup: a deterministic hypothesis profile for CI, and data-dir helpers."""

from __future__ import annotations

import os
import sys

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

"""Each package's __all__ names things that exist, and every public name it exports is listed."""

from __future__ import annotations

import importlib

import pytest

PACKAGES = ["edge", "ingest", "ingest.detect", "ledger", "firmware_sim"]


@pytest.mark.parametrize("name", PACKAGES)
def test_all_lists_real_public_names(name):
    mod = importlib.import_module(name)
    assert hasattr(mod, "__all__"), f"{name} has no __all__"
    for member in mod.__all__:
        assert hasattr(mod, member), f"{name}.__all__ names missing {member}"
    assert sorted(mod.__all__) == list(mod.__all__), f"keep {name}.__all__ sorted"

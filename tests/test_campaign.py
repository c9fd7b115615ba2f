"""The fault campaign's short version (`make soak` runs it for 30 minutes per seed on three seeds)."""

from __future__ import annotations

import pytest

from qctrace.campaign import FAULTS, run_campaign

pytestmark = pytest.mark.e2e


def test_random_kills_crashes_plc_restarts_and_unplugs_lose_nothing_without_a_gap_record(tmp_path):
    res = run_campaign(tmp_path / "seed-4", seed=4, duration_s=30, mean_interval_s=1.5)
    (tmp_path / "table.txt").write_text("\n".join(res.lines()))  # the table, kept beside the data
    assert sum(res.faults.values()) >= 10 and set(res.faults) == set(FAULTS), res.faults  # every kind happened
    assert res.unexplained == {}, f"readings missing with no gap record: {res.unexplained}"
    assert res.duplicated == 0
    assert res.ledger_verified, res.ledger_message
    total = sum(res.produced.values())
    assert sum(res.written.values()) + sum(res.in_gaps.values()) == total
    assert sum(res.written.values()) > total // 2
    # every edge kill is an outage of each of its two sources, and each outage has its gap record
    assert res.gap_records >= 2 * res.faults["kill_edge"]

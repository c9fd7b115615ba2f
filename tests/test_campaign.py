"""The fault campaign's short version (`make soak` runs it for 30 minutes per seed on three seeds)."""

from __future__ import annotations

import pytest

from qctrace.campaign import FAULTS, run_campaign

pytestmark = pytest.mark.e2e


def test_the_distributed_pipeline_under_every_fault_loses_nothing_without_a_gap_record(tmp_path):
    """Two edge nodes and two ingest workers sharing them, one dataset, one ledger; for 90 s, every
    fault kind: kill -9 of workers and edge nodes, broker crashes, PLC restarts, logger unplugs,
    edge1's spool disk filled (where the test may mount a tmpfs: root), device clocks a day off."""
    res = run_campaign(tmp_path / "seed-4", seed=4, duration_s=90, mean_interval_s=1.5, edges=2, workers=2,
                       faults=FAULTS)
    faults = set(FAULTS) - {s.split(":")[0] for s in res.skipped}
    (tmp_path / "table.txt").write_text("\n".join(res.lines()))  # the table, kept beside the data
    assert set(res.faults) == set(faults), res.faults  # every kind happened
    assert sum(res.faults.values()) >= 25
    assert res.unexplained == {}, f"readings missing with no gap record: {res.unexplained}"
    assert res.duplicated == 0 and res.samples_repeated == 0  # by seq, and no sample read twice
    assert res.ledger_verified, res.ledger_message
    total = sum(res.produced.values())
    assert sum(res.written.values()) + sum(res.in_gaps.values()) == total
    assert sum(res.written.values()) > total // 2
    # every edge kill is an outage of each source it reads, and each outage has its gap record
    assert res.gap_records >= res.faults["kill_edge"]
    assert res.resources and any(v.metric.startswith("ingest-w2.") for v in res.resources)  # sampled, both workers

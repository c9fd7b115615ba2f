"""The resource sampler against real processes, directories and a real commit record."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from ingest.sink import ParquetSink
from qctrace.errors import QctraceError
from qctrace.resources import ResourceSampler, Sample, bounded, process_tree, report_lines, rss_bytes, save_samples
from qctrace.schema import batch_from_columns

_LEAKS = """
import time
held = []
print("ready", flush=True)
while True:
    held.append(open("/dev/null"))   # never closed: a descriptor leak
    time.sleep(0.01)
"""
_STEADY = """
import time
print("ready", flush=True)
while True:
    with open("/dev/null"):
        time.sleep(0.01)
"""


def _child(code: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_a_descriptor_leak_is_growing_a_steady_process_is_bounded_and_a_restart_is_followed(tmp_path):
    leaky, steady = _child(_LEAKS), _child(_STEADY)
    current = {"leaky": leaky, "steady": steady}
    try:
        sampler = ResourceSampler(lambda: {role: p.pid for role, p in current.items()}, interval_s=0.05).start()
        while len(sampler.samples) < 20:
            time.sleep(0.05)
        steady.kill()  # the campaign kills a stage and starts it again: a new PID under the same role
        steady.wait()
        current["steady"] = _child(_STEADY)
        n = len(sampler.samples)
        while len(sampler.samples) < n + 20:
            time.sleep(0.05)
        samples = sampler.stop()
    finally:
        for p in (leaky, *current.values()):
            p.kill()
            p.wait()
    verdict = {v.metric: v for v in bounded(samples)}
    assert not verdict["leaky.fds"].bounded and verdict["leaky.fds"].last > verdict["leaky.fds"].first + 30
    assert verdict["steady.fds"].bounded
    assert verdict["steady.rss_bytes"].bounded and verdict["steady.rss_bytes"].first > 1 << 20
    assert {s.pids["steady"] for s in samples} == {(steady.pid,), (current["steady"].pid,)}
    lines = report_lines(list(verdict.values()))
    assert any(line.strip().startswith("leaky.fds") and "GROWING" in line for line in lines)
    assert lines[-1] == "  resources: GROWING: leaky.fds"
    assert report_lines(list(verdict.values()), unjudged=("leaky.",))[-1] == "  resources: bounded"
    save_samples(samples, tmp_path / "resources.jsonl")  # kept, to look into a verdict afterwards
    saved = [json.loads(line) for line in (tmp_path / "resources.jsonl").read_text().splitlines()]
    assert [s["values"] for s in saved] == [s.values for s in samples]
    assert {tuple(s["pids"]["steady"]) for s in saved} == {(steady.pid,), (current["steady"].pid,)}


def test_memory_is_sampled_only_once_a_restarted_process_is_past_its_warm_up():
    """A young process is still filling its allocator pools: a quarter of the run full of them is
    not evidence either way, so their memory is left out; descriptors are sampled throughout."""
    current = _child(_STEADY)
    try:
        sampler = ResourceSampler(lambda: {"steady": current.pid}, interval_s=0.05, warm_s=0.6).start()
        time.sleep(1.0)
        current.kill()
        current.wait()
        current = _child(_STEADY)
        time.sleep(1.0)
        samples = sampler.stop()
    finally:
        current.kill()
        current.wait()
    ages = [s.ages["steady"] for s in samples if "steady" in s.ages]
    assert min(ages) < 0.6 < max(ages) < 10  # the restarted child's age starts again from zero
    for s in samples:
        if "steady" in s.ages:
            assert ("steady.rss_bytes" in s.values) == (s.ages["steady"] >= 0.6), s
            assert "steady.fds" in s.values
    assert sum("steady.rss_bytes" in s.values for s in samples) >= 5


def test_replicas_memory_is_the_mean_of_the_warm_ones_so_a_tier_killed_often_is_still_measured():
    """A 15-minute soak killed an ingest worker every 43 s: the two were never both past warm-up in
    its last quarter, and the tier's memory was "not measured". A replicated role is sampled
    whenever one replica is warm, as the mean over the warm ones; a plain role waits for all."""
    old, young = _child(_STEADY), None
    try:
        time.sleep(0.7)
        young = _child(_STEADY)  # the other replica was just restarted
        group = {"tier": [old.pid, young.pid], "whole": [old.pid, young.pid]}
        sampler = ResourceSampler(lambda: group, interval_s=0.05, warm_s=0.6, replicas=("tier",))
        s = sampler.sample_once()
        assert s.values["tier.replica_rss_bytes"] == pytest.approx(
            rss_bytes(old.pid), rel=0.05)  # the young replica left out, the old one alone
        assert "whole.rss_bytes" not in s.values and "tier.rss_bytes" not in s.values
        assert s.ages["tier"] < 0.6 and "tier.fds" in s.values
        time.sleep(0.7)
        s = sampler.sample_once()
        both = (rss_bytes(old.pid) + rss_bytes(young.pid))
        assert s.values["tier.replica_rss_bytes"] == pytest.approx(both / 2, rel=0.05)
        assert s.values["whole.rss_bytes"] == pytest.approx(both, rel=0.05)
    finally:
        for p in (old, young):
            if p is not None:
                p.kill()
                p.wait()


def test_spool_bytes_and_parquet_files_come_from_the_directory_and_the_commit_record(tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir()
    data = tmp_path / "data"
    sampler = ResourceSampler(lambda: {}, dirs={"spool": spool}, data_dir=data)
    first = sampler.sample_once().values
    assert first == {"spool.dir_bytes": 0.0, "parquet_files": 0.0, "parquet_files_on_disk": 0.0}
    (spool / "seg-1.qsp").write_bytes(b"x" * 5000)
    (spool / "sub").mkdir()
    (spool / "sub" / "more").write_bytes(b"y" * 1000)
    sink = ParquetSink(data / "readings", data / "ingest")
    for day in range(2):
        t = (1_793_577_600 + day * 86_400) * 10**9
        sink.add(batch_from_columns({"ts": [t], "recv_ts": [t], "site": ["s"], "line": ["l"], "device": ["d"],
                                     "sensor": ["x"], "value": [1.0], "quality": [0], "seq": [day], "lot": ["L"]}))
        sink.flush()
    later = sampler.sample_once().values
    assert later["spool.dir_bytes"] == 6000.0
    assert later["parquet_files"] == 2.0 and later["parquet_files_on_disk"] == 2.0


def test_process_tree_finds_the_children_of_a_process():
    parent = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; "
                               "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)']); "
                               "print(c.pid, flush=True); time.sleep(30)"], stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        assert set(process_tree(parent.pid)) == {parent.pid, child}
    finally:
        subprocess.run(["kill", str(child)], check=False)
        parent.kill()
        parent.wait()


def _series(values: list[float]) -> list[Sample]:
    return [Sample(float(i), {"edge.rss_bytes": v}) for i, v in enumerate(values)]


def test_the_verdict_allows_noise_and_slack_but_not_steady_growth():
    mib = 1 << 20
    flat = [100 * mib + (i % 3) * mib for i in range(40)]
    assert bounded(_series(flat))[0].bounded
    warm_up_then_flat = [10 * mib * min(i, 10) for i in range(40)]  # the first quarter does not count
    assert bounded(_series(warm_up_then_flat))[0].bounded
    leak = [100 * mib + i * 4 * mib for i in range(40)]
    v = bounded(_series(leak))[0]
    assert not v.bounded and v.first == 100 * mib and v.peak == v.last == 256 * mib
    assert "first 100.0 MiB" in v.line() and "GROWING" in v.line()
    assert bounded(_series(leak), growth=2.0)[0].bounded  # a looser tolerance accepts it


def test_too_few_samples_for_a_verdict_is_said_clearly():
    with pytest.raises(QctraceError, match=r"3 samples are too few .*at least 8"):
        bounded(_series([1.0, 2.0, 3.0]))


def test_a_campaign_judges_the_workers_memory_as_one_tier_and_each_workers_descriptors():
    """The one-hour soak's 'growing' worker was the one that had taken over compaction from the
    other: the tier's memory was flat (about 1.0 GiB in both quarters). A worker's memory is shown,
    the tier's judged; a tier that grows, or one worker's descriptors, still fail the run."""
    from qctrace.campaign import CampaignResult
    from qctrace.resources import MetricVerdict

    def v(metric, ok):
        return MetricVerdict(metric, 1.0, 1.0, 1.0, 1.0, 2.0 if not ok else 1.0, 1.5, ok)

    base = CampaignResult(1, 3600, workers=2, check_resources=True, ledger_verified=True)
    base.resources = [v("ingest-w1.rss_bytes", True), v("ingest-w2.rss_bytes", False),
                      v("ingest.replica_rss_bytes", True),
                      v("ingest-w2.fds", True), v("sim.rss_bytes", False)]
    assert base.ok and "resources: bounded" in "\n".join(base.lines())
    base.resources[2] = v("ingest.replica_rss_bytes", False)
    assert not base.ok and "GROWING: ingest.replica_rss_bytes" in "\n".join(base.lines())
    base.resources[2] = v("ingest.replica_rss_bytes", True)
    base.resources[3] = v("ingest-w2.fds", False)
    assert not base.ok

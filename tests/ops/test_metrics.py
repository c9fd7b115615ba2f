"""Metrics and health served over real HTTP from a real edge → ingest pipeline (spool, wire, Parquet)."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from edge.forward import Forwarder
from edge.mqtt import MqttLink
from edge.spool import Spool
from edge.transport import InProcessLink
from ingest import Ingest
from ingest.receiver import Receiver
from qctrace.broker import LocalBroker
from qctrace.config import MqttConfig, load_config
from qctrace.metrics import EdgeMetrics, Health, IngestMetrics, MetricsServer
from qctrace.schema import Gap, batch_from_columns

T0 = 1_793_599_200 * 10**9


def batch(device: str, seqs: range):
    n = len(seqs)
    return batch_from_columns({
        "ts": [T0 + s * 10**8 for s in seqs], "recv_ts": [T0] * n, "site": ["p1"] * n, "line": ["l1"] * n,
        "device": [device] * n, "sensor": ["weight"] * n, "value": [500.0] * n, "quality": [0] * n,
        "seq": list(seqs), "lot": ["L-1"] * n,
    })


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    text = urllib.request.urlopen(url + "/metrics", timeout=5).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def health(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url + "/health", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_pipeline_metrics_and_health(tmp_path):
    conf = load_config(None)
    reg, hl = CollectorRegistry(), Health("test")

    async def go():
        em = EdgeMetrics(reg, hl, spool_age_warn_s=0.3)
        im = IngestMetrics(reg, hl, commit_stale_s=0.3)
        ingest = Ingest(tmp_path / "data", conf.detect, conf.sink.model_copy(update={"flush_age_s": 0.1}),
                        lambda facts: None)
        link = InProcessLink()
        spool = Spool(tmp_path / "spool", fsync=False)
        fwd = Forwarder("e1", spool, link, window=8, resend_after_s=5)
        receiver = Receiver(ingest, link.ack, tmp_path / "data" / "quarantine")
        em.watch(fwd, link, [])
        im.watch(ingest, receiver)
        with MetricsServer(reg, hl, port=0) as srv:
            publish = em.counting(fwd.publish)
            await publish(batch("plcA", range(0, 300)))
            await publish(batch("plcB", range(0, 50)))
            await publish(Gap("p1/l1/plcB", T0, T0 + 10**9, "test outage"))
            m = scrape(srv.url)
            assert m[("qctrace_edge_readings_total", (("source", "p1/l1/plcA"),))] == 300
            assert m[("qctrace_edge_readings_total", (("source", "p1/l1/plcB"),))] == 50
            assert m[("qctrace_edge_gaps_total", (("source", "p1/l1/plcB"),))] == 1
            assert m[("qctrace_edge_batches_spooled_total", ())] == 3
            assert m[("qctrace_edge_spool_depth_records", ())] == 3
            assert m[("qctrace_edge_spool_bytes", ())] > 0
            await asyncio.sleep(0.4)  # nothing forwarded yet: the spool's oldest record ages past the threshold
            code, h = await asyncio.to_thread(health, srv.url)
            assert code == 200 and h["status"] == "degraded"
            assert any("spool oldest record" in p for p in h["components"]["spool"]["problems"])

            stop = asyncio.Event()
            tasks = [asyncio.create_task(fwd.run(stop)),
                     asyncio.create_task(ingest.run(receiver.items(link.receive()), flush_check_s=0.05))]
            assert await fwd.drain(timeout_s=10)
            m = await asyncio.to_thread(scrape, srv.url)
            assert m[("qctrace_edge_batches_acknowledged_total", ())] == 3
            assert m[("qctrace_edge_spool_depth_records", ())] == 0
            assert m[("qctrace_ingest_readings_in_total", ())] == 350
            assert m[("qctrace_ingest_readings_committed_total", ())] == 350
            assert m[("qctrace_ingest_commits_total", ())] >= 1
            assert m[("qctrace_ingest_commit_seconds_count", ())] == m[("qctrace_ingest_commits_total", ())]
            assert m[("qctrace_ingest_detect_seconds_count", ())] == 2  # one per batch with fresh rows
            # the readings are from 2026-11-01: commit time − source time is weeks, in the +Inf bucket only
            assert m[("qctrace_ingest_end_to_end_lag_seconds_count", ())] == 2
            assert m[("qctrace_ingest_end_to_end_lag_seconds_bucket", (("le", "3600.0"),))] == 0
            code, h = await asyncio.to_thread(health, srv.url)
            assert h["status"] == "ok", h

            # Redelivery: counted as duplicates, not as new readings committed.
            await publish(batch("plcA", range(0, 300)))
            assert await fwd.drain(timeout_s=10)
            m = await asyncio.to_thread(scrape, srv.url)
            assert m[("qctrace_ingest_duplicates_dropped_total", ())] == 300
            assert m[("qctrace_ingest_readings_committed_total", ())] == 350

            # A sink that cannot commit makes the process "down", with HTTP 503 and the reason.
            from qctrace.errors import SinkCommitError
            ingest.commit_error = SinkCommitError("disk full at /data (test)")
            code, h = await asyncio.to_thread(health, srv.url)
            assert code == 503 and h["status"] == "down"
            assert "commits failing: disk full" in h["components"]["sink"]["problems"][0]
            ingest.commit_error = None
            stop.set()
            await link.close()
            await asyncio.gather(*tasks)
        spool.close()
    asyncio.run(go())


def test_broker_loss_shows_in_health(tmp_path):
    reg, hl = CollectorRegistry(), Health("edge e1")

    async def go():
        with LocalBroker(tmp_path / "broker") as b:
            link = await MqttLink(MqttConfig(port=b.port, keepalive_s=5), "e1").start()
            spool = Spool(tmp_path / "spool", fsync=False)
            fwd = Forwarder("e1", spool, link)
            EdgeMetrics(reg, hl).watch(fwd, link, [])
            with MetricsServer(reg, hl, port=0) as srv:
                assert (await asyncio.to_thread(health, srv.url))[1]["status"] == "ok"
                b.stop()
                deadline = time.monotonic() + 10
                while link.up and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                _code, h = await asyncio.to_thread(health, srv.url)
                assert h["status"] == "degraded"
                assert h["components"]["broker"]["problems"][0].startswith("broker disconnected since ")
                assert scrape(srv.url)[("qctrace_edge_broker_connected", ())] == 0
            await link.close()
            spool.close()
    asyncio.run(go())


def test_busy_port_is_a_clear_error():
    from qctrace.errors import ConfigError
    reg, hl = CollectorRegistry(), Health("x")
    with MetricsServer(reg, hl, port=0) as first, pytest.raises(ConfigError, match=r"cannot listen on .*set another"):
        MetricsServer(reg, hl, port=first.port)


def test_alarms_raised_are_counted_by_priority(tmp_path):
    """The real alarm feed: a spec episode (high) and a cold-chain band excursion (critical) raise one
    alarm each; their clears are not counted as raises."""
    from ingest.episodes import Episode
    from qctrace.alarm_ops import AlarmFeed
    from qctrace.config import Config
    from qctrace.schema import Flag

    s = 10**9
    reg = CollectorRegistry()
    im = IngestMetrics(reg, Health("ingest"))
    feed = im.counting_alarms(AlarmFeed(Config(data_dir=tmp_path)))
    facts = feed([Episode("p/l1/plc/weight", T0, T0 + 4 * s, int(Flag.SPEC_HIGH), 1.0, 9.0, 5, "L1"),
                  Episode("c/truck1/log/temperature", T0, T0 + 300 * s, int(Flag.BAND_HIGH), 1.0, 9.0, 5, "L1")])
    raised = {t.alarm.priority for t in facts if getattr(getattr(t, "action", None), "value", "") == "raised"}
    assert raised == {"high", "critical"}
    assert reg.get_sample_value("qctrace_ingest_alarms_raised_total", {"priority": "high"}) == 1
    assert reg.get_sample_value("qctrace_ingest_alarms_raised_total", {"priority": "critical"}) == 1
    assert reg.get_sample_value("qctrace_ingest_alarms_raised_total", {"priority": "low"}) is None

"""Outages between the OPC UA reader and a real server: a PLC restarted mid-subscription, and a
network cut while the PLC keeps running (read back from its history)."""

from __future__ import annotations

import asyncio

import pytest

from firmware_sim.opcua_server import ServerSecurity, free_port
from firmware_sim.plant import SimulatedPlant
from firmware_sim.scenario import load_scenario, parse_scenario
from qctrace.config import OpcUaClientConfig
from tests.edge.opcua_support import Collected, CuttableProxy, finish, keys_of, reader, run_for

_RESTART = """
[plant]
start = "2026-11-06T00:00:00Z"
tick_s = 1.0
[[sites]]
name = "p"
[[sites.lines]]
name = "l"
[[sites.lines.devices]]
name = "plc"
[[sites.lines.devices.tags]]
name = "t"
nominal = 10.0
noise = 0.1
[[sites.lines.devices.tags]]
name = "u"
nominal = 5.0
noise = 0.1
[[faults]]
kind = "opcua_server_restart"
target = "p/l"
at_s = 6
duration_s = 3
"""
_T0 = 1_793_923_200 * 10**9  # 2026-11-06T00:00:00Z


def _sent(plant) -> list[tuple[str, int]]:
    return keys_of(plant._runners[0].truth)


async def _run_with_a_cut(r, plant, proxy: CuttableProxy, ticks: int, until, *, before_s: float = 1.5,
                          cut_s: float = 2.0, linger_s: float = 0.3) -> None:
    """Run the open reader while the plant ticks; cut its link after ``before_s`` for ``cut_s`` (the
    PLC keeps sampling, nothing reaches the reader), then finish once ``until()`` holds."""
    stop = asyncio.Event()
    task = asyncio.create_task(r.run(stop))
    ticking = asyncio.create_task(plant.run_ticks(asyncio.Event(), max_ticks=ticks))
    await asyncio.sleep(before_s)
    await proxy.cut()
    await asyncio.sleep(cut_s)
    await proxy.restore()
    await ticking
    await finish(stop, task, until, linger_s=linger_s)


async def test_a_plc_restarted_mid_subscription_is_a_gap_and_nothing_after_the_restart_is_lost(tmp_path):
    sec = ServerSecurity(encrypted=True, allow_none=False, cert_dir=tmp_path / "srv", publish_dir=tmp_path / "pub")
    opts = OpcUaClientConfig(pki_dir=tmp_path / "pki", trust_dir=tmp_path / "pub", backoff_initial_s=0.2,
                             backoff_max_s=1.0)
    out = Collected()
    async with SimulatedPlant(parse_scenario(_RESTART), seed=1, speed=4, processes=False, security=sec) as plant:
        r = reader(plant.endpoints["opcua"][0], out, opts=opts, timeout_s=2)
        await run_for(r, plant, ticks=20, settle_s=1.5)
        sent = _sent(plant)
    assert r._client.reconnects == 1
    gaps = out.gaps
    assert len(gaps) == 1, gaps
    g = gaps[0]
    assert g.source == "p/l/plc" and "lost" in g.reason and "backfilled from the server's history" in g.reason
    assert g.start_ns == _T0 + 5 * 10**9  # the last sample before the PLC went down at 6 s
    got = out.keys()
    assert len(got) == len(set(got)), "a reading was emitted twice"
    assert set(got) <= set(sent)
    # Everything the restarted PLC sent (from 9 s) was read, live or from its history; before it,
    # what is missing lies inside the recorded gap.
    assert [k for k in sent if k[1] >= _T0 + 9 * 10**9 and k not in set(got)] == []
    assert all(k in set(got) or g.start_ns < k[1] < g.end_ns for k in sent)
    assert max(t for _, t in got) == max(t for _, t in sent)


@pytest.mark.parametrize("items_per_call", [0, 2])
async def test_a_network_cut_is_backfilled_from_the_plc_history(tmp_path, monkeypatch, items_per_call):
    """``items_per_call = 2``: a server that takes two monitored items per call, so the last tag's
    first live value after the re-subscribe arrives while its history is being read (the soak found
    that sample written twice, once from each)."""
    import edge.opcua
    from edge.opcua_ops import OperationLimits

    if items_per_call:  # and slow, as a CPU-starved PLC is: each call and the history read take a while
        async def limits(client):
            return OperationLimits(max_monitored_items_per_call=items_per_call)

        real_history = edge.opcua.read_history

        async def slow_history(*a, **kw):
            await asyncio.sleep(0.3)
            return await real_history(*a, **kw)

        monkeypatch.setattr(edge.opcua, "read_operation_limits", limits)
        monkeypatch.setattr(edge.opcua, "read_history", slow_history)
    opts = OpcUaClientConfig(security_policy="None", backoff_initial_s=0.2, backoff_max_s=0.5)
    out = Collected()
    async with SimulatedPlant(load_scenario("demo"), seed=2, speed=10, processes=False) as plant:
        server_port = plant._runners[0].server.port
        proxy = CuttableProxy(server_port, free_port())
        await proxy.restore()
        r = reader(proxy.url, out, opts=opts, timeout_s=2)
        async with r:
            if items_per_call:
                session = r._client.uaclient
                real_create = session.create_monitored_items

                async def slow_create(params):
                    await asyncio.sleep(0.3)
                    return await real_create(params)

                monkeypatch.setattr(session, "create_monitored_items", slow_create)
            await _run_with_a_cut(r, plant, proxy, 50, lambda: len(out.ts()) + len(r.builder)
                                  >= plant.produced()["plant1/line1/plc1"] and not r._resuming)
        sent = _sent(plant)
    assert r._client.reconnects >= 1
    got = out.keys()
    assert r.backfilled >= 4 * 10  # at least the 2 s cut at 10 ticks/s, 4 tags
    assert len(got) == len(set(got)) == len(sent) and set(got) == set(sent)  # all of it, each once
    (g,) = out.gaps
    n = int(g.reason.split("; ")[1].split(" readings backfilled")[0])
    assert n == r.backfilled and g.source == "plant1/line1/plc1"


async def test_reconnect_attempts_back_off_exponentially_with_jitter_up_to_the_cap():
    opts = OpcUaClientConfig(security_policy="None", backoff_initial_s=0.1, backoff_max_s=0.4, backoff_jitter=0.5)
    async with SimulatedPlant(load_scenario("demo"), seed=1, speed=10, processes=False) as plant:
        srv = plant._runners[0].server
        r = reader(plant.endpoints["opcua"][0], Collected(), opts=opts, timeout_s=2)
        delays: list[float] = []
        make = r._client._backoff

        def recording():
            for d in make():
                delays.append(d)
                yield d

        r._client._backoff = recording
        async with r:
            await srv.stop()
            await asyncio.sleep(3.0)  # every attempt in here is refused
            await srv.start()
            for _ in range(50):
                if r._client.reconnects:
                    break
                await asyncio.sleep(0.1)
    assert r._client.reconnects == 1
    assert len(delays) >= 5, delays
    assert 0.05 <= delays[0] <= 0.15 and 0.1 <= delays[1] <= 0.3  # 0.1 then 0.2, each ±50 %
    assert all(0.2 <= d <= 0.6 for d in delays[3:])  # capped at 0.4 ±50 %
    assert len({round(d, 6) for d in delays[3:]}) == len(delays[3:])  # jittered: no two capped delays alike


_SILENT = _RESTART.split("[[faults]]")[0] + """
[[faults]]
kind = "dropout"
target = "p/l/plc/u"
at_s = 25
duration_s = 100
"""


async def test_a_tag_that_fell_silent_during_a_cut_does_not_cut_the_gap_short(tmp_path):
    """Tag u stops at 2.5 s, inside a network cut (1 s to 4 s at 10 ticks/s), and the PLC keeps no
    history to read back. After the re-subscribe u's first value is its last sample (2.4 s), t's is
    live (~4 s): the gap must reach t's, or t's readings in between are lost without a record."""
    opts = OpcUaClientConfig(security_policy="None", backoff_initial_s=0.2, backoff_max_s=0.5,
                             history_backfill=False)
    out = Collected()
    async with SimulatedPlant(parse_scenario(_SILENT), seed=2, speed=10, processes=False) as plant:
        proxy = CuttableProxy(plant._runners[0].server.port, free_port())
        await proxy.restore()
        r = reader(proxy.url, out, opts=opts, timeout_s=1)
        async with r:
            await _run_with_a_cut(r, plant, proxy, 60, lambda: out.gaps and not r._resuming, before_s=1.0, cut_s=3.0,
                                  linger_s=0.5)
        sent = _sent(plant)
    got = set(out.keys())
    (g,) = out.gaps
    lost = [k for k in sent if k not in got]
    assert lost, "the cut lost nothing: the test did not cut"
    u_after = max(t for k, t in out.keys() if k == "u")
    assert any(k == "t" and t > u_after for k, t in lost)  # t lost readings after u's last one
    assert all(g.start_ns < t < g.end_ns for _, t in lost), (g, lost[:3], lost[-3:])


_QUIET = _RESTART.split("[[faults]]")[0] + """
[[faults]]
kind = "dropout"
target = "p/l/plc/u"
at_s = 5
duration_s = 1000
"""


@pytest.mark.parametrize("history", [True, False])
async def test_a_resume_that_breaks_after_values_flowed_keeps_the_outages_start(monkeypatch, history):
    """The one-hour soak: after a cut, the resume subscribed, took live values, then timed out; the
    supervisor went round and the next resume took the outage's start afresh, after those values,
    so the ticks of the cut were neither read back nor inside a gap. The outage now keeps its start
    across resumes, and the history read skips what the broken resume already took."""
    opts = OpcUaClientConfig(security_policy="None", backoff_initial_s=0.2, backoff_max_s=0.5,
                             history_backfill=history)
    out = Collected()
    async with SimulatedPlant(load_scenario("demo"), seed=2, speed=10, processes=False) as plant:
        proxy = CuttableProxy(plant._runners[0].server.port, free_port())
        await proxy.restore()
        r = reader(proxy.url, out, opts=opts, timeout_s=2)
        real, calls = r._subscribe, []

        async def resubscribe_then_time_out():
            calls.append(r.notifications)
            await real()
            if len(calls) == 2:  # the first resume after the cut
                for _ in range(200):
                    if r.notifications > calls[-1] + 8:  # two ticks of live values taken
                        break
                    await asyncio.sleep(0.02)
                raise TimeoutError  # its next request got no answer in time

        monkeypatch.setattr(r, "_subscribe", resubscribe_then_time_out)
        async with r:
            await _run_with_a_cut(r, plant, proxy, 60, lambda: out.gaps and not r._resuming, linger_s=0.5)
        sent = _sent(plant)
    assert len(calls) == 3 and r._client.reconnects >= 1  # the open, the broken resume, the one that held
    got = out.keys()
    assert len(got) == len(set(got)), "a sample was read twice"
    (g,) = out.gaps
    lost = [k for k in sent if k not in set(got)]
    if history:
        assert lost == [] and r.backfilled >= 4 * 10  # the 2 s cut at 10 ticks/s, 4 tags, read back
    else:
        assert lost, "the cut lost nothing: the test did not cut"
        assert all(g.start_ns < t < g.end_ns for _, t in lost), (g.start_ns, g.end_ns, sorted(lost)[:8], len(lost))


async def test_a_quiet_tags_last_sample_is_not_read_again_after_a_restart_nor_after_a_cut(tmp_path):
    """After a restart, a new subscription's first value of each tag is its current one: for u,
    silent since 4 s, that is the sample the last run already spooled, and the record of samples
    sent (``sent_path``) drops it. The one-hour soak then wrote such a sample five times: the
    restarted reader had not noted it as the tag's last, so every re-subscribe after a network cut
    took it again."""
    sent_path = tmp_path / "opcua-sent" / "plc.json"
    opts = OpcUaClientConfig(security_policy="None", backoff_initial_s=0.2, backoff_max_s=0.5)
    first, again = Collected(), Collected()
    async with SimulatedPlant(parse_scenario(_QUIET), seed=2, speed=10, processes=False) as plant:
        await run_for(reader(plant.endpoints["opcua"][0], first, opts=opts, sent_path=sent_path), plant, ticks=30,
                      settle_s=1.2)
        proxy = CuttableProxy(plant._runners[0].server.port, free_port())
        await proxy.restore()
        r = reader(proxy.url, again, opts=opts, sent_path=sent_path, timeout_s=1)
        async with r:
            await _run_with_a_cut(r, plant, proxy, 40, lambda: again.gaps and not r._resuming, before_s=1.0)
    assert r._client.reconnects >= 1 and len(again.gaps) == 1
    u_last = max(t for k, t in first.keys() if k == "u")
    assert u_last == _T0 + 4 * 10**9  # u fell silent after its sample at 4 s
    # the plant paused between the two runs, so t's current value was also one already read
    assert sorted(set(first.keys()) & set(again.keys())) == []  # neither after the restart nor after the cut
    got = again.keys()
    assert len(got) == len(set(got))
    assert len([t for k, t in got if k == "t"]) >= 30  # the busy tag is read as before

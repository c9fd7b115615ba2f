"""Readers against the real simulated plant: OPC UA over loopback TCP, serial over a real pty."""

from __future__ import annotations

import asyncio

import pyarrow as pa
import pytest

from edge import BatchBuilder, OpcUaReader, SeqAllocator, SerialReader, StreamTable
from firmware_sim.plant import SimulatedPlant
from firmware_sim.scenario import load_scenario
from qctrace.config import OpcUaClientConfig
from qctrace.errors import ServerUnreachable
from qctrace.schema import READING_SCHEMA
from tests.edge.opcua_support import run_readers

_CLEAR = OpcUaClientConfig(security_policy="None")  # these plants offer no security: said explicitly


async def test_every_sample_of_every_tag_arrives_once_with_source_time_and_lot():
    sc = load_scenario("demo")
    batches: list[pa.RecordBatch] = []

    async def publish(b: pa.RecordBatch) -> None:
        batches.append(b)

    async with SimulatedPlant(sc, seed=3, speed=40) as plant:
        streams = StreamTable()
        reader = OpcUaReader(plant.endpoints["opcua"][0], BatchBuilder(streams, SeqAllocator(None)), publish,
                             publishing_interval_ms=50, batch_max_age_s=0.1, opts=_CLEAR)
        serial = SerialReader(plant.endpoints["serial"]["SHP-0001"], "coldchain", "SHP-0001", "logger-01",
                              BatchBuilder(streams, SeqAllocator(None)), publish, lot="LOT-X", batch_max_age_s=0.1)
        await run_readers([reader, serial], plant, ticks=60)
        truth = pa.Table.from_batches([*plant._runners[0].truth, *plant.loggers.truth])

    got = pa.Table.from_batches(batches, schema=READING_SCHEMA)
    assert got.num_rows == truth.num_rows == 60 * 8
    plc = got.filter(pa.compute.equal(got.column("device").cast(pa.string()), "plc1"))
    keys = {(r["sensor"], r["ts"].value if hasattr(r["ts"], "value") else r["ts"]) for r in
            plc.select(["sensor", "ts"]).cast(pa.schema([("sensor", pa.string()), ("ts", pa.int64())])).to_pylist()}
    assert len(keys) == plc.num_rows == 240  # a stuck value would still be one reading per sample
    assert set(plc.column("lot").cast(pa.string()).to_pylist()) == {"L1-20261102-0001"}
    seqs = sorted(plc.column("seq").to_pylist())
    assert seqs == list(range(240))
    log = got.filter(pa.compute.equal(got.column("device").cast(pa.string()), "logger-01"))
    assert set(log.column("lot").cast(pa.string()).to_pylist()) == {"LOT-X"}
    assert sorted(log.column("value").to_pylist()) == sorted(
        truth.filter(pa.compute.equal(truth.column("source").cast(pa.string()), "coldchain/SHP-0001/logger-01"))
        .column("value").to_pylist())


async def test_no_server_gives_a_reader_error_naming_the_endpoint_when_told_not_to_wait():
    reader = OpcUaReader("opc.tcp://127.0.0.1:9/none/", BatchBuilder(StreamTable(), SeqAllocator(None)),
                         lambda b: None, timeout_s=2, opts=_CLEAR)
    reader.retry_unreachable = False
    with pytest.raises(ServerUnreachable, match=r"opc\.tcp://127\.0\.0\.1:9/none/"):
        async with reader:
            pass


async def test_a_reader_started_before_its_plc_waits_for_it_and_opens_when_it_answers(caplog):
    """An edge started while a PLC restarts must not stop (it would take every other device's
    data with it): the reader says what it waits for, and opens once the server answers."""
    from qctrace.broker import free_port
    from tests.edge.opcua_support import CuttableProxy

    async with SimulatedPlant(load_scenario("demo"), seed=3, speed=40, processes=False) as plant:
        proxy = CuttableProxy(int(plant.opcua_endpoints[0].rsplit(":", 1)[1].split("/")[0]), free_port())
        reader = OpcUaReader(proxy.url, BatchBuilder(StreamTable(), SeqAllocator(None)), lambda b: None,
                             timeout_s=2, opts=_CLEAR)
        opening = asyncio.ensure_future(reader.__aenter__())
        await asyncio.sleep(1.5)
        assert not opening.done()  # still waiting, not failed
        assert any("opcua.unreachable" in r.getMessage() and proxy.url in r.getMessage() for r in caplog.records)
        await proxy.restore()
        await asyncio.wait_for(opening, 20)
        await reader.__aexit__(None, None, None)
        await proxy.cut()


async def test_a_plc_that_stops_answering_while_the_reader_opens_it_is_waited_for(caplog, monkeypatch):
    """The campaign's PLC restart timed a browse out half-way through opening: that killed the whole
    edge. The open now starts again from the connection, as for a server that does not answer."""
    async with SimulatedPlant(load_scenario("demo"), seed=3, speed=40, processes=False) as plant:
        for retry in (True, False):
            reader = OpcUaReader(plant.opcua_endpoints[0], BatchBuilder(StreamTable(), SeqAllocator(None)),
                                 lambda b: None, timeout_s=2, opts=_CLEAR)
            reader.retry_unreachable = retry
            real, calls = reader._discover, []

            async def browse_times_out_once(real=real, calls=calls):
                calls.append(1)
                if len(calls) == 1:
                    raise TimeoutError  # what asyncua raises when a request gets no answer in time
                await real()

            monkeypatch.setattr(reader, "_discover", browse_times_out_once)
            if retry:
                async with reader:
                    assert len(calls) == 2 and reader._nodes  # opened on the second try, tags browsed
                assert any("opcua.open_interrupted" in r.getMessage() and plant.opcua_endpoints[0] in r.getMessage()
                           for r in caplog.records)
            else:
                with pytest.raises(ServerUnreachable, match="stopped answering while the reader opened it"):
                    async with reader:
                        pass


async def test_an_open_interrupted_after_values_flowed_is_an_outage_with_its_gap(monkeypatch):
    """The soak: a restarted edge's first open of a PLC subscribed, took a tick of values, then timed
    out; the second attempt browsed every tag again (each then read twice, under two seqs) and the
    ticks between the attempts were lost without a gap record. Now the tags are browsed afresh and
    the interruption is an outage: marked at once, its gap recorded from the first attempt's values."""
    from tests.edge.opcua_support import Collected, finish, keys_of, reader

    async with SimulatedPlant(load_scenario("demo"), seed=3, speed=20, processes=False) as plant:
        out = Collected()
        r = reader(plant.opcua_endpoints[0], out, timeout_s=2,
                   opts=OpcUaClientConfig(security_policy="None", history_backfill=False))
        real, calls = r._subscribe, []

        async def subscribe_then_time_out():
            calls.append(1)
            await real()
            if len(calls) == 1:
                for _ in range(200):
                    if r.notifications:
                        break
                    await asyncio.sleep(0.02)
                raise TimeoutError  # the next request of the open got no answer in time

        monkeypatch.setattr(r, "_subscribe", subscribe_then_time_out)
        ticks = asyncio.create_task(plant.run_ticks(asyncio.Event(), max_ticks=80))
        await asyncio.sleep(0.3)
        async with r:
            stop = asyncio.Event()
            task = asyncio.create_task(r.run(stop))
            await ticks
            await finish(stop, task, lambda: out.gaps and not r._resuming)
        sent = keys_of(plant._runners[0].truth)
    assert len(calls) == 2 and len(r._nodes) == 5  # 4 tags and the line's Lot, browsed once
    got = out.keys()
    assert len(got) == len(set(got)), "a sample was read twice"
    first = min(t for _, t in got)  # what the PLC sent before the first subscription is a restart gap's
    lost = [k for k in sent if k not in set(got) and k[1] > first]
    assert lost, "nothing was lost between the attempts: the test did not interrupt the open"
    (g,) = out.gaps
    assert all(g.start_ns < t < g.end_ns for _, t in lost), (g.start_ns, g.end_ns, sorted(lost)[:8], len(lost))
    assert [o.closed for o in out.outages] == [False, True] and out.outages[0].since_ns == g.start_ns


async def test_an_unplugged_logger_is_reopened_and_every_frame_it_sent_is_read(tmp_path):
    sc = load_scenario("faults")  # SHP-F01's logger is unplugged from 500 s to 530 s
    batches: list[pa.RecordBatch] = []

    async def publish(b: pa.RecordBatch) -> None:
        batches.append(b)

    async with SimulatedPlant(sc, seed=3, speed=100, processes=False, dev_dir=tmp_path / "dev") as plant:
        streams = StreamTable()
        reader = SerialReader(str(tmp_path / "dev" / "logger-f01"), "coldchain", "SHP-F01", "logger-f01",
                              BatchBuilder(streams, SeqAllocator(None)), publish, batch_max_age_s=0.05)
        await run_readers([reader], _OnlyLogger(plant, "coldchain/SHP-F01/logger-f01"), ticks=560)
        truth = pa.Table.from_batches(plant.loggers.truth)
    assert reader.reopens >= 1
    sent = truth.filter(pa.compute.equal(truth.column("source").cast(pa.string()), "coldchain/SHP-F01/logger-f01"))
    from qctrace.schema import Gap

    assert [type(b) for b in batches].count(Gap) == 1  # the outage, recorded
    got = pa.Table.from_batches([b for b in batches if isinstance(b, pa.RecordBatch)], schema=READING_SCHEMA)
    assert got.num_rows == sent.num_rows > 0
    assert sorted(got.column("ts").cast(pa.int64()).to_pylist()) == sorted(sent.column("ts").cast(pa.int64())
                                                                           .to_pylist())


class _OnlyLogger:
    """The plant as ``_run`` sees it, counting only one logger's readings."""

    def __init__(self, plant: SimulatedPlant, source: str) -> None:
        self.plant = plant
        self.source = source

    async def run_ticks(self, stop, max_ticks):
        return await self.plant.run_ticks(stop, max_ticks=max_ticks)

    def produced(self) -> dict[str, int]:
        return {self.source: self.plant.produced().get(self.source, 0)}


def test_backoff_grows_to_its_cap_with_bounded_jitter():
    import itertools
    import random

    from edge.backoff import exponential_backoff

    delays = list(itertools.islice(exponential_backoff(0.1, 2.0, 1.0, 0.2, random.Random(1)), 8))
    assert 0.08 <= delays[0] <= 0.12
    assert all(0.8 <= d <= 1.2 for d in delays[4:])


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
[[faults]]
kind = "opcua_server_restart"
target = "p/l"
at_s = 6
duration_s = 3
"""


async def test_a_server_restart_becomes_one_gap_record_and_data_resumes():
    from firmware_sim.scenario import parse_scenario
    from qctrace.schema import Gap, Outage

    items: list = []

    async def publish(item) -> None:
        items.append(item)

    async with SimulatedPlant(parse_scenario(_RESTART), seed=1, speed=2, processes=False) as plant:
        reader = OpcUaReader(plant.endpoints["opcua"][0], BatchBuilder(StreamTable(), SeqAllocator(None)), publish,
                             publishing_interval_ms=50, batch_max_age_s=0.1, timeout_s=2, opts=_CLEAR)
        async with reader:
            stop = asyncio.Event()
            task = asyncio.create_task(reader.run(stop))
            await plant.run_ticks(asyncio.Event(), max_ticks=24)
            await asyncio.sleep(1.5)
            stop.set()
            await task
        truth = pa.Table.from_batches(plant._runners[0].truth)
    gaps = [i for i in items if isinstance(i, Gap)]
    assert len(gaps) == 1, gaps
    g = gaps[0]
    start = 1_793_923_200 * 10**9  # 2026-11-06T00:00:00Z
    assert g.source == "p/l/plc" and "lost" in g.reason
    assert g.start_ns == start + 5 * 10**9  # the last sample before the server went down at 6 s
    assert g.end_ns >= start + 9 * 10**9  # the first sample after it came back
    outages = [i for i in items if isinstance(i, Outage)]  # the reader's word to the forwarder
    assert [(o.source, o.since_ns, o.closed) for o in outages] == [("p/l/plc", g.start_ns, False),
                                                                     ("p/l/plc", g.start_ns, True)]
    assert items.index(outages[1]) == items.index(g) + 1  # closed once its gap is out
    got = {t for b in items if not isinstance(b, Gap | Outage) for t in b.column("ts").cast(pa.int64()).to_pylist()}
    sent = set(truth.column("ts").cast(pa.int64()).to_pylist())
    assert got <= sent
    # Everything sent is either received or inside the recorded gap; readings resumed after it.
    assert all(t in got or g.start_ns < t < g.end_ns for t in sent)
    assert max(got) >= start + 20 * 10**9


def test_an_outage_across_which_the_device_clock_went_back_is_one_gap_over_both_ends():
    """The one-hour soak: a PLC's clock was set a day back while its connection was down, so the
    first readings after the outage were stamped before the last one before it; the gap was cut
    to zero length and 24 ticks were lost without a record. The gap is now the union of both ends,
    each a real reading's source time (what the campaign's oracle maps to the plant's ticks)."""
    from asyncua import ua

    from qctrace.schema import Gap, Outage

    streams = StreamTable()
    r = OpcUaReader("opc.tcp://127.0.0.1:9/none/", BatchBuilder(streams, SeqAllocator(None)), lambda b: None,
                    opts=_CLEAR)
    r._nodes = [ua.NodeId(1, 2), ua.NodeId(2, 2)]
    r._stream_of = [streams.add("p", "l", "plc", "t"), streams.add("p", "l", "plc", "u")]
    day, t229 = 86_400 * 10**9, 1_793_837_229 * 10**9
    r._last_ts = [t229, t229 - 10**9]
    r._record_gaps([t229, t229 - 10**9], [t229 + 25 * 10**9 - day, t229 + 25 * 10**9 - day], {}, "",
                   (t229 + 2 * 10**9, "connection lost"))
    gap, closed = r.pending_gaps
    assert isinstance(gap, Gap) and isinstance(closed, Outage) and closed.closed
    assert (gap.start_ns, gap.end_ns) == (t229 + 25 * 10**9 - day, t229)
    assert "earlier than its last before it" in gap.reason
    r._record_gaps([t229, t229 - 10**9], [t229 + 3 * 10**9, t229 + 4 * 10**9], {}, "", (t229, "connection lost"))
    later = r.pending_gaps[2]
    assert (later.start_ns, later.end_ns) == (t229 - 10**9, t229 + 4 * 10**9)  # as before: earliest to latest
    assert "earlier" not in later.reason

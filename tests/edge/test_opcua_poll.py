"""Batched polling and subscription set-up under the server's OperationLimits; tag selection and
per-tag monitoring rules."""

from __future__ import annotations

import pytest
from asyncua import Client, ua

from firmware_sim.plant import SimulatedPlant
from firmware_sim.scenario import load_scenario
from qctrace.config import OpcUaClientConfig, OpcUaTagRule
from qctrace.errors import ReaderError
from tests.edge.opcua_support import Collected, reader, run_for

_CLEAR = dict(security_policy="None")  # these plants offer no security: said explicitly


async def _limit(plant: SimulatedPlant, n: int):
    """Restart the plant's PLC advertising (and enforcing) ``n`` nodes per call, as a small PLC would."""
    srv = plant._runners[0].server
    await srv.stop()
    srv.max_nodes_per_call = n
    await srv.start()
    return srv


def _plant() -> SimulatedPlant:
    return SimulatedPlant(load_scenario("demo"), seed=1, speed=20, processes=False)


async def test_polling_reads_in_batches_no_larger_than_max_nodes_per_read():
    async with _plant() as plant:
        url = plant.endpoints["opcua"][0]
        srv = await _limit(plant, 2)
        # The limit is real: one Read of all five variables (4 tags and the lot) is refused.
        async with Client(url) as c:
            with pytest.raises(ua.UaStatusCodeError, match="BadTooManyOperations"):
                await c.read_values([c.get_node(f"ns=2;s=plant1/line1/plc1/{t}") for t in
                                     ("filler_weight", "seal_temp", "torque", "line_speed")] +
                                    [c.get_node("ns=2;s=plant1/line1/Lot")])
        srv.read_sizes.clear()
        out = Collected()
        r = reader(url, out, opts=OpcUaClientConfig(**_CLEAR, mode="poll", poll_interval_ms=50))
        await run_for(r, plant, ticks=10, settle_s=0.5)
    polls = [n for n in srv.read_sizes if n > 1]  # health probes and limit reads are single nodes
    assert r.limits.max_nodes_per_read == 2
    assert polls and max(polls) == 2 and r.read_calls >= 3 * 3  # 5 nodes: 3 Reads per poll, at least 3 polls
    keys = {(s, t) for s, t in out.keys()}
    assert len(keys) == len(out.keys()) > 0  # a value read twice (unchanged) is not a second reading
    assert set(out.table().column("lot").cast("string").to_pylist()) == {"L1-20261102-0001"}


async def test_monitored_items_are_created_in_calls_no_larger_than_max_monitored_items_per_call():
    async with _plant() as plant:
        srv = await _limit(plant, 3)
        srv.create_sizes.clear()
        out = Collected()
        r = reader(plant.endpoints["opcua"][0], out, opts=OpcUaClientConfig(**_CLEAR))
        await run_for(r, plant, ticks=10)
    mine = srv.create_sizes[-2:]  # the history's own items are created one per call before
    assert mine == [3, 2]
    assert len(out.keys()) == plant.produced()["plant1/line1/plc1"] == 40


async def test_tags_are_chosen_by_nodeid_or_browse_path_pattern():
    opts = OpcUaClientConfig(**_CLEAR, tags=("*/*/*/seal_temp", "ns=2;s=plant1/line1/plc1/torque"))
    async with SimulatedPlant(load_scenario("demo"), seed=1, speed=20, processes=False) as plant:
        out = Collected()
        await run_for(reader(plant.endpoints["opcua"][0], out, opts=opts), plant, ticks=5)
        assert sorted({s for s, _ in out.keys()}) == ["seal_temp", "torque"]
        assert len(out.keys()) == 10
        bad = OpcUaClientConfig(**_CLEAR, tags=("ns=2;s=plant1/line1/plc1/nope",))
        with pytest.raises(ReaderError, match=r"NodeIds that are not tags .*plant1/line1/plc1/nope"):
            async with reader(plant.endpoints["opcua"][0], Collected(), opts=bad):
                pass
        none = OpcUaClientConfig(**_CLEAR, tags=("*/*/*/humidity",))
        with pytest.raises(ReaderError, match=r"no tags found .* matching edge.opcua.tags \['\*/\*/\*/humidity'\]"):
            async with reader(plant.endpoints["opcua"][0], Collected(), opts=none):
                pass


async def test_per_tag_rules_set_sampling_queue_and_deadband_last_match_wins():
    rules = (OpcUaTagRule(match="*/*/*/*", sampling_interval_ms=100, queue_size=5),
             OpcUaTagRule(match="*/*/*/seal_temp", deadband=0.5, deadband_type="percent"),
             OpcUaTagRule(match="*/*/*/seal_temp", queue_size=50))
    async with SimulatedPlant(load_scenario("demo"), seed=1, speed=20, processes=False) as plant:
        r = reader(plant.endpoints["opcua"][0], Collected(), opts=OpcUaClientConfig(**_CLEAR, rules=rules))
        async with r:
            items = {r._keys[h].rsplit("/", 1)[1]: r._item(h).RequestedParameters for h in range(len(r._keys))}
    seal, torque = items["seal_temp"], items["torque"]
    assert (seal.SamplingInterval, seal.QueueSize, seal.Filter.DeadbandType, seal.Filter.DeadbandValue) == (
        100, 50, 2, 0.5)
    assert (torque.SamplingInterval, torque.QueueSize, torque.Filter.DeadbandType) == (100, 5, 0)
    assert items["Lot"].Filter.DeadbandType == 0  # a string: no deadband

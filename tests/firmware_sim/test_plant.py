"""The simulated PLC is a real OPC UA server: browse it over TCP as a client would."""

from __future__ import annotations

import asyncio

from asyncua import Client, ua

from firmware_sim.plant import SimulatedPlant
from firmware_sim.scenario import load_scenario


async def test_address_space_browses_as_documented_and_values_carry_source_time(tmp_path):
    sc = load_scenario("demo")
    async with SimulatedPlant(sc, seed=7, speed=50) as plant:
        async with Client(plant.endpoints["opcua"][0]) as c:
            ns = await c.get_namespace_index("urn:qctrace:sim")
            tag = await c.nodes.objects.get_child([f"{ns}:plant1", f"{ns}:line1", f"{ns}:plc1",
                                                   f"{ns}:filler_weight"])
            before = await tag.read_data_value(raise_on_bad_status=False)
            assert before.StatusCode.value == ua.StatusCodes.BadWaitingForInitialData
            await plant.run_ticks(asyncio.Event(), max_ticks=3)
            dv = await tag.read_data_value()
            assert dv.StatusCode.is_good()
            assert dv.SourceTimestamp.isoformat().startswith("2026-11-02T06:00:02")
            lot = await c.nodes.objects.get_child([f"{ns}:plant1", f"{ns}:line1", f"{ns}:Lot"])
            assert await lot.read_value() == "LOT-2026-11-02-L1-0001"
        truth_files = plant.write_truth(tmp_path)
    assert plant.produced() == {"plant1/line1/plc1": 12, "coldchain/SHP-0001/logger-01": 12}
    assert truth_files["readings"].exists() and truth_files["labels"].exists()

"""The simulated PLC is a real OPC UA server: browse it over TCP as a client would."""

from __future__ import annotations

import asyncio

import pyarrow as pa
import pyarrow.compute as pc
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
            assert await lot.read_value() == "L1-20261102-0001"
        truth_files = plant.write_truth(tmp_path)
    assert plant.produced() == {"plant1/line1/plc1": 12, "coldchain/SHP-0001/logger-01": 12}
    assert truth_files["readings"].exists() and truth_files["labels"].exists()


async def test_serial_line_faults_damage_frames_and_an_unplug_replugs_the_pty(tmp_path):
    """Corrupt and partial frames are sent damaged and left out of the truth; an oversized burst
    precedes an intact frame, which stays in; an unplug removes the stable link, a replug restores it."""
    import os

    from edge.frames import FrameDecoder

    sc = load_scenario("faults")
    dev = tmp_path / "dev"
    async with SimulatedPlant(sc, seed=4, speed=100, processes=False, dev_dir=dev) as plant:
        link = dev / "logger-f01"
        dec = FrameDecoder("logger-f01")
        frames = []
        fd = os.open(link, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
        seen_unplug = False

        async def pump(ticks: int) -> None:
            await plant.run_ticks(asyncio.Event(), max_ticks=ticks)

        task = asyncio.create_task(pump(560))
        while not task.done():
            try:
                data = os.read(fd, 65536)
                frames += dec.feed(data)
                hangup = not data
            except BlockingIOError:
                hangup = False
            except OSError:
                hangup = True
            if hangup:  # EIO or end of file: the logger was unplugged
                os.close(fd)
                seen_unplug = True
                async with asyncio.timeout(30):
                    while not link.exists():
                        await asyncio.sleep(0.01)
                fd = os.open(link, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
            await asyncio.sleep(0.002)
        await task
        try:
            frames += dec.feed(os.read(fd, 65536))
        except BlockingIOError:
            pass
        os.close(fd)
        assert seen_unplug and link.exists()  # (the kernel may hand out the same pts number again)
        truth = pa.Table.from_batches(plant.loggers.truth)
    sent = truth.filter(pc.equal(truth.column("source").cast(pa.string()), "coldchain/SHP-F01/logger-f01"))
    temps = sent.filter(pc.equal(sent.column("sensor").cast(pa.string()), "temperature"))
    assert [f.temperature for f in frames] == temps.column("value").to_pylist()
    assert dec.rejected["crc"] + dec.rejected["framing"] + dec.rejected["oversized"] > 0
    ticks = set(temps.column("tick").to_pylist())
    assert not ticks & set(range(350, 370))  # partial frames: lost to any reader, not in the truth
    assert set(range(400, 420)) <= ticks  # oversized noise before an intact frame: the frame survives
    assert not ticks & set(range(500, 530))  # unplugged: nothing sent

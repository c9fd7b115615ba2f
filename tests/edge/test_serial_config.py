"""[[edge.serial.devices]] in the TOML configuration becomes working readers, framed and Modbus alike."""

from __future__ import annotations

import asyncio

import pyarrow as pa

from edge.batcher import StreamTable
from edge.modbus import ModbusReader
from edge.sequence import SeqAllocator
from edge.serial import SerialReader, serial_readers
from firmware_sim.modbus_device import ModbusLogger
from firmware_sim.serial_logger import PtyLogger, encode_frame
from qctrace.config import load_config

CONFIG = """
[edge.serial]
reopen_cap_s = 0.5

[[edge.serial.devices]]
port = "{logger}"
site = "coldchain"
line = "SHP-9"
device = "logger-09"
lot = "LOT-9"

[[edge.serial.devices]]
port = "{rs485}"
protocol = "modbus"
baudrate = 19200
site = "plant1"
line = "coldroom"
poll_interval_s = 0.02
timeout_s = 0.2

[[edge.serial.devices.units]]
unit_id = 4
device = "room-4"
registers = [
  {{sensor = "temperature", address = 0, table = "input", type = "float32", word_order = "little"}},
  {{sensor = "humidity", address = 2, table = "input", scale = 0.1}},
]
"""


async def test_a_configuration_with_a_logger_and_a_modbus_line_reads_both(tmp_path):
    logger = PtyLogger("logger-09", tmp_path / "by-id" / "logger-09")
    (tmp_path / "q.toml").write_text(CONFIG.format(logger=logger.port, rs485=tmp_path / "by-id" / "rs485"))
    cfg = load_config(tmp_path / "q.toml").edge.serial
    unit = cfg.devices[1].units[0]
    items: list = []

    async def publish(item) -> None:
        items.append(item)

    async with ModbusLogger(cfg.devices[1].units, link=tmp_path / "by-id" / "rs485") as dev:
        readers = serial_readers(cfg, StreamTable(), SeqAllocator(None), publish, batch_max_age_s=0.05)
        assert [type(r) for r in readers] == [SerialReader, ModbusReader]
        stop = asyncio.Event()
        for r in readers:
            await r.__aenter__()
        tasks = [asyncio.create_task(r.run(stop)) for r in readers]
        for seq in range(5):
            logger.write(encode_frame("logger-09", seq, 1793599200000 + seq * 1000, 5.0, 60.0, 0, 3.6))
        async with asyncio.timeout(10):
            while readers[0].frames < 5 or readers[1].polls < 5:
                await asyncio.sleep(0.02)
        stop.set()
        await asyncio.gather(*tasks)
        for r in readers:
            await r.__aexit__(None, None, None)
    logger.close()
    t = pa.Table.from_batches([i for i in items if isinstance(i, pa.RecordBatch)])
    sources = set(zip(t.column("site").cast(pa.string()).to_pylist(), t.column("device").cast(pa.string()).to_pylist(),
                      strict=True))
    assert sources == {("coldchain", "logger-09"), ("plant1", "room-4")}
    lots = {d: lot for d, lot in zip(t.column("device").cast(pa.string()).to_pylist(),
                                    t.column("lot").cast(pa.string()).to_pylist(), strict=True)}
    assert lots["logger-09"] == "LOT-9"
    assert readers[1].stats[4].reads >= 5 and len(dev.served) >= 5
    assert [b.count for b in readers[1].blocks] == [3]  # float32 + uint16: one read of three registers
    assert unit.registers[0].word_order == "little"

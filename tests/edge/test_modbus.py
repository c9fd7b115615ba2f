"""The Modbus RTU reader against pymodbus's RTU server on a real pty pair, with a line we break."""

from __future__ import annotations

import asyncio
import math

import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge import BatchBuilder, SeqAllocator, StreamTable
from edge.modbus import ModbusReader, decode_register, plan_reads
from firmware_sim.modbus_device import DEFAULT_UNITS, ModbusLogger, decode, encode
from qctrace.config import ModbusRegister, ModbusUnit
from qctrace.errors import ReaderError
from qctrace.schema import Gap, Quality


def _reg(sensor: str, address: int, **kw) -> ModbusRegister:
    return ModbusRegister(sensor=sensor, address=address, **kw)


def test_contiguous_registers_are_read_together_holes_tables_and_the_limit_split_them():
    unit = ModbusUnit(unit_id=3, device="d", registers=(
        _reg("a", 0, type="float32"), _reg("b", 2), _reg("c", 3, type="int16"),  # 0..3: one read
        _reg("d", 5),  # a hole at 4: a second read (the unit may refuse address 4)
        _reg("e", 0, table="input"), _reg("f", 1, table="input", type="float32")))
    blocks = plan_reads(unit)
    assert [(b.table, b.start, b.count, [r.sensor for r in b.registers]) for b in blocks] == [
        ("holding", 0, 4, ["a", "b", "c"]), ("holding", 5, 1, ["d"]), ("input", 0, 3, ["e", "f"])]
    small = plan_reads(unit, max_count=3)
    assert [(b.table, b.start, b.count) for b in small] == [("holding", 0, 3), ("holding", 3, 1), ("holding", 5, 1),
                                                          ("input", 0, 3)]
    assert all(b.count <= 3 for b in small)


@given(value=st.floats(-1e4, 1e4, allow_nan=False), kind=st.sampled_from(["int16", "uint16", "float32"]),
       order=st.sampled_from(["big", "little"]), scale=st.sampled_from([1.0, 0.1, 0.01, 2.0]))
def test_the_reader_decodes_what_the_device_encodes(value, kind, order, scale):
    reg = _reg("x", 0, type=kind, word_order=order, scale=scale, offset=-3.0)
    words = encode(value, reg)
    assert all(0 <= w <= 0xFFFF for w in words) and len(words) == reg.width
    assert decode_register(words, reg) == pytest.approx(decode(words, reg), rel=1e-6, abs=1e-9)


def test_float32_word_order_matters():
    big = _reg("t", 0, type="float32")
    little = _reg("t", 0, type="float32", word_order="little")
    assert decode_register([0x40D5, 0x6113], big) == pytest.approx(6.668, abs=1e-3)
    assert decode_register([0x6113, 0x40D5], little) == pytest.approx(6.668, abs=1e-3)
    assert decode_register([0xFF6A], _reg("s", 0, type="int16", scale=0.1)) == pytest.approx(-15.0)


class _Collect:
    def __init__(self) -> None:
        self.items: list = []

    async def __call__(self, item) -> None:
        self.items.append(item)

    def table(self) -> pa.Table:
        return pa.Table.from_batches([i for i in self.items if isinstance(i, pa.RecordBatch)])

    def values(self, device: str, sensor: str, quality: int = 0) -> list[float]:
        t = self.table()
        return [v for d, s, q, v in zip(t.column("device").cast(pa.string()).to_pylist(),
                                        t.column("sensor").cast(pa.string()).to_pylist(),
                                        t.column("quality").to_pylist(), t.column("value").to_pylist(), strict=True)
                if d == device and s == sensor and q == quality]


def _served_values(dev: ModbusLogger, unit: ModbusUnit, reg: ModbusRegister) -> list[tuple[int, float]]:
    """What the device really put on the line for one register and that reached the line: (time, value)."""
    out = []
    for s in dev.served:
        if s.delivered and s.unit_id == unit.unit_id and s.table == reg.table and \
                s.address <= reg.address < s.address + len(s.registers):
            off = reg.address - s.address
            out.append((s.time_ns, decode(s.registers[off:off + reg.width], reg)))
    return out


def _reader(port: str, out: _Collect, units=DEFAULT_UNITS, **kw) -> ModbusReader:
    kw = {"poll_interval_s": 0.02, "timeout_s": 0.15, "batch_max_age_s": 0.05, "reopen_initial_s": 0.02,
          "reopen_cap_s": 0.2, **kw}
    return ModbusReader(port, "plant1", "coldroom", units, BatchBuilder(StreamTable(), SeqAllocator(None)), out, **kw)


async def _until(cond, timeout_s: float = 15) -> None:
    async with asyncio.timeout(timeout_s):
        while not cond():
            await asyncio.sleep(0.01)


def _assert_exactly_what_was_served(out: _Collect, dev: ModbusLogger, units=DEFAULT_UNITS) -> None:
    for unit in units:
        for reg in unit.registers:
            got = out.values(unit.device, reg.sensor)
            want = [v for _, v in _served_values(dev, unit, reg)]
            assert len(got) == len(want) > 0, (unit.device, reg.sensor)
            assert got == pytest.approx(want, rel=1e-6, abs=1e-9)


def _assert_served_was_read_or_is_in_a_gap(out: _Collect, dev: ModbusLogger, gaps: list[Gap],
                                            units=DEFAULT_UNITS) -> int:
    """The campaign's oracle: every value served is read, in order, unless its gap covers it.

    An answer the line accepted just before the unplug can die in the pty with it: the device
    sent it, the reader never got it. That loss is honest only inside the unit's gap record.
    Returns how many answers went unread.
    """
    unread: set[int] = set()
    for unit in units:
        windows = [(g.start_ns, g.end_ns) for g in gaps if g.source.endswith("/" + unit.device)]
        for reg in unit.registers:
            got = out.values(unit.device, reg.sensor)
            i = skipped = 0
            for t, v in _served_values(dev, unit, reg):
                if i < len(got) and got[i] == pytest.approx(v, rel=1e-6, abs=1e-9):
                    i += 1
                    continue
                assert any(lo < t < hi for lo, hi in windows), (unit.device, reg.sensor, "served, unread, no gap", t)
                skipped += 1
                unread.add(t)
            assert i == len(got) > 0, (unit.device, reg.sensor, "read but never served", got[i:])
            assert skipped <= 1, (unit.device, reg.sensor, skipped)  # one answer at most was on the wire
    return len(unread)


async def test_every_value_served_over_rtu_is_read_decoded_and_scaled(tmp_path):
    out = _Collect()
    async with ModbusLogger(DEFAULT_UNITS, seed=5, link=tmp_path / "rs485") as dev:
        reader = _reader(dev.port, out)
        async with reader:
            stop = asyncio.Event()
            task = asyncio.create_task(reader.run(stop))
            await _until(lambda: reader.polls >= 20)
            stop.set()
            await task
    # three requests per poll (unit 1: input 0..2 and holding 10; unit 2: input 0..2), not five
    assert [(b.unit_id, b.table, b.start, b.count) for b in reader.blocks] == [
        (1, "holding", 10, 1), (1, "input", 0, 3), (2, "input", 0, 3)]
    _assert_exactly_what_was_served(out, dev)
    temps = out.values("coldroom-1", "temperature")
    assert all(2.0 < t < 8.0 for t in temps) and len(set(temps)) > 1
    assert all(-26 < v < -14 for v in out.values("coldroom-1", "setpoint_sp"))  # int16 below zero, scale 0.1
    c = reader.counters()
    assert c["qctrace_edge_modbus_reads_total"] == 3 * reader.polls
    assert c["qctrace_edge_modbus_timeouts_total"] == c["qctrace_edge_modbus_crc_errors_total"] == 0
    t = out.table()
    assert set(t.column("quality").to_pylist()) == {int(Quality.GOOD)}
    for device in ("coldroom-1", "coldroom-2"):
        mask = pa.compute.equal(t.column("device").cast(pa.string()), device)
        s = t.filter(mask).column("seq").to_pylist()
        assert sorted(s) == list(range(len(s)))


async def test_garbled_answers_and_silence_are_counted_never_read_and_a_silent_unit_becomes_a_gap(tmp_path):
    out = _Collect()
    async with ModbusLogger(DEFAULT_UNITS, seed=6, link=tmp_path / "rs485") as dev:
        reader = _reader(dev.port, out, unit_down_after=3)
        async with reader:
            stop = asyncio.Event()
            task = asyncio.create_task(reader.run(stop))
            await _until(lambda: reader.polls >= 3)
            dev.garble_responses(4)  # noise on the line: four answers fail their CRC
            await _until(lambda: reader.counters()["qctrace_edge_modbus_crc_errors_total"] >= 4)
            dev.mute(5, unit_id=2)  # unit 2 stops answering for five polls
            await _until(lambda: reader.stats[2].timeouts >= 5)
            await _until(lambda: len([i for i in out.items if isinstance(i, Gap)]) >= 1)
            polls = reader.polls
            await _until(lambda: reader.polls >= polls + 3)
            stop.set()
            await task
    c = reader.counters()
    assert c["qctrace_edge_modbus_crc_errors_total"] == 4
    assert reader.stats[2].timeouts == 5 and reader.stats[1].timeouts == 0
    _assert_exactly_what_was_served(out, dev)  # nothing garbled became a value, nothing was invented
    (gap,) = [i for i in out.items if isinstance(i, Gap)]
    assert gap.source == "plant1/coldroom/coldroom-2" and "not answering" in gap.reason
    assert gap.end_ns - gap.start_ns >= 5 * 0.15 * 1e9 * 0.9  # five timeouts of 0.15 s at least
    assert reader.outages[1].count == 0


async def test_an_unplugged_adapter_is_reopened_with_backoff_one_gap_per_unit_and_reads_resume(tmp_path):
    out = _Collect()
    async with ModbusLogger(DEFAULT_UNITS, seed=7, link=tmp_path / "rs485") as dev:
        reader = _reader(dev.port, out)
        async with reader:
            stop = asyncio.Event()
            task = asyncio.create_task(reader.run(stop))
            await _until(lambda: reader.polls >= 5)
            dev.unplug(after_next_answer=True)  # one answer is on the wire when the pty goes
            await _until(lambda: reader.reopen_failures >= 2)  # the link is gone: attempts fail, backing off
            dev.replug()
            await _until(lambda: reader.reopens >= 1)
            polls = reader.polls
            await _until(lambda: reader.polls >= polls + 5)
            stop.set()
            await task
    gaps = sorted((i for i in out.items if isinstance(i, Gap)), key=lambda g: g.source)
    assert _assert_served_was_read_or_is_in_a_gap(out, dev, gaps) == 1  # the answer the pty took with it
    assert [g.source for g in gaps] == ["plant1/coldroom/coldroom-1", "plant1/coldroom/coldroom-2"]
    assert all("lost" in g.reason and g.end_ns > g.start_ns for g in gaps)
    t = out.table()
    ts = t.column("ts").cast(pa.int64()).to_pylist()
    assert sum(t_ > max(g.end_ns for g in gaps) for t_ in ts) >= 5 * 3  # readings resumed after the replug


async def test_a_unit_that_refuses_an_address_gives_bad_readings_not_silence(tmp_path):
    wrong = (ModbusUnit(unit_id=1, device="coldroom-1", registers=(
        _reg("temperature", 0, table="input", type="float32"), _reg("moved", 40, table="holding"))),)
    out = _Collect()
    async with ModbusLogger(DEFAULT_UNITS, seed=8, link=tmp_path / "rs485") as dev:
        reader = _reader(dev.port, out, units=wrong)
        async with reader:
            stop = asyncio.Event()
            task = asyncio.create_task(reader.run(stop))
            await _until(lambda: reader.polls >= 5)
            stop.set()
            await task
    bad = out.values("coldroom-1", "moved", quality=int(Quality.BAD))
    assert len(bad) == reader.stats[1].exceptions >= 5 and all(math.isnan(v) for v in bad)
    assert out.values("coldroom-1", "moved") == []  # never a Good value
    assert len(out.values("coldroom-1", "temperature")) >= 5


async def test_a_missing_port_is_waited_for_or_a_reader_error_naming_it(tmp_path, caplog):
    reader = _reader(str(tmp_path / "no-adapter"), _Collect())
    reader.retry_missing = False
    with pytest.raises(ReaderError, match="no-adapter: cannot open the Modbus serial port"):
        async with reader:
            pass
    waiting = _reader(str(tmp_path / "no-adapter"), _Collect())  # by default: an unplugged adapter
    opening = asyncio.create_task(waiting.__aenter__())
    await asyncio.sleep(0.3)
    assert not opening.done() and any("modbus.waiting" in r.getMessage() for r in caplog.records)
    opening.cancel()
    with pytest.raises(asyncio.CancelledError):
        await opening

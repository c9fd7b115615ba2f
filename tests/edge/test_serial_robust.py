"""The serial reader on a real pty: noise, bad frames and an unplugged logger, against what was written."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import select
import termios
import threading
import tty

import pyarrow as pa
import pytest

from edge import BatchBuilder, SeqAllocator, SerialReader, StreamTable
from firmware_sim.serial_logger import PtyLogger, encode_frame
from qctrace.schema import Gap, Outage

T0_MS = 1793599200000
SOURCE = "coldchain/SHP-1/logger-01"


def _frame(seq: int) -> tuple[bytes, tuple]:
    temp, hum, door, batt = round(-20 + (seq * 7919 % 4000) / 100, 2), round((seq * 31) % 1000 / 10, 1), seq % 2, 3.6
    ts = T0_MS + 1000 * seq
    return encode_frame("logger-01", seq, ts, temp, hum, door, batt), (ts * 1_000_000, temp, hum, float(door), batt)


class _Collect:
    def __init__(self) -> None:
        self.items: list = []

    async def __call__(self, item) -> None:
        self.items.append(item)

    def gaps(self) -> list[Gap]:
        return [i for i in self.items if isinstance(i, Gap)]

    def frames(self) -> list[tuple]:
        """Readings regrouped into (ts, temperature, humidity, door, battery) per frame, in arrival order."""
        batches = [i for i in self.items if isinstance(i, pa.RecordBatch)]
        if not batches:
            return []
        t = pa.Table.from_batches(batches)
        ts = t.column("ts").cast(pa.int64()).to_pylist()
        sensors = t.column("sensor").cast(pa.string()).to_pylist()
        values = t.column("value").to_pylist()
        out: dict[int, dict[str, float]] = {}
        for k, s, v in zip(ts, sensors, values, strict=True):
            assert s not in out.setdefault(k, {}), f"two {s} readings at {k}"
            out[k][s] = v
        return [(k, d["temperature"], d["humidity"], d["door_open"], d["battery"]) for k, d in out.items()]


def _reader(port: str, publish, **kw) -> SerialReader:
    return SerialReader(port, "coldchain", "SHP-1", "logger-01", BatchBuilder(StreamTable(), SeqAllocator(None)),
                        publish, batch_max_age_s=0.05, **kw)


async def _until(cond, timeout_s: float) -> None:
    async with asyncio.timeout(timeout_s):
        while not cond():
            await asyncio.sleep(0.02)


def _write_all(fd: int, data: bytes) -> None:
    """Blocking writes to a non-blocking pty master: wait for room, never drop a byte."""
    view = memoryview(data)
    while view:
        select.select([], [fd], [], 1.0)
        try:
            n = os.write(fd, view[:4096])
        except BlockingIOError:
            continue
        view = view[n:]


async def test_ten_megabytes_of_noise_between_frames_every_frame_recovered_nothing_invented():
    rng = random.Random(20261124)
    master, slave = os.openpty()
    tty.setraw(slave, termios.TCSANOW)
    os.set_blocking(master, False)
    written: list[tuple] = []
    stream = bytearray()
    seq = 0
    while len(stream) < 10 * 2**20:
        stream += rng.randbytes(rng.randrange(0, 4000))
        raw, fields = _frame(seq)
        stream += raw
        written.append(fields)
        seq += 1
    stream += rng.randbytes(500)
    out = _Collect()
    reader = _reader(os.ttyname(slave), out)
    try:
        async with reader:
            stop = asyncio.Event()
            task = asyncio.create_task(reader.run(stop))
            writer = threading.Thread(target=_write_all, args=(master, bytes(stream)))
            writer.start()
            try:
                await _until(lambda: reader.frames >= len(written), 120)
            finally:
                writer.join()
                stop.set()
                await task
    finally:
        os.close(master)
        os.close(slave)
    assert len(stream) > 10 * 2**20 and len(written) > 4000
    assert out.frames() == written  # every frame, in order, with its exact values; no invented reading
    assert reader.frames == len(written)
    assert reader.decoder.garbage_bytes > 9 * 2**20
    assert sum(reader.rejected.values()) > 1000  # noise "frames" starting at a random "$" were refused
    assert out.gaps() == []


async def test_unplugged_logger_is_reopened_the_outage_is_one_gap_and_readings_resume(tmp_path):
    link = tmp_path / "by-id" / "logger-01"
    logger = PtyLogger("logger-01", link)
    out = _Collect()
    reader = _reader(str(link), out, reopen_initial_s=0.02, reopen_cap_s=0.2)
    sent = []
    try:
        async with reader:
            stop = asyncio.Event()
            task = asyncio.create_task(reader.run(stop))
            for s in range(10):
                raw, fields = _frame(s)
                assert logger.write(raw)
                sent.append(fields)
            await _until(lambda: reader.frames == 10, 10)
            logger.disconnect()  # the cable is pulled: the pty and the by-id link go away
            await _until(lambda: reader.outage.active, 10)
            for s in range(10, 15):
                assert not logger.write(_frame(s)[0])  # sent while unplugged: lost on the wire
            await asyncio.sleep(0.3)  # a few reopen attempts fail while the link is missing
            logger.reconnect()  # plugged back in: a new /dev/pts/N behind the same link
            for s in range(15, 25):
                raw, fields = _frame(s)
                assert logger.write(raw)
                sent.append(fields)
            await _until(lambda: reader.frames == 20, 10)
            stop.set()
            await task
    finally:
        logger.close()
    assert out.frames() == sent
    assert reader.reopens >= 1 and reader.outage.count == 1
    (gap,) = out.gaps()
    assert gap.source == SOURCE
    assert gap.start_ns == sent[9][0] and gap.end_ns == sent[10][0]  # last frame before, first after
    assert "lost" in gap.reason and "logger frames 10..14 not received" in gap.reason
    c = reader.counters()
    assert c["qctrace_edge_serial_outages_total"] == 1 and c["qctrace_edge_serial_frames_total"] == 20
    assert c["qctrace_edge_serial_frames_missed_total"] == 5  # by the logger's own frame numbers
    # The forwarder heard of the outage (from the last frame before it) before any frame after it,
    # and of its end only once the gap was on its way: an edge killed in between restarts its
    # restart gap from the outage's start (the OPC UA reader does the same).
    items = out.items
    opened = [k for k, i in enumerate(items) if isinstance(i, Outage) and not i.closed]
    closed = [k for k, i in enumerate(items) if isinstance(i, Outage) and i.closed]
    after = [k for k, i in enumerate(items) if isinstance(i, pa.RecordBatch)
             and max(i.column("ts").cast(pa.int64()).to_pylist()) >= sent[10][0]]
    assert len(opened) == 1 and items[opened[0]].since_ns == sent[9][0] and opened[0] < after[0]
    assert closed == [items.index(gap) + 1] and items[closed[0]].since_ns == sent[9][0]


async def test_a_logger_still_unplugged_when_the_reader_stops_leaves_an_open_ended_gap(tmp_path):
    link = tmp_path / "logger-01"
    logger = PtyLogger("logger-01", link)
    out = _Collect()
    reader = _reader(str(link), out, reopen_initial_s=0.02, reopen_cap_s=0.1)
    async with reader:
        stop = asyncio.Event()
        task = asyncio.create_task(reader.run(stop))
        logger.write(_frame(0)[0])
        await _until(lambda: reader.frames == 1, 10)
        logger.disconnect()
        await _until(lambda: reader.outage.active, 10)
        stop.set()
        await task
    (gap,) = out.gaps()
    assert gap.start_ns == _frame(0)[1][0] and gap.end_ns > gap.start_ns
    assert "still away when the reader stopped" in gap.reason
    assert len(out.frames()) == 1


async def test_bad_frames_are_counted_by_reason_and_logged_throttled_never_as_readings(caplog):
    master, slave = os.openpty()
    tty.setraw(slave, termios.TCSANOW)
    out = _Collect()
    reader = _reader(os.ttyname(slave), out, warn_interval_s=60)
    good = [_frame(s) for s in (0, 501, 502)]
    bad = bytearray()
    for s in range(1, 501):  # 500 frames each with one body byte changed: CRC mismatch
        raw = bytearray(_frame(s)[0])
        raw[10] ^= 0x01
        bad += raw
    other = encode_frame("logger-99", 1, T0_MS, 4.0, 50.0, 0, 3.6)  # right CRC, wrong device on this port
    caplog.set_level(logging.WARNING, logger="edge.serial")
    try:
        async with reader:
            stop = asyncio.Event()
            task = asyncio.create_task(reader.run(stop))
            await asyncio.to_thread(_write_all, master, good[0][0] + bytes(bad) + other + good[1][0] + good[2][0])
            await _until(lambda: reader.frames == 3, 10)
            stop.set()
            await task
    finally:
        os.close(master)
        os.close(slave)
    assert out.frames() == [g[1] for g in good]
    assert reader.rejected["crc"] == 500 and reader.rejected["device"] == 1
    assert reader.frames_missed == 500  # the logger numbered them: the line destroyed 1..500
    warnings = [r.getMessage() for r in caplog.records if r.getMessage().startswith("serial.rejected")]
    assert 1 <= len(warnings) <= 2, warnings  # one summary (and the final one at close), not 501 lines
    assert sum(int(w.split("crc=")[1].split()[0]) for w in warnings if "crc=" in w) == 500


def test_missing_port_error_names_it_and_says_what_failed(tmp_path):
    from qctrace.errors import ReaderError

    reader = _reader("/dev/serial/by-id/no-such-logger", _Collect())
    reader.retry_missing = False

    async def go(r) -> None:
        async with r:
            pass

    with pytest.raises(ReaderError, match=r"/dev/serial/by-id/no-such-logger: cannot open serial port"):
        asyncio.run(go(reader))
    not_a_terminal = tmp_path / "logger.txt"
    not_a_terminal.write_text("frames?")
    with pytest.raises(ReaderError, match=r"logger.txt: cannot open serial port"):  # there, but not a port: no wait
        asyncio.run(go(_reader(str(not_a_terminal), _Collect())))


async def test_a_logger_unplugged_when_the_edge_starts_is_waited_for_and_read_once_plugged(tmp_path, caplog):
    """The campaign killed an edge while its logger was unplugged; the restarted edge must wait for
    the port to come back, not exit."""
    link = tmp_path / "by-id" / "logger-01"
    logger = PtyLogger("logger-01", link)
    logger.disconnect()
    out = _Collect()
    reader = _reader(str(link), out, reopen_initial_s=0.02, reopen_cap_s=0.1)
    try:
        opening = asyncio.create_task(reader.__aenter__())
        await asyncio.sleep(0.5)
        assert not opening.done()  # still waiting, no error
        assert any("serial.waiting" in r.getMessage() for r in caplog.records)
        logger.reconnect()
        await asyncio.wait_for(opening, 10)
        stop = asyncio.Event()
        task = asyncio.create_task(reader.run(stop))
        sent = []
        for s in range(3):
            raw, fields = _frame(s)
            assert logger.write(raw)
            sent.append(fields)
        await _until(lambda: reader.frames == 3, 10)
        stop.set()
        await task
        await reader.__aexit__(None, None, None)
    finally:
        logger.close()
    assert out.frames() == sent

"""Serial edge: the frame decoder on a noisy line, the serial reader on a real pty, and Modbus RTU polling.

Runs alone: ``python bench/edge_serial.py [--noise-mb M] [--frames N] [--polls P] [--quick]``. Three parts,
each against a baseline measured in the same run:

1. ``FrameDecoder`` on ``--noise-mb`` MB of random bytes with ``--frames`` valid frames interleaved,
   fed in 4 KiB chunks as a UART delivers them, against the classic line reader (split on CRLF, check
   each line): throughput, and how many of the valid frames each recovers (the line reader loses every
   frame glued to noise that has no line end).
2. ``SerialReader`` reading the same stream from a real pty, against a bare ``os.read`` loop draining
   the same bytes from a pty: how much of the line's speed the reader keeps.
3. ``ModbusReader`` polling the simulated two-unit Modbus logger (three requests a poll) for
   ``--polls`` polls, against a bare pymodbus client issuing the same requests in a loop.

The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import random
import select
import sys
import tempfile
import termios
import time
import tty
from pathlib import Path

from edge.batcher import BatchBuilder, StreamTable
from edge.frames import FrameDecoder, parse_frame
from edge.modbus import ModbusReader
from edge.sequence import SeqAllocator
from edge.serial import SerialReader
from firmware_sim.modbus_device import DEFAULT_UNITS, ModbusLogger
from firmware_sim.serial_logger import encode_frame
from qctrace.errors import FrameError


def noisy_stream(noise_mb: float, frames: int, seed: int = 1) -> bytes:
    rng = random.Random(seed)
    mean_gap = int(noise_mb * 2**20 / frames)
    out = bytearray()
    for i in range(frames):
        out += rng.randbytes(rng.randrange(0, 2 * mean_gap + 1))
        out += encode_frame("logger-01", i, 1793599200000 + 1000 * i, 4.0 + (i % 50) / 10, 60.0, i % 2, 3.6)
    return bytes(out)


def bench_decoder(stream: bytes, frames: int) -> dict:
    t = time.perf_counter()
    dec = FrameDecoder("logger-01")
    got = 0
    for i in range(0, len(stream), 4096):
        got += len(dec.feed(stream[i:i + 4096]))
    ours = time.perf_counter() - t
    t = time.perf_counter()
    naive = 0
    last = None
    for line in stream.split(b"\r\n"):
        try:
            f = parse_frame(line + b"\r\n", "logger-01", last)
        except FrameError:
            continue
        last = f.seq
        naive += 1
    base = time.perf_counter() - t
    mb = len(stream) / 2**20
    return {"stream_mb": round(mb, 2), "decoder_mb_per_s": round(mb / ours, 1),
            "decoder_frames_recovered": got, "line_reader_mb_per_s": round(mb / base, 1),
            "line_reader_frames_recovered": naive, "frames_sent": frames,
            "decoder_ratio_vs_line_reader": round(base / ours, 3)}


def _raw_pty() -> tuple[int, int]:
    master, slave = os.openpty()
    tty.setraw(slave, termios.TCSANOW)
    os.set_blocking(master, False)
    return master, slave


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        select.select([], [fd], [], 1.0)
        try:
            view = view[os.write(fd, view[:4096]):]
        except BlockingIOError:
            continue


def _writer(fd: int, data: bytes) -> multiprocessing.Process:
    """The device writes from its own process, as a real logger does (a thread here would contend
    for the reader's GIL and measure that instead)."""
    return multiprocessing.get_context("fork").Process(target=_write_all, args=(fd, data), daemon=True)


def bench_pty_raw(stream: bytes) -> float:
    master, slave = _raw_pty()
    writer = _writer(master, stream)
    t = time.perf_counter()
    writer.start()
    n = 0
    while n < len(stream):
        select.select([slave], [], [], 1.0)
        n += len(os.read(slave, 65536))
    elapsed = time.perf_counter() - t
    writer.join()
    os.close(master)
    os.close(slave)
    return elapsed


async def bench_pty_reader(stream: bytes, frames: int) -> float:
    master, slave = _raw_pty()

    async def publish(_item) -> None:
        pass

    reader = SerialReader(os.ttyname(slave), "c", "s", "logger-01", BatchBuilder(StreamTable(), SeqAllocator(None)),
                          publish, batch_max_age_s=0.05)
    async with reader:
        stop = asyncio.Event()
        task = asyncio.create_task(reader.run(stop))
        writer = _writer(master, stream)
        t = time.perf_counter()
        writer.start()
        while reader.frames < frames:
            await asyncio.sleep(0.002)
        elapsed = time.perf_counter() - t
        stop.set()
        await task
    writer.join()
    os.close(master)
    os.close(slave)
    return elapsed


async def bench_modbus(polls: int, tmp: Path) -> dict:
    async def publish(_item) -> None:
        pass

    async with ModbusLogger(DEFAULT_UNITS, link=tmp / "rs485") as dev:
        reader = ModbusReader(dev.port, "p", "l", DEFAULT_UNITS, BatchBuilder(StreamTable(), SeqAllocator(None)),
                              publish, poll_interval_s=1e-6, timeout_s=0.5, batch_max_age_s=0.05)
        async with reader:
            t = time.perf_counter()
            for _ in range(polls):
                await reader.poll()
            ours = time.perf_counter() - t
            requests = sum(s.reads for s in reader.stats.values())
            # The baseline: the same requests through the same pymodbus client, nothing else.
            client = reader._client
            t = time.perf_counter()
            for _ in range(polls):
                for b in reader.blocks:
                    fn = client.read_holding_registers if b.table == "holding" else client.read_input_registers
                    rr = await fn(b.start, count=b.count, device_id=b.unit_id)
                    assert not rr.isError()
            raw = time.perf_counter() - t
    return {"modbus_polls": polls, "modbus_requests_per_s": round(requests / ours, 1),
            "modbus_raw_client_requests_per_s": round(polls * len(reader.blocks) / raw, 1),
            "modbus_ratio_vs_raw_client": round(raw / ours, 3),
            "modbus_readings_per_s": round(polls * sum(len(u.registers) for u in DEFAULT_UNITS) / ours, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--noise-mb", type=float, default=50.0, help="MB of random bytes on the line (default 50)")
    ap.add_argument("--frames", type=int, default=50_000, help="valid frames interleaved with the noise")
    ap.add_argument("--polls", type=int, default=500, help="Modbus polls of both units")
    ap.add_argument("--quick", action="store_true", help="a few seconds: 2 MB, 2,000 frames, 50 polls")
    a = ap.parse_args()
    if a.quick:
        a.noise_mb, a.frames, a.polls = 2.0, 2000, 50
    stream = noisy_stream(a.noise_mb, a.frames)
    asyncio.run(bench_pty_reader(noisy_stream(0.2, 200, seed=2), 200))  # warm-up: imports, first batch
    out: dict = {"machine": f"{platform.machine()} {os.cpu_count()} cpus, Python {platform.python_version()}"}
    out |= bench_decoder(stream, a.frames)
    raw = bench_pty_raw(stream)
    ours = asyncio.run(bench_pty_reader(stream, a.frames))
    mb = len(stream) / 2**20
    out |= {"pty_raw_read_mb_per_s": round(mb / raw, 1), "pty_reader_mb_per_s": round(mb / ours, 1),
            "pty_reader_frames_per_s": round(a.frames / ours, 1), "pty_ratio_vs_raw_read": round(raw / ours, 3)}
    with tempfile.TemporaryDirectory() as tmp:
        out |= asyncio.run(bench_modbus(a.polls, Path(tmp)))
    sys.stdout.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()

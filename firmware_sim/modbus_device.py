"""A Modbus RTU logger on a pseudo-terminal: pymodbus's RTU server behind a line we can break.

A Modbus server and a client both open a serial *path*, and a pty has only one, so the line is two
ptys with a relay between their master sides, as ``socat`` would make: the reader opens the
``line`` pty (behind a stable link, as ``/dev/serial/by-id`` gives), pymodbus's
``ModbusSerialServer`` opens the other. The relay is where the faults a real RS-485 line has are
injected: a garbled response (the CRC fails), a unit that does not answer (a timeout), and the
adapter unplugged and plugged back in.

Every read serves fresh values from a seeded signal per register, and every response is recorded
(``served``: unit, table, first address, the raw registers), so a test compares what the reader
stored with what the device really sent. Values are encoded here with ``struct``, independently of
the reader's decoding through pymodbus, so each checks the other.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import math
import os
import random
import struct
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusSerialServer
from pymodbus.simulator import DataType, SimData, SimDevice

from firmware_sim.serial_logger import PtyPort
from qctrace.config import ModbusRegister, ModbusUnit

READ_HOLDING, READ_INPUT = 3, 4


@dataclass(frozen=True, slots=True)
class Served:
    """One response the device put on the line (before any fault the line added)."""

    unit_id: int
    table: str
    address: int
    registers: tuple[int, ...]
    time_ns: int
    delivered: bool  # False when the line garbled or dropped it


def encode(value: float, reg: ModbusRegister) -> list[int]:
    """Engineering value to raw registers, as the device's firmware would."""
    raw = (value - reg.offset) / reg.scale
    if reg.type == "float32":
        hi, lo = struct.unpack(">HH", struct.pack(">f", raw))
        return [hi, lo] if reg.word_order == "big" else [lo, hi]
    n = round(raw)
    if reg.type == "int16":
        n = max(-32768, min(32767, n))
        return [n & 0xFFFF]
    return [max(0, min(65535, n))]


def decode(words: list[int] | tuple[int, ...], reg: ModbusRegister) -> float:
    """Raw registers back to the value (the test's independent reference for the reader)."""
    if reg.type == "float32":
        hi, lo = words if reg.word_order == "big" else (words[1], words[0])
        raw = struct.unpack(">f", struct.pack(">HH", hi, lo))[0]
    elif reg.type == "int16":
        raw = words[0] - 65536 if words[0] >= 32768 else words[0]
    else:
        raw = words[0]
    return raw * reg.scale + reg.offset


class _Signal:
    """A seeded, slowly varying value per register: a sine with noise around a level that suits its type."""

    def __init__(self, seed: int, unit_id: int, reg: ModbusRegister) -> None:
        self.rng = random.Random(f"{seed}/{unit_id}/{reg.table}/{reg.address}")
        self.k = 0
        self.level, self.amp = {"float32": (5.0, 2.0), "int16": (-20.0, 5.0), "uint16": (60.0, 10.0)}[reg.type]
        self.level += reg.offset  # engineering units, around the register's offset
        self.phase = self.rng.uniform(0, 2 * math.pi)

    def next(self) -> float:
        self.k += 1
        return self.level + self.amp * math.sin(self.k / 20 + self.phase) + self.rng.gauss(0, self.amp / 20)


class ModbusLogger:
    """The simulated device: ``async with ModbusLogger(units, link=...) as dev: dev.port``."""

    def __init__(self, units: tuple[ModbusUnit, ...] | list[ModbusUnit], *, seed: int = 1, link: Path | None = None,
                 baudrate: int = 19200) -> None:
        self.units = {u.unit_id: u for u in units}
        self.seed = seed
        self.baudrate = baudrate
        self.line = PtyPort(link)  # the host side: what the reader opens
        self._server_end = PtyPort(None)  # pymodbus's server opens this one
        self._signals = {(u.unit_id, r.table, r.address): _Signal(seed, u.unit_id, r)
                         for u in units for r in u.registers}
        self.served: list[Served] = []
        self._unplug_after_answer = False
        self.requests = 0
        self._garble = 0
        self._mute: dict[int | None, int] = {}
        self._server: ModbusSerialServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watched: list[int] = []

    @property
    def port(self) -> str:
        return self.line.port

    # ------------------------------------------------------------ faults

    def garble_responses(self, n: int) -> None:
        """The next ``n`` responses get one byte flipped on the wire: the reader's CRC check fails."""
        self._garble += n

    def mute(self, n: int, unit_id: int | None = None) -> None:
        """The next ``n`` requests (to ``unit_id``, or to any unit) get no answer, as from a unit
        that is busy or off the bus: the reader times out."""
        self._mute[unit_id] = self._mute.get(unit_id, 0) + n

    def unplug(self, after_next_answer: bool = False) -> None:
        """The USB adapter is pulled: the reader's pty goes away (EIO), its link too.

        ``after_next_answer`` pulls it just after the next answer went on the line, before the
        reader could read it: the answer was sent (``served`` says delivered) and is lost with the
        pty, the race a real unplug loses now and then.
        """
        if after_next_answer:
            self._unplug_after_answer = True
            return
        self._unwatch(self.line.fileno())
        self.line.disconnect()

    def replug(self) -> None:
        """Plugged back in: a new pty behind the same link."""
        self.line.reconnect()
        self._watch(self.line.fileno(), self._from_host)

    # ------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> ModbusLogger:
        self._loop = asyncio.get_running_loop()
        devices = [self._device(u) for u in self.units.values()]
        self._server = ModbusSerialServer(devices, port=self._server_end.path, baudrate=self.baudrate,
                                          ignore_missing_devices=True)
        await self._server.serve_forever(background=True)
        self._watch(self._server_end.fileno(), self._from_device)
        self._watch(self.line.fileno(), self._from_host)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for fd in list(self._watched):
            self._unwatch(fd)
        if self._server is not None:
            await self._server.shutdown()
        self.line.close()
        self._server_end.close()

    def _watch(self, fd: int, callback) -> None:
        if fd >= 0 and self._loop is not None:
            self._loop.add_reader(fd, callback)
            self._watched.append(fd)

    def _unwatch(self, fd: int) -> None:
        if fd in self._watched and self._loop is not None:
            self._loop.remove_reader(fd)
            self._watched.remove(fd)

    # ------------------------------------------------------------ the relay

    def _from_host(self) -> None:
        try:
            data = os.read(self.line.fileno(), 4096)
        except (BlockingIOError, OSError):
            return
        if not data:
            return
        for key in (data[0], None):
            if self._mute.get(key):
                self._mute[key] -= 1
                return
        self._server_end.send(data)

    def _from_device(self) -> None:
        try:
            data = os.read(self._server_end.fileno(), 4096)
        except (BlockingIOError, OSError):
            return
        if not data:
            return
        if self._garble:
            self._garble -= 1
            b = bytearray(data)
            b[len(b) // 2] ^= 0x5A
            data = bytes(b)
            if self.served:
                self.served[-1] = _undelivered(self.served[-1])
        if not self.line.send(data) and self.served:
            self.served[-1] = _undelivered(self.served[-1])
        if self._unplug_after_answer:
            self._unplug_after_answer = False
            self.unplug()

    # ------------------------------------------------------------ the registers

    def _device(self, unit: ModbusUnit) -> SimDevice:
        size = {t: max((r.address + r.width for r in unit.registers if r.table == t), default=1)
                for t in ("holding", "input")}
        bits = [SimData(0, count=1, values=False, datatype=DataType.BITS)]
        return SimDevice(unit.unit_id, simdata=(
            bits, list(bits),
            [SimData(0, count=size["holding"], values=0, datatype=DataType.REGISTERS)],
            [SimData(0, count=size["input"], values=0, datatype=DataType.REGISTERS)]),
            action=functools.partial(self._on_access, unit.unit_id))

    async def _on_access(self, unit_id: int, function_code: int, start_address: int, address: int, count: int,
                         registers: list[int], set_values: list[int] | list[bool] | None) -> ExcCodes | None:
        """pymodbus calls this before answering: fresh values into the registers being read."""
        if function_code not in (READ_HOLDING, READ_INPUT):
            return None
        self.requests += 1
        table = "holding" if function_code == READ_HOLDING else "input"
        for reg in self.units[unit_id].registers:
            if reg.table == table and address <= reg.address and reg.address + reg.width <= address + count:
                words = encode(self._signals[(unit_id, table, reg.address)].next(), reg)
                registers[reg.address - start_address: reg.address - start_address + reg.width] = words
        lo = address - start_address
        self.served.append(Served(unit_id, table, address, tuple(registers[lo:lo + count]), time.time_ns(), True))
        return None


def _undelivered(s: Served) -> Served:
    return Served(s.unit_id, s.table, s.address, s.registers, s.time_ns, False)


DEFAULT_UNITS = (
    ModbusUnit(unit_id=1, device="coldroom-1", registers=(
        ModbusRegister(sensor="temperature", address=0, table="input", type="float32"),
        ModbusRegister(sensor="humidity", address=2, table="input", type="uint16", scale=0.1),
        ModbusRegister(sensor="setpoint_sp", address=10, table="holding", type="int16", scale=0.1))),
    ModbusUnit(unit_id=2, device="coldroom-2", registers=(
        ModbusRegister(sensor="temperature", address=0, table="input", type="float32", word_order="little"),
        ModbusRegister(sensor="humidity", address=2, table="input", type="uint16", scale=0.1))),
)
"""A two-unit cold-room line, used when no register map is given."""


async def _serve(link: Path, seed: int, baudrate: int) -> None:
    async with ModbusLogger(DEFAULT_UNITS, seed=seed, link=link, baudrate=baudrate) as dev:
        sys.stdout.write(f"Modbus RTU line: {dev.port} (units {', '.join(map(str, dev.units))})\n")
        sys.stdout.flush()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()


def main() -> None:
    ap = argparse.ArgumentParser(description="A simulated two-unit Modbus RTU cold-room logger on a pty.")
    ap.add_argument("--link", type=Path, default=Path("/tmp/qctrace-modbus"), help="stable path to the line")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--baud", type=int, default=19200)
    a = ap.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(a.link, a.seed, a.baud))


if __name__ == "__main__":
    main()

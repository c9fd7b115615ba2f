"""Modbus RTU reader: polls the register map of one or more units on a serial line through pymodbus.

Registers that sit next to each other in the same table of the same unit are read together (up
to ``max_registers_per_read``, 125 being Modbus's own limit), so a unit with twenty values costs
one or two requests per poll, not twenty. Each value is decoded by its type (int16, uint16, or a
float32 over two registers in either word order), scaled, and stamped with the time its response
arrived: Modbus carries no source timestamp.

What goes wrong on a real line is counted, per unit, and never becomes a value: a request that
gets no answer (``timeouts``), an answer that arrives garbled (``crc_errors``: pymodbus discards a
frame whose CRC fails, so a request that saw bytes come back and still failed is one), an answer
of the wrong size. A unit that answers with a Modbus exception (say, an illegal address after a
firmware update moved its map) did answer: its values become readings of Bad quality with no value,
so the problem shows downstream instead of as silence. A unit that fails ``unit_down_after`` polls
in a row is "away"; when it answers again the silence becomes one ``Gap``. A port that goes away
(the adapter unplugged) makes every unit away and is reopened with capped exponential backoff and
jitter; each failed attempt is one ``reopen_failures``.

RTU has no transaction id: a response that arrives after its request timed out could be taken for
the answer to the next request. pymodbus clears its receive buffer before each request, and a
response whose register count differs from the request is refused; a late answer of the same size
to a different request cannot be told apart on any RTU line, so keep ``timeout_s`` above the
slowest unit's response time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from prometheus_client import Counter
from pymodbus.client import AsyncModbusSerialClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

from edge.backoff import exponential_backoff
from edge.base import Publish, Reader
from edge.batcher import BatchBuilder
from edge.outage import DeviceOutage, ThrottledWarning, wait_for_port
from qctrace.config import ModbusRegister, ModbusUnit
from qctrace.errors import ReaderError
from qctrace.schema import Quality

log = logging.getLogger(__name__)

READS = Counter("qctrace_edge_modbus_reads_total", "Modbus read requests answered", ["port", "unit"])
FAILURES = Counter("qctrace_edge_modbus_failures_total", "Modbus read requests failed, by reason",
                   ["port", "unit", "reason"])

_DATATYPE = {"int16": AsyncModbusSerialClient.DATATYPE.INT16, "uint16": AsyncModbusSerialClient.DATATYPE.UINT16,
             "float32": AsyncModbusSerialClient.DATATYPE.FLOAT32}


@dataclass(frozen=True, slots=True)
class ReadBlock:
    """One request: ``count`` registers of ``table`` from ``start``, holding these values."""

    unit_id: int
    table: str
    start: int
    count: int
    registers: tuple[ModbusRegister, ...]


def plan_reads(unit: ModbusUnit, max_count: int = 125) -> list[ReadBlock]:
    """Group a unit's registers into as few requests as possible without reading a hole or
    exceeding ``max_count`` registers per request (a hole may be an address the unit refuses)."""
    blocks: list[ReadBlock] = []
    for table in ("holding", "input"):
        regs = sorted((r for r in unit.registers if r.table == table), key=lambda r: r.address)
        group: list[ModbusRegister] = []
        for r in regs:
            if group:
                start, end = group[0].address, group[-1].address + group[-1].width
                if r.address != end or r.address + r.width - start > max_count:
                    blocks.append(_block(unit.unit_id, table, group))
                    group = []
            group.append(r)
        if group:
            blocks.append(_block(unit.unit_id, table, group))
    return blocks


def _block(unit_id: int, table: str, group: list[ModbusRegister]) -> ReadBlock:
    start = group[0].address
    return ReadBlock(unit_id, table, start, group[-1].address + group[-1].width - start, tuple(group))


def decode_register(words: list[int], reg: ModbusRegister) -> float:
    """The engineering value of one register map entry from its raw words."""
    raw = AsyncModbusSerialClient.convert_from_registers(words, _DATATYPE[reg.type], word_order=reg.word_order)
    return float(raw) * reg.scale + reg.offset


@dataclass
class UnitStats:
    reads: int = 0
    timeouts: int = 0
    crc_errors: int = 0
    bad_length: int = 0
    exceptions: int = 0
    failed_in_a_row: int = 0


class ModbusReader(Reader):
    name = "modbus"

    def __init__(self, port: str, site: str, line: str, units: tuple[ModbusUnit, ...] | list[ModbusUnit],
                 builder: BatchBuilder, publish: Publish, *, baudrate: int = 19200, poll_interval_s: float = 1.0,
                 timeout_s: float = 0.5, max_registers_per_read: int = 125, unit_down_after: int = 3,
                 reopen_initial_s: float = 0.05, reopen_cap_s: float = 2.0, warn_interval_s: float = 10.0,
                 batch_max_rows: int = 1000, batch_max_age_s: float = 0.25) -> None:
        super().__init__(builder, publish, batch_max_rows, batch_max_age_s)
        if not units:
            raise ReaderError(f"{port}: a Modbus line needs at least one unit in its register map")
        self.port = port
        self.baudrate = baudrate
        self.poll_interval_s = poll_interval_s
        self.timeout_s = timeout_s
        self.unit_down_after = unit_down_after
        self.units = {u.unit_id: u for u in units}
        self.blocks = [b for u in units for b in plan_reads(u, max_registers_per_read)]
        self._stream = {(u.unit_id, r.sensor): builder.streams.add(site, line, u.device, r.sensor)
                        for u in units for r in u.registers}
        self.stats = {u.unit_id: UnitStats() for u in units}
        self.outages = {u.unit_id: DeviceOutage(f"{site}/{line}/{u.device}", self.pending_gaps) for u in units}
        self._last_ts: dict[int, int] = {}
        self.polls = 0
        self.reopens = 0
        self.reopen_failures = 0
        self._client: AsyncModbusSerialClient | None = None
        self._backoff = (reopen_initial_s, reopen_cap_s)
        self.retry_missing = True  # wait for a port that is not there (False: raise at once)
        self._retry = exponential_backoff(initial_s=reopen_initial_s, cap_s=reopen_cap_s)
        self._next_poll = 0.0
        self._rx_since_tx = False
        self._warn = ThrottledWarning(log, "modbus.failed", f"port={port}", warn_interval_s)

    def counters(self) -> dict[str, int]:
        """Totals over the line's units, under their metric names (the Prometheus ones are per unit)."""
        s = self.stats.values()
        return {"qctrace_edge_modbus_reads_total": sum(u.reads for u in s),
                "qctrace_edge_modbus_timeouts_total": sum(u.timeouts for u in s),
                "qctrace_edge_modbus_crc_errors_total": sum(u.crc_errors for u in s),
                "qctrace_edge_modbus_bad_length_total": sum(u.bad_length for u in s),
                "qctrace_edge_modbus_exceptions_total": sum(u.exceptions for u in s),
                "qctrace_edge_modbus_outages_total": sum(o.count for o in self.outages.values()),
                "qctrace_edge_modbus_reopens_total": self.reopens}

    # ------------------------------------------------------------ the port

    def _trace(self, sending: bool, data: bytes) -> bytes:
        """pymodbus shows us the raw bytes: did anything come back since the request went out?"""
        if sending:
            self._rx_since_tx = False
        elif data:
            self._rx_since_tx = True
        return data

    async def _connect(self) -> AsyncModbusSerialClient | None:
        # retries=0 and no reconnect inside pymodbus: this reader counts every failed request and
        # owns the reopen policy (backoff with jitter, a gap per outage).
        client = AsyncModbusSerialClient(self.port, baudrate=self.baudrate, timeout=self.timeout_s, retries=0,
                                         reconnect_delay=0, name=f"qctrace:{self.port}", trace_packet=self._trace)
        if await client.connect():
            return client
        client.close()
        return None

    async def _open(self) -> None:
        if self.retry_missing:  # an adapter unplugged while the edge restarted: waited for
            await wait_for_port(self.port, self._backoff, "modbus")
        self._client = await self._connect()
        if self._client is None:
            raise ReaderError(f"{self.port}: cannot open the Modbus serial port (missing, or not a serial device?)")

    def _lost(self, why: str) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        self._retry = exponential_backoff(initial_s=self._backoff[0], cap_s=self._backoff[1])
        for uid, outage in self.outages.items():
            outage.lost(f"Modbus line {self.port} lost: {why}", self._last_ts.get(uid))
        log.warning("modbus.lost port=%s reason=%s", self.port, why)

    async def _try_reopen(self) -> None:
        await asyncio.sleep(next(self._retry))
        self._client = await self._connect()
        if self._client is None:
            self.reopen_failures += 1
            return
        self.reopens += 1
        self._next_poll = 0.0
        log.warning("modbus.reopened port=%s reopens=%d", self.port, self.reopens)

    # ------------------------------------------------------------ polling

    async def _read_once(self) -> None:
        if self._client is None or not self._client.connected:
            if self._client is not None:
                self._lost("the port closed")
            await self._try_reopen()
            return
        wait = self._next_poll - time.monotonic()
        if wait > 0:
            # Sleep in slices no longer than half a batch age, so the flush loop stays on time.
            await asyncio.sleep(min(wait, self.batch_max_age_s / 2))
            return
        self._next_poll = max(self._next_poll + self.poll_interval_s, time.monotonic())
        await self.poll()

    async def poll(self) -> None:
        """Read every block of every unit once."""
        self.polls += 1
        failed: set[int] = set()
        answered: set[int] = set()
        for block in self.blocks:
            client = self._client
            if client is None:
                return
            try:
                async with asyncio.timeout(self.timeout_s * 4 + 1):
                    rr = await (client.read_holding_registers if block.table == "holding"
                                else client.read_input_registers)(block.start, count=block.count,
                                                                   device_id=block.unit_id)
            except ConnectionException as exc:
                self._lost(str(exc))
                return
            except (ModbusIOException, TimeoutError) as exc:
                self._failed(block, "crc_errors" if self._rx_since_tx else "timeouts", exc)
                failed.add(block.unit_id)
                continue
            except ModbusException as exc:
                self._failed(block, "bad_length", exc)
                failed.add(block.unit_id)
                continue
            now = time.time_ns()
            if rr.isError():
                self.stats[block.unit_id].exceptions += 1
                FAILURES.labels(self.port, block.unit_id, "exception").inc()
                self._warn.add(f"unit{block.unit_id}.exception")
                self._add(block, None, now, f"exception code {getattr(rr, 'exception_code', '?')}")
                answered.add(block.unit_id)
                continue
            if len(rr.registers) != block.count:
                self._failed(block, "bad_length", f"{len(rr.registers)} registers for {block.count} asked")
                failed.add(block.unit_id)
                continue
            self.stats[block.unit_id].reads += 1
            READS.labels(self.port, block.unit_id).inc()
            self._add(block, rr.registers, now, "")
            answered.add(block.unit_id)
        for uid in self.units:
            st = self.stats[uid]
            if uid in failed:
                st.failed_in_a_row += 1
                if st.failed_in_a_row >= self.unit_down_after and self.outages[uid].lost(
                        f"Modbus unit {uid} on {self.port} not answering ({st.failed_in_a_row} polls)",
                        self._last_ts.get(uid)):
                    log.warning("modbus.unit_away port=%s unit=%d", self.port, uid)
            elif uid in answered:
                st.failed_in_a_row = 0
        self._added()

    def _failed(self, block: ReadBlock, reason: str, exc: object) -> None:
        st = self.stats[block.unit_id]
        setattr(st, reason, getattr(st, reason) + 1)
        FAILURES.labels(self.port, block.unit_id, reason).inc()
        self._warn.add(f"unit{block.unit_id}.{reason}")
        log.debug("modbus.failed port=%s unit=%d start=%d reason=%s detail=%s", self.port, block.unit_id,
                  block.start, reason, exc)

    def _add(self, block: ReadBlock, words: list[int] | None, ts: int, why_bad: str) -> None:
        uid = block.unit_id
        gap = self.outages[uid].close(ts)
        if gap is not None:
            log.warning("modbus.resumed port=%s unit=%d gap_s=%.3f", self.port, uid, (gap.end_ns - gap.start_ns) / 1e9)
        for reg in block.registers:
            stream = self._stream[(uid, reg.sensor)]
            if words is None:
                self.builder.add(stream, ts, float("nan"), int(Quality.BAD), ts)
                continue
            off = reg.address - block.start
            self.builder.add(stream, ts, decode_register(words[off:off + reg.width], reg), int(Quality.GOOD), ts)
        self._last_ts[uid] = ts

    async def __aexit__(self, *exc: object) -> None:
        for outage in self.outages.values():
            outage.abandon()
        await super().__aexit__(*exc)

    async def _close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        self._warn.maybe_emit(force=True)
        log.info("modbus.close port=%s polls=%d %s", self.port, self.polls,
                 " ".join(f"{k}={v}" for k, v in self.counters().items()))

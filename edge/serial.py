"""Serial reader: a cold-chain logger on a (pseudo-)terminal through pyserial.

Bytes are read in chunks (``read`` with a short timeout in a worker thread; pyserial's
``readline`` makes one syscall per byte and has no bound) and fed to ``FrameDecoder``. Each good
frame becomes one reading per logger channel, stamped with the frame's own timestamp. A frame that
fails any check is counted by reason (``rejected``, and the Prometheus counters below) and never
becomes a reading; the rejects are logged as one throttled warning, not one line per frame.

A logger that disappears (unplugged: end of file, EIO, the port gone) is reopened with capped
exponential backoff and jitter; open a stable path such as ``/dev/serial/by-id/…`` so the
replugged device is found again. The outage becomes one ``Gap`` record, from the last frame before
it to the first after it, with the logger's own frame numbers that never arrived in its reason.
"""

from __future__ import annotations

import asyncio
import logging
import select

import serial
from prometheus_client import Counter

from edge.backoff import exponential_backoff
from edge.base import Publish, Reader
from edge.batcher import BatchBuilder, StreamTable, fixed_lot
from edge.frames import FrameDecoder
from edge.outage import DeviceOutage, ThrottledWarning, wait_for_port
from edge.sequence import SeqAllocator
from qctrace.config import SerialConfig
from qctrace.errors import ReaderError
from qctrace.schema import Quality

log = logging.getLogger(__name__)

CHANNELS = ("temperature", "humidity", "door_open", "battery")
_READ_MAX = 65536

FRAMES = Counter("qctrace_edge_serial_frames_total", "Valid logger frames decoded", ["port"])
REJECTED = Counter("qctrace_edge_serial_frames_rejected_total", "Logger frames refused, by reason", ["port", "reason"])
OUTAGES = Counter("qctrace_edge_serial_outages_total", "Times a serial device went away", ["port"])


class _KeepQueuedInput(serial.Serial):
    """pyserial empties the input queue when it opens a port; frames the device already sent and
    the OS already holds are data, so keep them (a replugged logger talks before we reopen)."""

    def _reset_input_buffer(self) -> None:
        pass


class SerialReader(Reader):
    name = "serial"

    def __init__(self, port: str, site: str, line: str, device: str, builder: BatchBuilder, publish: Publish, *,
                 lot: str | None = None, baudrate: int = 115200, batch_max_rows: int = 1000,
                 batch_max_age_s: float = 0.25, reopen_initial_s: float = 0.05, reopen_cap_s: float = 2.0,
                 warn_interval_s: float = 10.0) -> None:
        super().__init__(builder, publish, batch_max_rows, batch_max_age_s)
        self.port = port
        self.baudrate = baudrate
        self.decoder = FrameDecoder(device)
        scope = f"{site}/{line}/{device}"
        self._streams = [builder.streams.add(site, line, device, ch, lot_scope=scope) for ch in CHANNELS]
        if lot is not None:
            fixed_lot(builder.streams, scope, lot)
        self._ser: serial.Serial | None = None
        self.frames = 0
        self.frames_missed = 0
        self.reopens = 0
        self.outage = DeviceOutage(scope, self.pending_gaps)
        self._last_ts: int | None = None
        self._last_seq: int | None = None
        self._seq_before_outage: int | None = None
        self._backoff = (reopen_initial_s, reopen_cap_s)
        self._retry = exponential_backoff(initial_s=reopen_initial_s, cap_s=reopen_cap_s)
        self._rejects = ThrottledWarning(log, "serial.rejected", f"port={port}", warn_interval_s)
        self._seen_by_reason: dict[str, int] = {}
        self._seen_garbage = 0
        self.retry_missing = True  # wait for a port that is not there (False: raise at once)

    @property
    def rejected(self) -> dict[str, int]:
        """Frames refused so far, by reason (crc, framing, range, device, duplicate, oversized, …)."""
        return dict(self.decoder.rejected)

    def counters(self) -> dict[str, int]:
        """This reader's counters under their metric names (Prometheus has them too, labelled by port)."""
        return {"qctrace_edge_serial_frames_total": self.frames,
                "qctrace_edge_serial_frames_rejected_total": sum(self.decoder.rejected.values()),
                "qctrace_edge_serial_frames_missed_total": self.frames_missed,
                "qctrace_edge_serial_garbage_bytes_total": self.decoder.garbage_bytes,
                "qctrace_edge_serial_outages_total": self.outage.count,
                "qctrace_edge_serial_reopens_total": self.reopens}

    def _connect(self) -> serial.Serial:
        return _KeepQueuedInput(self.port, self.baudrate, timeout=self.batch_max_age_s / 2)

    async def _open(self) -> None:
        """A port that is not there (a logger unplugged while the edge restarted) is waited for
        (``retry_missing = False`` raises instead); one that is there but cannot be opened
        (permissions, not a terminal) is an error retrying cannot cure."""
        if self.retry_missing:
            await wait_for_port(self.port, self._backoff, "serial")
        try:
            self._ser = self._connect()
        except (serial.SerialException, OSError) as exc:
            raise ReaderError(f"{self.port}: cannot open serial port: {exc}") from exc

    def _lost(self, exc: BaseException) -> None:
        """The device went away: close it; ``_read_once`` retries with backoff until it is back."""
        if self._ser is not None:
            self._ser.close()
            self._ser = None
        self.decoder.reset()
        self._retry = exponential_backoff(initial_s=self._backoff[0], cap_s=self._backoff[1])
        if self.outage.lost(f"serial device {self.port} lost: {exc}", self._last_ts):
            self._seq_before_outage = self._last_seq
            OUTAGES.labels(self.port).inc()
        log.warning("serial.lost port=%s reason=%s", self.port, exc)

    async def _try_reopen(self) -> None:
        """One attempt per call, so ``run`` can notice ``stop`` between attempts."""
        await asyncio.sleep(next(self._retry))
        try:
            self._ser = self._connect()
        except (serial.SerialException, OSError):
            return
        self.reopens += 1
        log.warning("serial.reopened port=%s reopens=%d", self.port, self.reopens)

    def _read_available(self, ser: serial.Serial) -> bytes:
        """Wait (bounded) until bytes are there, then take exactly those.

        ``Serial.read(n)`` keeps collecting until its timeout and, if the device vanishes
        meanwhile, raises and drops what it had collected; reading only what is waiting never
        holds bytes that an unplug could take away.
        """
        ready, _, _ = select.select([ser.fileno()], [], [], self.batch_max_age_s / 2)
        if not ready:
            return b""
        n = ser.in_waiting
        if n == 0:
            raise serial.SerialException("device reports readiness to read but has no data (unplugged)")
        data = bytearray(ser.read(min(n, _READ_MAX)))
        # A terminal hands over at most a few KiB a read: keep taking what has arrived meanwhile (one
        # worker-thread round trip per 64 KiB, not per 4 KiB). Whatever goes wrong now is reported by
        # the next call; the bytes already taken are returned, never dropped.
        try:
            while len(data) < _READ_MAX and (n := ser.in_waiting):
                data += ser.read(min(n, _READ_MAX - len(data)))
        except (serial.SerialException, OSError):
            pass
        return bytes(data)

    async def _read_once(self) -> None:
        if self._ser is None:
            await self._try_reopen()
            return
        try:
            data = await asyncio.to_thread(self._read_available, self._ser)
        except (serial.SerialException, OSError) as exc:
            self._lost(exc)
            return
        if not data:
            return
        frames = self.decoder.feed(data)
        self._count_rejects()
        if not frames:
            return
        if self.outage.active:
            self._end_outage(frames[0].ts_ms * 1_000_000, frames[0].seq)
        good = Quality.GOOD
        prev = self._last_seq
        for f in frames:
            if prev is not None and f.seq > prev + 1:
                self.frames_missed += f.seq - prev - 1  # the logger's own count: frames that never arrived whole
            prev = f.seq
            ts = f.ts_ms * 1_000_000
            for stream, value in zip(self._streams, (f.temperature, f.humidity, f.door_open, f.battery),
                                     strict=True):
                self.builder.add(stream, ts, float(value), good)
        self.frames += len(frames)
        FRAMES.labels(self.port).inc(len(frames))
        self._last_ts = frames[-1].ts_ms * 1_000_000
        self._last_seq = frames[-1].seq
        self._added()

    def _end_outage(self, first_ts: int, first_seq: int) -> None:
        before = self._seq_before_outage
        if before is not None and first_seq > before + 1:
            detail = f"logger frames {before + 1}..{first_seq - 1} not received"
        elif before is not None and first_seq <= before:
            detail = "the logger restarted its frame count"
        else:
            detail = ""
        gap = self.outage.close(first_ts, detail)
        if gap is not None:
            log.warning("serial.resumed port=%s gap_s=%.3f %s", self.port, (gap.end_ns - gap.start_ns) / 1e9, detail)

    def _count_rejects(self) -> None:
        """Counter deltas per reason since the last feed, for the metrics and the throttled log."""
        dec = self.decoder
        if dec.rejected != self._seen_by_reason:
            for reason, n in dec.rejected.items():
                prev = self._seen_by_reason.get(reason, 0)
                if n > prev:
                    REJECTED.labels(self.port, reason).inc(n - prev)
                    self._rejects.add(reason, n - prev)
            self._seen_by_reason = dict(dec.rejected)
        if dec.garbage_bytes != self._seen_garbage:
            self._rejects.add("garbage_bytes", dec.garbage_bytes - self._seen_garbage)
            self._seen_garbage = dec.garbage_bytes

    async def __aexit__(self, *exc: object) -> None:
        self.outage.abandon()
        await super().__aexit__(*exc)

    async def _close(self) -> None:
        if self._ser is not None:
            self._ser.close()
            self._ser = None
        self._rejects.maybe_emit(force=True)
        if self.decoder.rejected or self.decoder.garbage_bytes:
            log.info("serial.close port=%s frames=%d rejected=%s garbage_bytes=%d", self.port, self.frames,
                     dict(self.decoder.rejected), self.decoder.garbage_bytes)


def serial_readers(cfg: SerialConfig, streams: StreamTable, seqs: SeqAllocator, publish: Publish, *,
                   batch_max_rows: int = 1000, batch_max_age_s: float = 0.25) -> list[Reader]:
    """One reader per configured port (``[[edge.serial.devices]]``): framed loggers and Modbus RTU lines."""
    from edge.modbus import ModbusReader

    retry = {"reopen_initial_s": cfg.reopen_initial_s, "reopen_cap_s": cfg.reopen_cap_s,
             "warn_interval_s": cfg.warn_interval_s, "batch_max_rows": batch_max_rows,
             "batch_max_age_s": batch_max_age_s}
    out: list[Reader] = []
    for d in cfg.devices:
        builder = BatchBuilder(streams, seqs)
        if d.protocol == "modbus":
            out.append(ModbusReader(d.port, d.site, d.line, d.units, builder, publish, baudrate=d.baudrate,
                                    poll_interval_s=d.poll_interval_s, timeout_s=d.timeout_s,
                                    max_registers_per_read=d.max_registers_per_read,
                                    unit_down_after=d.unit_down_after, **retry))
        else:
            out.append(SerialReader(d.port, d.site, d.line, d.device or "", builder, publish, lot=d.lot,
                                    baudrate=d.baudrate, **retry))
    return out

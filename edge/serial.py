"""Serial reader: a cold-chain logger on a (pseudo-)terminal through pyserial.

Bytes are read in chunks (``read`` with a short timeout in a worker thread; pyserial's
``readline`` makes one syscall per byte and has no bound) and fed to ``FrameDecoder``. Each good
frame becomes one reading per logger channel, stamped with the frame's own timestamp.

A logger that disappears (unplugged: end of file, EIO, the port gone) is reopened with capped
exponential backoff; open a stable path such as ``/dev/serial/by-id/…`` so the replugged device
is found again. Not yet here: Modbus RTU.
"""

from __future__ import annotations

import asyncio
import logging
import select

import serial

from edge.backoff import exponential_backoff
from edge.base import Publish, Reader
from edge.batcher import BatchBuilder, fixed_lot
from edge.frames import FrameDecoder
from qctrace.errors import ReaderError
from qctrace.schema import Quality

log = logging.getLogger(__name__)

CHANNELS = ("temperature", "humidity", "door_open", "battery")


class _KeepQueuedInput(serial.Serial):
    """pyserial empties the input queue when it opens a port; frames the device already sent and
    the OS already holds are data, so keep them (a replugged logger talks before we reopen)."""

    def _reset_input_buffer(self) -> None:
        pass


class SerialReader(Reader):
    name = "serial"

    def __init__(self, port: str, site: str, line: str, device: str, builder: BatchBuilder, publish: Publish, *,
                 lot: str | None = None, baudrate: int = 115200, batch_max_rows: int = 1000,
                 batch_max_age_s: float = 0.25) -> None:
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
        self.reopens = 0
        self._retry = exponential_backoff(initial_s=0.05, cap_s=2.0)

    def _connect(self) -> serial.Serial:
        return _KeepQueuedInput(self.port, self.baudrate, timeout=self.batch_max_age_s / 2)

    async def _open(self) -> None:
        try:
            self._ser = self._connect()
        except (serial.SerialException, OSError) as exc:
            raise ReaderError(f"{self.port}: cannot open serial port: {exc}") from exc

    def _lost(self) -> None:
        """The device went away: close it; ``_read_once`` retries with backoff until it is back."""
        if self._ser is not None:
            self._ser.close()
            self._ser = None
        self.decoder.reset()
        self._retry = exponential_backoff(initial_s=0.05, cap_s=2.0)
        log.warning("serial.lost port=%s", self.port)

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
        return ser.read(min(n, 65536))

    async def _read_once(self) -> None:
        if self._ser is None:
            await self._try_reopen()
            return
        try:
            data = await asyncio.to_thread(self._read_available, self._ser)
        except (serial.SerialException, OSError):
            self._lost()
            return
        if not data:
            return
        good = Quality.GOOD
        for f in self.decoder.feed(data):
            ts = f.ts_ms * 1_000_000
            for stream, value in zip(self._streams, (f.temperature, f.humidity, f.door_open, f.battery),
                                     strict=True):
                self.builder.add(stream, ts, float(value), good)
            self.frames += 1
        self._added()

    async def _close(self) -> None:
        if self._ser is not None:
            self._ser.close()
            self._ser = None
        if self.decoder.rejected or self.decoder.garbage_bytes:
            log.info("serial.close port=%s frames=%d rejected=%s garbage_bytes=%d", self.port, self.frames,
                     dict(self.decoder.rejected), self.decoder.garbage_bytes)

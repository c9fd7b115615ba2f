"""Serial reader: a cold-chain logger on a (pseudo-)terminal through pyserial.

Bytes are read in chunks (``read`` with a short timeout in a worker thread; pyserial's
``readline`` makes one syscall per byte and has no bound) and fed to ``FrameDecoder``. Each good
frame becomes one reading per logger channel, stamped with the frame's own timestamp.

Not yet here: reopen with backoff after unplug, Modbus RTU.
"""

from __future__ import annotations

import asyncio
import logging

import serial

from edge.base import Publish, Reader
from edge.batcher import BatchBuilder, fixed_lot
from edge.frames import FrameDecoder
from qctrace.errors import ReaderError
from qctrace.schema import Quality

log = logging.getLogger(__name__)

CHANNELS = ("temperature", "humidity", "door_open", "battery")


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

    async def _open(self) -> None:
        try:
            self._ser = serial.Serial(self.port, self.baudrate, timeout=self.batch_max_age_s / 2)
        except serial.SerialException as exc:
            raise ReaderError(f"{self.port}: cannot open serial port: {exc}") from exc

    async def _read_once(self) -> None:
        assert self._ser is not None
        try:
            data = await asyncio.to_thread(self._ser.read, 4096)
        except serial.SerialException as exc:
            raise ReaderError(f"{self.port}: serial read failed: {exc}") from exc
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
        if self.decoder.rejected or self.decoder.garbage_bytes:
            log.info("serial.close port=%s frames=%d rejected=%s garbage_bytes=%d", self.port, self.frames,
                     dict(self.decoder.rejected), self.decoder.garbage_bytes)

"""A cold-chain temperature logger on a pseudo-terminal, speaking the framed protocol of PROTOCOL.md.

The logger owns the pty's master side and keeps the slave side open itself, as a USB serial adapter
stays present whether or not anyone listens; a reader opens the slave path with pyserial. This is
the simulator's own, independent implementation of the frame format: the edge decoder is written
separately against PROTOCOL.md, so each checks the other.
"""

from __future__ import annotations

import binascii
import os
import termios
import tty

PROTOCOL_TAG = "QC1"
MAX_FRAME = 128


def encode_frame(logger: str, seq: int, ts_ms: int, temperature: float, humidity: float, door_open: int,
                 battery: float) -> bytes:
    """One frame, e.g. ``$QC1,logger-01,42,1793599200000,4.52,60.3,0,3.600*8C1F\\r\\n``."""
    body = f"{PROTOCOL_TAG},{logger},{seq},{ts_ms},{temperature:.2f},{humidity:.1f},{door_open:d},{battery:.3f}"
    crc = binascii.crc_hqx(body.encode("ascii"), 0xFFFF)  # CRC-16/CCITT-FALSE
    frame = f"${body}*{crc:04X}\r\n".encode("ascii")
    if len(frame) > MAX_FRAME:
        raise ValueError(f"frame of {len(frame)} bytes exceeds the protocol's {MAX_FRAME}")
    return frame


class PtyLogger:
    """The device side of one logger: frames written to a pty master, non-blocking."""

    def __init__(self, logger: str) -> None:
        self.logger = logger
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave, termios.TCSANOW)  # no echo, no CR/LF translation: bytes as sent
        os.set_blocking(self._master, False)
        self.path = os.ttyname(self._slave)
        self.seq = 0
        self.frames_written = 0
        self.frames_dropped = 0

    def write(self, frame: bytes) -> bool:
        """Write one whole frame; False (and counted) when the pty buffer is full, as a UART overruns.

        A partial write is completed blocking-free by retrying the remainder, so a frame is either
        entirely on the line or not at all: the ground truth must only list frames that were sent.
        """
        try:
            n = os.write(self._master, frame)
        except BlockingIOError:
            self.frames_dropped += 1
            return False
        while n < len(frame):
            try:
                n += os.write(self._master, frame[n:])
            except BlockingIOError:
                continue
        self.frames_written += 1
        return True

    def write_raw(self, data: bytes) -> None:
        """Line noise, for fault injection: bytes that are not frames."""
        os.write(self._master, data)

    def close(self) -> None:
        for fd in (self._master, self._slave):
            try:
                os.close(fd)
            except OSError:
                pass

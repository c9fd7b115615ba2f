"""A cold-chain temperature logger on a pseudo-terminal, speaking the framed protocol of PROTOCOL.md.

The logger owns the pty's master side and keeps the slave side open itself, as a USB serial adapter
stays present whether or not anyone listens; a reader opens the slave. When ``link`` is given the
logger also keeps a stable symlink to its current pty, as udev's ``/dev/serial/by-id`` does, so a
reader finds it again after an unplug (``disconnect``) and replug (``reconnect``) moved it.

This is the simulator's own, independent implementation of the frame format: the edge decoder is
written separately against PROTOCOL.md, so each checks the other.
"""

from __future__ import annotations

import array
import binascii
import contextlib
import fcntl
import os
import termios
import tty
from pathlib import Path

import numpy as np

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


def damage(frame: bytes, kind: str, rng: np.random.Generator) -> bytes:
    """What a noisy line does to a frame, for the labelled frame faults.

    ``corrupt_frames``: one byte of the body changed (the CRC no longer matches);
    ``partial_frames``: the frame cut short, no terminator (the next ``$`` resynchronises);
    ``oversized_frames``: a run of noise with a ``$`` and no terminator *before* the intact frame.
    """
    if kind == "corrupt_frames":
        b = bytearray(frame)
        i = int(rng.integers(1, len(frame) - 7))
        b[i] = (b[i] + 1 + int(rng.integers(0, 250))) % 256 or 1
        return bytes(b)
    if kind == "partial_frames":
        return frame[: int(rng.integers(2, len(frame) - 3))]
    if kind == "oversized_frames":
        noise = bytes(int(x) for x in rng.integers(0x20, 0x7F, 3 * MAX_FRAME))
        return b"$" + noise.replace(b"$", b"#") + frame
    raise ValueError(kind)


class PtyPort:
    """The device end of a serial line on a pseudo-terminal: plug (``reconnect``), unplug
    (``disconnect``), and non-blocking writes that drop what the line cannot take, as a UART
    overruns. The Modbus device simulator relays its server's line through one of these too."""

    def __init__(self, link: Path | None = None) -> None:
        self.link = link
        self._master = self._slave = -1
        self.path = ""
        self.reconnect()

    @property
    def connected(self) -> bool:
        return self._master >= 0

    def fileno(self) -> int:
        """The master side (what the device writes to and reads what the host sent from); -1 unplugged."""
        return self._master

    def reconnect(self) -> None:
        """Plug in: a new pty (a new /dev/pts path) and the stable link pointed at it."""
        if self.connected:
            return
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave, termios.TCSANOW)  # no echo, no CR/LF translation: bytes as sent
        os.set_blocking(self._master, False)
        self.path = os.ttyname(self._slave)
        if self.link is not None:
            self.link.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.link.with_name(self.link.name + ".new")
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(self.path)
            os.replace(tmp, self.link)

    def unread(self) -> int:
        """Bytes sent but not yet read by whoever has the line open (FIONREAD on our slave end)."""
        if not self.connected:
            return 0
        buf = array.array("i", [0])
        fcntl.ioctl(self._slave, termios.FIONREAD, buf)
        return int(buf[0])

    def disconnect(self) -> None:
        """Unplug: the pty goes away; a reader that has it open sees end-of-file or EIO."""
        for fd in (self._master, self._slave):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._master = self._slave = -1
        if self.link is not None:
            self.link.unlink(missing_ok=True)

    @property
    def port(self) -> str:
        """What a reader should open: the stable link if there is one."""
        return str(self.link) if self.link is not None else self.path

    def send(self, data: bytes) -> bool:
        """Write without blocking; True only if every byte went on the line."""
        if not self.connected:
            return False
        try:
            n = os.write(self._master, data)
        except (BlockingIOError, OSError):
            n = 0
        return n == len(data)

    def close(self) -> None:
        self.disconnect()


class PtyLogger(PtyPort):
    """The device side of one logger: frames written to a pty master, non-blocking."""

    def __init__(self, logger: str, link: Path | None = None, baudrate: int | None = None) -> None:
        self.logger = logger
        self.baudrate = baudrate
        self.seq = 0
        self.frames_written = 0
        self.frames_dropped = 0
        super().__init__(link)

    def pacing_s(self, n_bytes: int) -> float:
        """Time the bytes take on the wire at the configured baud rate (8N1: 10 bits a byte)."""
        return 0.0 if not self.baudrate else n_bytes * 10 / self.baudrate

    def write(self, data: bytes) -> bool:
        """Write one frame's bytes; True only if all of them went on the line.

        Never blocks: when nobody drains the line and its buffer fills, the frame is cut short
        (a UART overrun), counted as dropped and reported False, so ground truth lists only
        frames that were sent whole.
        """
        if not self.send(data):
            self.frames_dropped += 1
            return False
        self.frames_written += 1
        return True

"""Decoder for the logger frame protocol of ``firmware_sim/PROTOCOL.md``, written from the spec.

A 16-bit CRC lets about one random frame in 65,536 through, so a frame must pass every check
before it becomes readings: start marker, bounded length, terminator, CRC-16/CCITT-FALSE, field
count, protocol tag, expected device, numeric fields in physical range, and a per-device sequence
number that is not a repeat (a lower one means the logger restarted, which is
allowed). Any failure drops only the leading ``$`` and searches again, so a
valid frame that follows garbage (even garbage containing ``$``) is still recovered. The buffer
never holds more than one maximal frame: there is no unbounded ``readline()``.
"""

from __future__ import annotations

import binascii
import math
from collections import Counter
from dataclasses import dataclass

from qctrace.errors import FrameError

MAX_FRAME = 128
TAG = "QC1"
MAX_TS_MS = (2**63 - 1) // 1_000_000
"""The latest time a reading can carry (timestamp[ns], 2262-04-11): a later one is no clock at all.
An earlier wrong clock (1970, 2200) is kept: the reading is still evidence, in its own date's partition."""

_RANGES = {
    "temperature": (-80.0, 120.0),
    "humidity": (0.0, 100.0),
    "battery": (0.0, 10.0),
}


@dataclass(frozen=True, slots=True)
class Frame:
    device: str
    seq: int
    ts_ms: int
    temperature: float
    humidity: float
    door_open: int
    battery: float


def parse_frame(raw: bytes, device: str | None = None, last_seq: int | None = None) -> Frame:
    """Check and parse one complete frame (``$`` … ``\\r\\n``); raises ``FrameError``."""
    if len(raw) > MAX_FRAME:
        raise FrameError("oversized", f"{len(raw)} bytes > {MAX_FRAME}")
    if not raw.startswith(b"$") or not raw.endswith(b"\r\n"):
        raise FrameError("framing")
    star = raw.rfind(b"*")
    if star < 0 or len(raw) - star != 7:
        raise FrameError("framing", "no *XXXX checksum before CRLF")
    body = raw[1:star]
    try:
        want = int(raw[star + 1 : star + 5], 16)
    except ValueError:
        raise FrameError("framing", "checksum is not hex") from None
    got = binascii.crc_hqx(body, 0xFFFF)
    if got != want:
        raise FrameError("crc", f"frame says {want:04X}, computed {got:04X}")
    try:
        fields = body.decode("ascii").split(",")
    except UnicodeDecodeError:
        raise FrameError("encoding") from None
    if len(fields) != 8 or fields[0] != TAG:
        raise FrameError("fields", f"{len(fields)} fields, tag {fields[0]!r}")
    _, dev, seq_s, ts_s, temp_s, hum_s, door_s, batt_s = fields
    if device is not None and dev != device:
        raise FrameError("device", f"frame from {dev!r} on {device!r}'s port")
    try:
        seq, ts_ms, door = int(seq_s), int(ts_s), int(door_s)
        temp, hum, batt = float(temp_s), float(hum_s), float(batt_s)
    except ValueError:
        raise FrameError("fields", "a numeric field does not parse") from None
    for name, v in (("temperature", temp), ("humidity", hum), ("battery", batt)):
        lo, hi = _RANGES[name]
        if not (math.isfinite(v) and lo <= v <= hi):
            raise FrameError("range", f"{name}={v} outside [{lo}, {hi}]")
    if door not in (0, 1) or seq < 0 or not 0 < ts_ms <= MAX_TS_MS:
        raise FrameError("range", f"door={door} seq={seq} ts={ts_ms}")
    if last_seq is not None and seq == last_seq:
        raise FrameError("duplicate", f"seq {seq} again")
    return Frame(dev, seq, ts_ms, temp, hum, door, batt)


class FrameDecoder:
    """Byte stream in, checked frames out; counts what it had to throw away, by reason."""

    def __init__(self, device: str | None = None) -> None:
        self.device = device
        self.last_seq: int | None = None
        self.rejected: Counter[str] = Counter()
        self.garbage_bytes = 0
        self._buf = bytearray()

    def reset(self) -> None:
        """Drop a partial frame (the line was cut); the sequence check carries on."""
        self._buf.clear()

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        out: list[Frame] = []
        buf = self._buf
        while True:
            start = buf.find(b"$")
            if start < 0:
                self.garbage_bytes += len(buf)
                buf.clear()
                break
            if start:
                self.garbage_bytes += start
                del buf[:start]
            end = buf.find(b"\n", 0, MAX_FRAME)
            if end < 0:
                if len(buf) >= MAX_FRAME:
                    self.rejected["oversized"] += 1
                    del buf[:1]
                    continue
                break  # an incomplete frame: wait for more bytes
            raw = bytes(buf[: end + 1])
            try:
                frame = parse_frame(raw, self.device, self.last_seq)
            except FrameError as exc:
                self.rejected[exc.reason] += 1
                del buf[:1]  # resync: the next "$" may start a good frame inside this one
                continue
            del buf[: end + 1]
            self.last_seq = frame.seq
            out.append(frame)
        return out

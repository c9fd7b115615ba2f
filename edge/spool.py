"""The edge's durable spool: every payload is on disk before the reader moves on, and leaves only
when ingest has committed it.

Records go to append-only segment files ``seg-<first rid>.qsp``; each record is

    length u32 | crc32 u32 (of rid and payload) | rid u64 | payload

written with one ``write`` and made durable with ``fdatasync`` before ``append`` returns. Record ids
(``rid``) increase by one per record and are never reused: after a crash the spool resumes above
the highest rid on disk or in ``release.json``, whichever is higher.

Release is by rid, in any order; a segment is deleted once every record in it is released and it
is no longer being written. ``release.json`` (written atomically, lazily) holds the lowest rid not
yet released and the few released above it, so a restart skips what was acknowledged before the
crash; a record released after the last write of that file is sent once more after a restart, and
ingest drops its rows as duplicates by (source, seq).

On open, a torn last record (a crash mid-append: short, or a bad checksum) is cut off and logged.
Its payload was never acknowledged to anyone, so cutting it loses nothing that was promised.

When the spool is full, ``policy`` decides: ``block`` raises ``SpoolFull`` (the forwarder waits
for acknowledgements, which slows the readers), ``drop_oldest`` deletes the oldest segment and
hands its unreleased payloads to ``on_drop`` so the caller can record exactly what was lost.

When the *filesystem* is full before the spool is (ENOSPC, EDQUOT), ``append`` raises
``SpoolDiskFull``: whatever part of the record reached the file is cut off again, no rid is
consumed, and every record accepted before stays readable. The disk may get room back from
outside the spool (a log rotated, a ballast removed), so the caller retries with a backoff
instead of waiting for an acknowledgement only (see ``edge.forward``).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import struct
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from qctrace.durable import atomic_write, fsync_dir
from qctrace.errors import SpoolError, SpoolFull

log = logging.getLogger(__name__)

_REC = struct.Struct("<IIQ")
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_SUFFIX = ".qsp"
Policy = Literal["block", "drop_oldest"]


class SpoolDiskFull(SpoolError):
    """The filesystem under the spool has no room (ENOSPC or EDQUOT) although the spool is under
    its own limit. Transient: nothing accepted before is lost, and the same append can be retried.

    (A ``SpoolError`` and not a ``SpoolFull``: a full spool frees room only when ingest
    acknowledges, a full disk may also free up by itself, so the forwarder waits differently.)
    """

    def __init__(self, path: Path, err: int, doing: str) -> None:
        self.path = path
        self.errno = err
        self.errno_name = errno.errorcode.get(err, str(err))
        super().__init__(f"spool {path}: {os.strerror(err)} ({self.errno_name}) while {doing}; the records"
                         " already spooled are intact, new data is held in memory and the append retried:"
                         " free space on that filesystem")


@dataclass(slots=True)
class _Segment:
    path: Path
    first_rid: int
    size: int = 0
    live: dict[int, tuple[int, int]] = field(default_factory=dict)  # rid -> (offset of payload, length)
    records: int = 0
    created: float = field(default_factory=time.time)


class Spool:
    def __init__(self, directory: Path, *, max_bytes: int = 1 << 30, segment_bytes: int = 16 << 20,
                 policy: Policy = "block", fsync: bool = True,
                 on_drop: Callable[[list[bytes]], None] | None = None) -> None:
        if policy not in ("block", "drop_oldest"):
            raise SpoolError(f"spool policy must be 'block' or 'drop_oldest', not {policy!r}")
        if segment_bytes > max_bytes:
            raise SpoolError(f"spool segment_bytes ({segment_bytes}) must not exceed max_bytes ({max_bytes})")
        self.dir = directory
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.policy = policy
        self.fsync = fsync
        self.on_drop = on_drop
        self.segments: list[_Segment] = []
        self.dropped_records = 0
        self.truncated_bytes = 0
        self._released_below = 0
        self._released_above: set[int] = set()  # released out of order, above the watermark
        self._state_dirty = False
        self._fd: int | None = None
        self.next_rid = 0
        self._open()

    # -- opening and recovery ------------------------------------------------------------------

    @property
    def _state_path(self) -> Path:
        return self.dir / "release.json"

    def _open(self) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SpoolError(f"cannot create the spool directory {self.dir}: {exc.strerror}") from None
        if self._state_path.exists():
            try:
                state = json.loads(self._state_path.read_text())
                self._released_below = int(state["released_below"])
                self._released_above = {int(r) for r in state.get("released_above", ())}
            except (ValueError, KeyError, TypeError) as exc:
                raise SpoolError(f"{self._state_path}: unreadable spool state ({exc}); move it away to"
                                 " resend everything still spooled") from None
        self.next_rid = self._released_below
        paths = sorted(self.dir.glob(f"seg-*{_SUFFIX}"))
        for i, path in enumerate(paths):
            last = i == len(paths) - 1
            seg = self._scan(path, last)
            if seg.live or last:  # the last one stays: its name and length carry the next rid
                self.segments.append(seg)
            else:
                path.unlink()
        for seg in self.segments:
            self.next_rid = max(self.next_rid, seg.first_rid + seg.records)
        if self.segments:
            log.info("spool.open dir=%s pending=%d bytes=%d next_rid=%d", self.dir, self.depth, self.bytes,
                     self.next_rid)

    def _scan(self, path: Path, last: bool) -> _Segment:
        first = int(path.stem.split("-")[1])
        seg = _Segment(path, first, created=path.stat().st_mtime)
        data = path.read_bytes()
        off = 0
        while off < len(data):
            if off + _REC.size > len(data):
                break
            length, crc, rid = _REC.unpack_from(data, off)
            end = off + _REC.size + length
            if end > len(data) or zlib.crc32(data[off + 8:end]) != crc:
                break
            seg.records = rid - first + 1
            if rid >= self._released_below and rid not in self._released_above:
                seg.live[rid] = (off + _REC.size, length)
            off = end
        if off < len(data):
            cut = len(data) - off
            self.truncated_bytes += cut
            kind = "torn last record" if last else "damaged record"
            log.warning("spool.truncate file=%s offset=%d bytes=%d (%s)", path.name, off, cut, kind)
            with open(path, "r+b") as fh:
                fh.truncate(off)
                os.fsync(fh.fileno())
        seg.size = off
        return seg

    # -- appending ------------------------------------------------------------------------------

    @property
    def bytes(self) -> int:
        return sum(s.size for s in self.segments)

    @property
    def depth(self) -> int:
        """Records written and not yet released."""
        return sum(len(s.live) for s in self.segments)

    def oldest_age_s(self, now: float | None = None) -> float:
        """Age of the oldest segment that still holds an unreleased record (0 when empty)."""
        for s in self.segments:
            if s.live:
                return max(0.0, (time.time() if now is None else now) - s.created)
        return 0.0

    def append(self, make: Callable[[int], bytes]) -> int:
        """Write ``make(rid)`` durably and return its rid. The payload embeds the rid (see qctrace.wire)."""
        rid = self.next_rid
        payload = make(rid)
        need = _REC.size + len(payload)
        if need > self.segment_bytes:
            raise SpoolError(f"a record of {need} bytes is larger than a spool segment ({self.segment_bytes})")
        self._make_room(need)
        seg = self._active(need)
        crc = zlib.crc32(payload, zlib.crc32(_REC.pack(0, 0, rid)[8:]))
        rec = _REC.pack(len(payload), crc, rid)
        try:
            n = os.write(self._fd, rec + payload)
            if n != len(rec) + len(payload):
                raise OSError(28, "short write")
            if self.fsync:
                os.fdatasync(self._fd)
        except OSError as exc:
            # Cut off whatever part of the record reached the file (were this to fail too, the next
            # open would cut it: a bad checksum). The rid is not used up: nothing was promised.
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, seg.size)
            if exc.errno in _DISK_FULL:
                raise SpoolDiskFull(seg.path, exc.errno, f"appending record {rid}") from None
            raise SpoolError(f"cannot write to the spool {seg.path}: {exc.strerror or exc}") from None
        seg.live[rid] = (seg.size + _REC.size, len(payload))
        seg.size += need
        seg.records += 1
        self.next_rid = rid + 1
        return rid

    def _make_room(self, need: int) -> None:
        while self.bytes + need > self.max_bytes:
            full = [s for s in self.segments if s is not self._current()]
            if self.policy == "block" or not full:
                raise SpoolFull(f"spool {self.dir} is full ({self.bytes} of {self.max_bytes} bytes, {self.depth}"
                                " records waiting for ingest to commit them)")
            oldest = full[0]
            payloads = [self.read(rid) for rid in sorted(oldest.live)]
            self.dropped_records += len(payloads)
            log.error("spool.drop_oldest file=%s records=%d", oldest.path.name, len(payloads))
            self._delete(oldest)
            if self.on_drop is not None and payloads:
                self.on_drop(payloads)

    def _current(self) -> _Segment | None:
        return self.segments[-1] if self.segments and self._fd is not None else None

    def _active(self, need: int) -> _Segment:
        seg = self._current()
        if seg is not None and seg.size + need <= self.segment_bytes:
            return seg
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            if seg is not None and not seg.live:
                self._delete(seg)
        if self.segments and not self.segments[-1].live and self.segments[-1].size == 0:
            self._delete(self.segments[-1])
        path = self.dir / f"seg-{self.next_rid:020d}{_SUFFIX}"
        if self.segments and self.segments[-1].path == path:  # reopened after recovery: keep appending
            seg = self.segments[-1]
        else:
            seg = _Segment(path, self.next_rid)
            self.segments.append(seg)
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            fsync_dir(self.dir)
        except OSError as exc:
            if exc.errno in _DISK_FULL:
                raise SpoolDiskFull(path, exc.errno, "creating a segment") from None
            raise SpoolError(f"cannot open a spool segment in {self.dir}: {exc.strerror}") from None
        return seg

    # -- reading and releasing -------------------------------------------------------------------

    def pending(self) -> list[int]:
        """Unreleased rids, oldest first."""
        return [rid for s in self.segments for rid in sorted(s.live)]

    def read(self, rid: int) -> bytes:
        for s in self.segments:
            loc = s.live.get(rid)
            if loc is not None:
                with open(s.path, "rb") as fh:
                    fh.seek(loc[0])
                    return fh.read(loc[1])
        raise SpoolError(f"record {rid} is not in the spool (already released?)")

    def release(self, rids: Iterable[int]) -> int:
        """Forget records ingest has committed; returns how many were still held."""
        n = 0
        for rid in rids:
            for s in self.segments:
                if s.live.pop(rid, None) is not None:
                    n += 1
                    self._released_above.add(rid)
                    break
        if n:
            current = self._current()
            for s in [s for s in self.segments if not s.live and s is not current]:
                self._delete(s)
            low = min((min(s.live) for s in self.segments if s.live), default=self.next_rid)
            self._released_below = low
            self._released_above = {r for r in self._released_above if r > low}
            self._state_dirty = True
        return n

    def _delete(self, seg: _Segment) -> None:
        self.segments.remove(seg)
        seg.path.unlink(missing_ok=True)

    def save_state(self) -> None:
        """Persist the release watermark (cheap; called by the forwarder about once a second)."""
        if self._state_dirty:
            atomic_write(self._state_path, json.dumps({"released_below": self._released_below,
                                                       "released_above": sorted(self._released_above)}).encode())
            self._state_dirty = False

    def close(self) -> None:
        with contextlib.suppress(SpoolError, OSError):
            self.save_state()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

"""Per-source sequence numbers that are never reused, even across a crash.

A hi/lo allocator: the next ``block`` numbers of a source are reserved on disk (atomic replace
plus fsync) before any of them is handed out. After a crash the reader resumes above the last
reservation, so a number may be skipped but never issued twice; ``(source, seq)`` stays unique.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


class SeqAllocator:
    def __init__(self, path: Path | None, block: int = 1_000_000) -> None:
        """``path=None`` keeps reservations in memory only (tests, replay)."""
        self.path = path
        self.block = block
        self._next: dict[str, int] = {}
        self._reserved: dict[str, int] = {}
        if path is not None and path.exists():
            self._reserved = {k: int(v) for k, v in json.loads(path.read_text()).items()}
            self._next = dict(self._reserved)

    def take(self, source: str, n: int) -> int:
        """Reserve ``n`` consecutive numbers for ``source``; returns the first."""
        first = self._next.get(source, 0)
        end = first + n
        if end > self._reserved.get(source, 0):
            # On disk first: a reservation that failed to persist (a full disk) must not be used,
            # or a crash after it would hand the same numbers out again.
            reserved = {**self._reserved, source: end + self.block}
            self._persist(reserved)
            self._reserved = reserved
        self._next[source] = end
        return first

    def _persist(self, reserved: dict[str, int]) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump(reserved, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

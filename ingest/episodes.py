"""Flags to anomaly episodes: consecutive flagged readings of one sensor become one episode.

State lives in arrays indexed like the detector's sensors; the grouping is the ``episodes``
kernel. Only the few rows where an episode opens are looked at from Python (to note the lot).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from ingest.detect import kernels
from qctrace.schema import flag_names


@dataclass(frozen=True, slots=True)
class Episode:
    sensor: str
    start_ns: int
    end_ns: int
    flags: int
    min_value: float
    max_value: float
    readings: int
    lot: str | None

    @property
    def rules(self) -> str:
        return flag_names(self.flags)


@dataclass(frozen=True, slots=True)
class EpisodeOpened:
    """An episode that opened in the last batch and is still open: alarms are raised on it without
    waiting for its end (``flags`` are the rules seen so far)."""

    sensor: str
    start_ns: int
    flags: int
    lot: str | None


class EpisodeTracker:
    def __init__(self, capacity: int = 64) -> None:
        self._cap = 0
        self.opened: list[EpisodeOpened] = []  # of the last update(), still open at its end
        self._open_lot: dict[int, str | None] = {}
        self._grow(capacity)

    def _grow(self, capacity: int) -> None:
        def g(name: str, dtype, fill) -> None:
            arr = np.full(capacity, fill, dtype=dtype)
            if self._cap:
                arr[: self._cap] = getattr(self, name)
            setattr(self, name, arr)

        g("is_open", np.bool_, False)
        g("start", np.int64, 0)
        g("last", np.int64, 0)
        g("mask", np.uint32, 0)
        g("vmin", np.float64, np.inf)
        g("vmax", np.float64, -np.inf)
        g("nflag", np.int64, 0)
        self._cap = capacity

    def update(self, idx: np.ndarray, batch: pa.RecordBatch, flags: np.ndarray, keys: list[str]) -> list[Episode]:
        """Feed one flagged batch; returns the episodes that closed in it (``opened``: those that opened)."""
        n = len(idx)
        self.opened = []
        if n == 0:
            return []
        need = int(idx.max()) + 1
        if need > self._cap:
            self._grow(max(need, 2 * self._cap))
        ts = kernels.readonly(batch.column("ts").cast(pa.int64()).to_numpy())
        values = kernels.readonly(batch.column("value").to_numpy(zero_copy_only=False))
        flags = kernels.readonly(flags)
        out = [np.empty(n, dtype=t) for t in (np.int64, np.int64, np.int64, np.uint32, np.float64, np.float64,
                                               np.int64, np.int64)]
        opened = np.zeros(n, dtype=np.uint8)
        k = kernels.episodes(idx, ts, flags, values, self.is_open, self.start, self.last, self.mask, self.vmin,
                             self.vmax, self.nflag, *out, opened)
        closed = list(zip(*(a[:k].tolist() for a in out), strict=True))
        # Openings and closures are sparse; walk them in row order so a sensor that opens, closes
        # and reopens within one batch keeps each episode's own lot.
        lots = batch.column("lot")
        marks = [(int(r), 0, None) for r in np.flatnonzero(opened)] + [(c[7], 1, c) for c in closed]
        marks.sort(key=lambda m: (m[0], m[1]))
        result: list[Episode] = []
        for row, kind, c in marks:
            if kind == 0:
                self._open_lot[int(idx[row])] = lots[row].as_py()
            else:
                s, start, end, mask, vmin, vmax, cnt, _ = c
                result.append(Episode(keys[s], start, end, mask, vmin, vmax, cnt, self._open_lot.pop(s, None)))
        still = {int(idx[r]): int(ts[r]) for r in np.flatnonzero(opened)}
        self.opened = [EpisodeOpened(keys[s], t, int(self.mask[s]), self._open_lot.get(s)) for s, t in still.items()
                       if self.is_open[s] and self.start[s] == t]
        return result

    def close_all(self, keys: list[str]) -> list[Episode]:
        """Close every open episode (at shutdown): its end is its last flagged reading."""
        out = []
        for s in np.flatnonzero(self.is_open[: len(keys)]):
            s = int(s)
            out.append(Episode(keys[s], int(self.start[s]), int(self.last[s]), int(self.mask[s]),
                               float(self.vmin[s]), float(self.vmax[s]), int(self.nflag[s]),
                               self._open_lot.pop(s, None)))
            self.is_open[s] = False
        return out

"""Device clocks that jump: a source whose timestamps leave the plant's clock is reported, never dropped.

A reading carries two times: ``ts`` from the device's clock and ``recv_ts`` from the edge's. Their
difference is latency for a device with a good clock, and suddenly minutes for one whose clock was
set wrong (a battery change, a time-zone slip, a technician's hand). Both readings are kept; what
changes is that the skew is *seen*: a warning names the source and its offset, ``skews`` says
which sources are off now (for health checks), ``episodes`` keeps the recent ones, and the rows
are marked in the mask ``check`` returns (ingest keeps them from advancing its data clock, which a
clock minutes ahead would otherwise push past every other sensor's stale timer).

The reference is the plant's clock as the edge sees it: ``ts ≈ ts₀ + rate · (recv_ts − recv₀)``,
learned from all sources over the first ``warm_up_s`` of receive time and refined from every
batch's unskewed rows. ``rate`` is 1 in a plant; a simulator running ``--speed 20`` has rate 20 and
a fixed start date, which is why the check is against the learned line and not ``|ts − recv_ts|``
itself. A row is off when its distance from the line exceeds ``bound_s``.

A source's run of off rows becomes an episode only once it has lasted ``confirm_s`` of receive
time: readings an OPC UA server hands back from history after an outage arrive in one burst with
old times, and are late, not skewed. Limits: nothing is judged during warm-up, and a clock that
was already wrong when ingest first saw it is learned as right if it is the only source.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from qctrace.schema import source_keys

log = logging.getLogger(__name__)

_NS = 1_000_000_000


@dataclass(slots=True)
class ClockSkewEpisode:
    """One source's clock off the plant's: ``offset_s`` ahead (positive) or behind (negative)."""

    source: str
    offset_s: float
    first_ts: int  # the device's time of its first off reading (as the device stamped it)
    last_ts: int
    since_recv: int  # receive time of the first off reading
    last_recv: int
    readings: int
    confirmed: bool = False
    ended: bool = False


class ClockWatch:
    def __init__(self, bound_s: float = 60.0, *, warm_up_s: float = 2.0, confirm_s: float = 1.0,
                 keep_episodes: int = 100) -> None:
        if bound_s <= 0 or warm_up_s <= 0 or confirm_s < 0:
            raise ValueError(f"clock watch: bound_s ({bound_s}) and warm_up_s ({warm_up_s}) must be > 0,"
                             f" confirm_s ({confirm_s}) >= 0")
        self.bound_ns = bound_s * _NS
        self.warm_up_ns = warm_up_s * _NS
        self.confirm_ns = confirm_s * _NS
        self.readings_skewed = 0  # rows of confirmed episodes
        self.episodes: deque[ClockSkewEpisode] = deque(maxlen=keep_episodes)
        self._open: dict[str, ClockSkewEpisode] = {}
        self._p0: tuple[int, int] | None = None  # (recv, ts) the line goes through
        self.rate: float | None = None

    @property
    def skews(self) -> dict[str, float]:
        """Sources whose clock is off now, with the offset in seconds."""
        return {s: e.offset_s for s, e in self._open.items() if e.confirmed}

    def check(self, batch: pa.RecordBatch) -> np.ndarray:
        """Rows of ``batch`` (READING_SCHEMA) whose source time is off the plant's clock."""
        ts = batch.column("ts").cast(pa.int64()).to_numpy()
        recv = batch.column("recv_ts").cast(pa.int64()).to_numpy()
        off = np.zeros(len(ts), dtype=np.bool_)
        if len(ts) == 0 or not self._learned(ts, recv):
            return off
        p_recv, p_ts = self._p0
        d_recv = (recv - p_recv).astype(np.float64)
        res = (ts - p_ts).astype(np.float64) - self.rate * d_recv
        off = np.abs(res) > self.bound_ns
        good = ~off
        if good.any():
            dr = float(np.median(d_recv[good]))
            if dr >= self.warm_up_ns:  # move the line through this batch, smoothly
                target = self.rate + float(np.median(res[good])) / dr
                self.rate += 0.2 * (target - self.rate)
        if off.any() or self._open:
            self._episodes(batch, off, res, ts, recv)
        return off

    def _learned(self, ts: np.ndarray, recv: np.ndarray) -> bool:
        """Warm-up: a first point, then the rate once ``warm_up_s`` of receive time has passed."""
        if self.rate is not None:
            return True
        point = (int(np.median(recv)), int(np.median(ts)))
        if self._p0 is None:
            self._p0 = point
            return False
        dr = point[0] - self._p0[0]
        if dr < self.warm_up_ns:
            return False
        rate = (point[1] - self._p0[1]) / dr
        if rate <= 0:  # times going backwards as a whole (a replay after live data): start again
            self._p0 = point
            return False
        self.rate = rate
        log.info("ingest.clock_learned rate=%.4f", rate)
        return True

    def _episodes(self, batch: pa.RecordBatch, off: np.ndarray, res: np.ndarray, ts: np.ndarray,
                  recv: np.ndarray) -> None:
        src = np.asarray(source_keys(batch).to_pylist(), dtype=object)
        present = set(src.tolist())
        for name in sorted({*src[off].tolist(), *(s for s in self._open if s in present)}):
            rows = np.flatnonzero(src == name)
            rows = rows[np.argsort(recv[rows], kind="stable")]
            bad = rows[off[rows]]
            ep = self._open.get(name)
            if len(bad):
                if ep is None:
                    ep = self._open[name] = ClockSkewEpisode(name, 0.0, int(ts[bad[0]]), 0, int(recv[bad[0]]), 0, 0)
                ep.offset_s = round(float(np.median(res[bad])) / _NS, 3)
                ep.last_ts, ep.last_recv = int(ts[bad[-1]]), int(recv[bad[-1]])
                ep.readings += len(bad)
                if ep.confirmed:
                    self.readings_skewed += len(bad)
                elif ep.last_recv - ep.since_recv >= self.confirm_ns:
                    ep.confirmed = True
                    self.readings_skewed += ep.readings
                    self.episodes.append(ep)
                    log.warning("ingest.clock_skew source=%s offset_s=%+.1f readings=%d: the device's clock is off"
                                " the plant's; its readings are kept with the times it sent", name, ep.offset_s,
                                ep.readings)
            if ep is not None and not off[rows[-1]]:  # its latest reading is on time again
                del self._open[name]
                ep.ended = True
                if ep.confirmed:
                    log.warning("ingest.clock_skew_end source=%s offset_s=%+.1f readings=%d lasted_s=%.1f", name,
                                ep.offset_s, ep.readings, (ep.last_recv - ep.since_recv) / _NS)
                else:
                    log.info("ingest.late_readings source=%s readings=%d offset_s=%+.1f (one burst: late, not a"
                             " skewed clock)", name, ep.readings, ep.offset_s)

"""Device trouble shared by the serial readers: outages that become gap records, and warnings that
a noisy line cannot turn into a log flood.

A pulled cable or a rebooting logger must leave a mark downstream (a ``Gap``), or the silence reads
as "nothing happened"; a line that picks up noise rejects thousands of frames a minute, and one log
line per frame would bury everything else, so rejects are summed and reported at most once per
interval (each reject is still counted, and logged at DEBUG).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass

from edge.backoff import exponential_backoff
from qctrace.schema import Gap, Outage

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Open:
    lost_ns: int
    reason: str
    last_ts: int | None


class DeviceOutage:
    """Tracks at most one open outage of one source and writes its records to ``out`` (the
    reader's ``pending_gaps``, published in order before its next batch).

    When the device goes away, an open ``Outage`` marker (from the last reading before the loss)
    goes to the forwarder, which keeps it on disk; when it is back, the ``Gap`` follows, then the
    marker that closes the outage. The gap runs from the source time of the last reading before
    the loss (or the wall-clock time of the loss when none was seen) to that of the first reading
    after it, as ``Gap`` documents. The marker covers the moment a reader publishes the first
    batch after the outage before its gap: an edge killed then restarts its restart gap from the
    outage's start, not from that batch.
    """

    def __init__(self, source: str, out: list[Gap | Outage]) -> None:
        self.source = source
        self.count = 0
        self._out = out
        self._open: _Open | None = None

    @property
    def active(self) -> bool:
        return self._open is not None

    def lost(self, reason: str, last_ts: int | None) -> bool:
        """The device went away; True when this starts a new outage (not a failed retry)."""
        if self._open is not None:
            return False
        self._open = _Open(time.time_ns(), reason, last_ts)
        self.count += 1
        if last_ts is not None:
            self._out.append(Outage(self.source, last_ts))
        return True

    def close(self, first_ts: int, detail: str = "") -> Gap | None:
        """The first reading after the outage arrived (source time ``first_ts``): its gap, recorded."""
        o = self._open
        if o is None:
            return None
        start = o.last_ts if o.last_ts is not None else o.lost_ns
        return self._record(Gap(self.source, start, max(first_ts, start), o.reason + (f"; {detail}" if detail else "")))

    def abandon(self) -> Gap | None:
        """The reader stops while the device is still away: the gap ends now (wall clock)."""
        o = self._open
        if o is None:
            return None
        start = o.last_ts if o.last_ts is not None else o.lost_ns
        return self._record(Gap(self.source, start, max(time.time_ns(), start),
                                o.reason + "; still away when the reader stopped"))

    def _record(self, gap: Gap) -> Gap:
        o, self._open = self._open, None
        self._out.append(gap)
        if o is not None and o.last_ts is not None:
            self._out.append(Outage(self.source, o.last_ts, closed=True))
        return gap


async def wait_for_port(port: str, backoff: tuple[float, float], what: str) -> None:
    """Wait until ``port`` exists: a device unplugged while the edge (re)started is waited for, like
    a PLC that does not answer, not a reason for the edge to exit (the soak's edge died on it). One
    warning, then a check every ``backoff`` step (initial, cap) with jitter."""
    if os.path.exists(port):
        return
    log.warning("%s.waiting port=%s: not there (unplugged, or a wrong path); checking every %.1f s at most", what,
                port, backoff[1])
    delays = exponential_backoff(initial_s=backoff[0], cap_s=backoff[1])
    tries = 0
    while not os.path.exists(port):
        tries += 1
        await asyncio.sleep(next(delays))
    log.warning("%s.appeared port=%s after %d checks", what, port, tries)


class ThrottledWarning:
    """Sums counts by reason and logs them as one WARNING at most every ``interval_s`` seconds."""

    def __init__(self, logger: logging.Logger, event: str, where: str, interval_s: float = 10.0) -> None:
        self.logger = logger
        self.event = event
        self.where = where
        self.interval_s = interval_s
        self.suppressed = 0  # warnings folded into a later one
        self._pending: Counter[str] = Counter()
        self._last = -float("inf")

    def add(self, reason: str, n: int = 1) -> None:
        if n <= 0:
            return
        self._pending[reason] += n
        self.logger.debug("%s %s reason=%s n=%d", self.event, self.where, reason, n)
        self.maybe_emit()

    def maybe_emit(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self._pending:
            return
        if not force and now - self._last < self.interval_s:
            self.suppressed += 1
            return
        self._last = now
        self.logger.warning("%s %s %s", self.event, self.where,
                            " ".join(f"{k}={v}" for k, v in sorted(self._pending.items())))
        self._pending.clear()

"""Store and forward: what readers publish goes to the spool first, then over a link to ingest,
and leaves the spool only when ingest says it has committed it.

A broker's PUBACK is not enough (Mosquitto may acknowledge before it has persisted a message, and
drops QoS 1 messages for a slow subscriber once its queue is full), so the only acknowledgement
that releases a record is ingest's commit acknowledgement, sent after the Parquet commit record
that covers the record's rows is durable. A record sent but not acknowledged within
``resend_after_s`` is sent again; ingest drops the repeated rows by (source, seq). At most
``window`` records are in flight, which is the edge's flow control.

When the spool drops its oldest segment (policy ``drop_oldest``), the forwarder turns each lost
batch into loss markers: one gap record per source naming exactly the sequence numbers dropped.

When the spool's *disk* is full (``SpoolDiskFull``: ENOSPC before the spool reached its own size),
readers are not stopped (a pty or a subscription would overflow where nobody records it): what
they publish is held in memory, in order, up to ``hold_max_bytes``, while the forwarder keeps
sending and releasing what is spooled (each commit acknowledgement frees room) and retries the
append with a capped backoff, since room may also come back from outside. Past the bound the
oldest held batches are dropped and become loss markers exactly like ``drop_oldest``'s, written
first once the disk takes data again. A warning names the path and errno; ``disk_full`` says it
for health checks while it lasts.
"""

from __future__ import annotations

import abc
import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from edge.backoff import exponential_backoff
from edge.spool import Spool, SpoolDiskFull
from qctrace import wire
from qctrace.durable import atomic_write
from qctrace.errors import PayloadError, SpoolFull
from qctrace.schema import SOURCE_COLUMNS, Gap, Outage, source_keys

log = logging.getLogger(__name__)


class Link(abc.ABC):
    """The next hop toward ingest: sends payloads, delivers commit acknowledgements to ``on_ack``."""

    on_ack: Callable[[Iterable[int]], None] | None = None  # set by the forwarder; called on the event loop
    on_inflight_lost: Callable[[], None] | None = None
    """What is in flight may never be acknowledged (an ingest worker restarted, or the link itself
    reconnected to a broker that may have dropped it): send it all again now, not after the
    resend timeout. Called on the event loop; set by the forwarder."""

    @abc.abstractmethod
    async def send(self, payload: bytes, topic_hint: str) -> None:
        """Hand one payload to the next hop; returns when it has it (not when ingest committed it)."""

    @property
    def up(self) -> bool:
        return True


@dataclass
class ForwarderStats:
    published: int = 0
    sent: int = 0
    resent: int = 0
    acked: int = 0
    blocked_s: float = 0.0
    loss_markers: int = 0
    held: int = 0  # items held in memory now, because the spool's disk is full
    held_bytes: int = 0
    held_max: int = 0  # the most items ever held at once
    held_dropped: int = 0  # held items dropped past hold_max_bytes (named by loss markers)
    disk_full_s: float = 0.0  # time spent with the spool's disk full, summed over episodes


@dataclass(slots=True)
class _LostSpan:
    """Readings of one source dropped from the hold: consecutive drops merge into one marker."""

    seq_lo: int
    seq_hi: int
    n: int
    ts_lo: int
    ts_hi: int


class Forwarder:
    def __init__(self, node: str, spool: Spool, link: Link, *, window: int = 64, resend_after_s: float = 15.0,
                 hold_max_bytes: int = 64 << 20, disk_retry_initial_s: float = 0.05,
                 disk_retry_cap_s: float = 2.0) -> None:
        """``hold_max_bytes`` bounds what readers' data is kept in memory while the spool's disk is
        full; ``disk_retry_*`` pace the append retries meanwhile (an acknowledgement retries at once)."""
        self.node = node
        self.spool = spool
        self.link = link
        self.window = window
        self.resend_after_s = resend_after_s
        self.hold_max_bytes = hold_max_bytes
        self.stats = ForwarderStats()
        self.disk_full: SpoolDiskFull | None = None  # set while the spool's disk refuses appends
        self._held: deque[tuple[wire.Item, int]] = deque()  # (item, its size in bytes), oldest first
        self._lost: dict[str, list[_LostSpan]] = {}  # dropped from the hold, not yet written as markers
        self._held_gaps: list[Gap] = []  # gap records dropped from the hold: kept, they are small
        self._disk_full_since = 0.0
        self._retry_at = 0.0
        self._retry_delays = (disk_retry_initial_s, disk_retry_cap_s)
        self._retry = exponential_backoff(disk_retry_initial_s, 2.0, disk_retry_cap_s)
        self._freed = False  # an acknowledgement released records since the last retry
        self._inflight: dict[int, float] = {}  # rid -> monotonic time sent
        self._wake = asyncio.Event()
        self._space = asyncio.Event()
        self._hints: dict[int, str] = {}
        self._pending_markers: list[Gap] = []
        link.on_ack = self.acked
        link.on_inflight_lost = self.resend_now
        spool.on_drop = self._dropped
        self._unsent = list(spool.pending())  # after a restart: everything still spooled goes again
        self._last_ts: dict[str, int] = _load_last_ts(self._last_ts_path)
        self._outages: dict[str, int] = _load_last_ts(self._outages_path)  # open reader outages (Outage)
        self._restarted_after = dict(self._last_ts)  # sources whose first batch now follows an outage
        for src, since in self._outages.items():  # an outage open when the edge stopped: its gap starts there
            self._restarted_after[src] = min(since, self._restarted_after.get(src, since))
        if self._unsent:
            log.info("forward.replay node=%s records=%d", node, len(self._unsent))

    @property
    def _last_ts_path(self) -> Path:
        return self.spool.dir / "last_ts.json"

    @property
    def _outages_path(self) -> Path:
        return self.spool.dir / "outages.json"

    def _outage(self, o: Outage) -> None:
        """Keep a reader's open outage on disk until its gap record is spooled (see ``Outage``)."""
        if o.closed:
            if self._outages.pop(o.source, None) is None:
                return
        elif self._outages.get(o.source, o.since_ns + 1) <= o.since_ns:
            return  # an earlier one is open: its start covers this one
        else:
            self._outages[o.source] = o.since_ns
        self._outages_dirty = True
        try:
            self._save_outages()
        except OSError as exc:  # a full disk: retried by _save, which writes no newer last times meanwhile
            log.warning("forward.outage_not_saved node=%s source=%s error=%s", self.node, o.source,
                        exc.strerror or exc)

    _outages_dirty = False

    def _save_outages(self) -> None:
        if self._outages_dirty:
            atomic_write(self._outages_path, json.dumps(self._outages).encode())
            self._outages_dirty = False

    async def publish(self, item: wire.Item | Outage) -> None:
        """What readers call: returns once the item is durable in the spool (not yet delivered).
        An ``Outage`` is kept here, not sent.

        The first batch of a source after this node (re)started is preceded by a gap record from
        the last reading spooled before the restart (or an outage open then) to the *newest*
        reading of that batch: readings the PLC produced while the edge was down were never
        collected (unless history backfill brings them), and downstream must know. Newest, not
        oldest: a subscription's first values are each tag's current one, and a tag that had been
        silent brings an old sample (the soak lost the other tags' readings in between). A clock
        that went back across the restart makes the batch's oldest reading the start instead. Both
        ends are the source times of real readings, so an oracle can map them to the plant's own
        clock even when the device's clock jumped in between.
        """
        if isinstance(item, Outage):
            self._outage(item)
            return
        if not isinstance(item, Gap) and item.num_rows:
            spans = source_spans(item)
            for src, (lo, hi) in spans.items():
                before = self._restarted_after.pop(src, None)
                if before is not None and max(before, hi) > min(before, lo):
                    await self._append(Gap(src, min(before, lo), max(before, hi),
                                           f"edge node {self.node} restarted; readings in between were not collected"
                                           + (" (the source's first time after the restart is earlier than its last"
                                              " before it)" if lo < before else "")))
                if before is not None and src in self._outages:  # covered by the restart gap now spooled
                    self._outage(Outage(src, before, closed=True))
            await self._append(item, spans)
            return
        await self._append(item)

    async def _append(self, item: wire.Item, spans: dict[str, tuple[int, int]] | None = None) -> None:
        if self._held:  # keep the order: nothing overtakes what is held
            self._hold(item)
            return
        t0 = None
        while True:
            try:
                rid = self.spool.append(lambda rid: wire.encode(self.node, rid, item))
                break
            except SpoolDiskFull as exc:
                self._disk_is_full(exc)
                self._hold(item)
                return
            except SpoolFull:
                if t0 is None:
                    t0 = time.monotonic()
                    log.warning("forward.blocked node=%s spool full; readers wait for ingest", self.node)
                self._space.clear()
                self._wake.set()
                await self._space.wait()
        if t0 is not None:
            self.stats.blocked_s += time.monotonic() - t0
        self._accepted(rid, item, spans)

    def _accepted(self, rid: int, item: wire.Item, spans: dict[str, tuple[int, int]] | None = None) -> None:
        """``item`` is durable in the spool as ``rid``: queue it for sending.

        The last spooled source time is the last one *spooled* (not the newest ever seen, nor one
        only held in memory): a restart's gap record starts there, so it covers what a crash took
        from memory, and a device clock that ran ahead for a while cannot push it past readings
        that come later with a corrected clock.
        """
        self._hints[rid] = topic_hint(item)
        self._unsent.append(rid)
        self.stats.published += 1
        if not isinstance(item, Gap) and item.num_rows:
            first = False
            for src, (_lo, hi) in (spans if spans is not None else source_spans(item)).items():
                first |= src not in self._last_ts
                self._last_ts[src] = hi
            self._last_ts_dirty = True
            if first:  # a source's first reading: on record now, or a crash within the second leaves no gap
                self._save()
        self._wake.set()

    # -- a full disk under the spool -------------------------------------------------------------

    def _disk_is_full(self, exc: SpoolDiskFull) -> None:
        now = time.monotonic()
        if self.disk_full is None:
            self._disk_full_since = now
            log.warning("forward.disk_full node=%s path=%s errno=%s: %s (holding up to %d bytes in memory)",
                        self.node, exc.path, exc.errno_name, exc, self.hold_max_bytes)
        self.disk_full = exc
        self._retry_at = now + next(self._retry)

    def _hold(self, item: wire.Item) -> None:
        size = item.get_total_buffer_size() if isinstance(item, pa.RecordBatch) else 64 + len(item.reason)
        self._held.append((item, size))
        self.stats.held_bytes += size
        while self.stats.held_bytes > self.hold_max_bytes and len(self._held) > 1:
            old, old_size = self._held.popleft()
            self.stats.held_bytes -= old_size
            self._lose_held(old)
        self.stats.held = len(self._held)
        self.stats.held_max = max(self.stats.held_max, self.stats.held)
        self._wake.set()

    def _lose_held(self, item: wire.Item) -> None:
        """Record exactly what a dropped held item carried; written before anything else held."""
        if self.stats.held_dropped == 0:
            log.error("forward.hold_full node=%s bytes=%d: the spool's disk is still full, dropping the oldest"
                      " held batches (each named by a loss marker)", self.node, self.hold_max_bytes)
        self.stats.held_dropped += 1
        if isinstance(item, Gap):
            self._held_gaps.append(item)
            return
        src = source_keys(item)
        seq = item.column("seq").to_numpy()
        ts = item.column("ts").cast(pa.int64()).to_numpy()
        for name in sorted(set(src.to_pylist())):
            rows = np.flatnonzero(pc.equal(src, name).to_numpy(zero_copy_only=False))
            s, t = seq[rows], ts[rows]
            lo, hi = int(s.min()), int(s.max())
            spans = self._lost.setdefault(name, [])
            last = spans[-1] if spans else None
            if last is not None and last.seq_hi + 1 == lo:
                last.seq_hi, last.n = hi, last.n + len(rows)
                last.ts_lo, last.ts_hi = min(last.ts_lo, int(t.min())), max(last.ts_hi, int(t.max()))
            else:
                spans.append(_LostSpan(lo, hi, len(rows), int(t.min()), int(t.max())))

    def _next_marker(self) -> Gap | None:
        """The next loss marker to write (a dropped gap record first), or None."""
        if self._held_gaps:
            g = self._held_gaps[0]
            return Gap(g.source, g.start_ns, g.end_ns, f"spool disk full: a held gap record was dropped ({g.reason})")
        if self._lost:
            name = min(self._lost)
            sp = self._lost[name][0]
            return Gap(name, sp.ts_lo, sp.ts_hi, f"spool disk full on edge node {self.node}, oldest held data"
                                                 f" dropped: seq {sp.seq_lo}-{sp.seq_hi} ({sp.n} readings) dropped")
        return None

    def _marker_written(self) -> None:
        if self._held_gaps:
            self._held_gaps.pop(0)
            return
        name = min(self._lost)
        self._lost[name].pop(0)
        if not self._lost[name]:
            del self._lost[name]

    @property
    def holding(self) -> bool:
        """Data (or loss markers) waiting in memory for the spool's disk to take it."""
        return bool(self._held or self._lost or self._held_gaps)

    def _retry_held(self) -> None:
        """Append what is held, oldest first, loss markers before anything: as far as the disk allows."""
        if not self.holding:
            return
        now = time.monotonic()
        if now < self._retry_at and not self._freed:
            return
        self._freed = False
        try:
            while (marker := self._next_marker()) is not None:
                rid = self.spool.append(lambda rid, m=marker: wire.encode(self.node, rid, m))
                self._accepted(rid, marker)
                self.stats.loss_markers += 1
                self._marker_written()
            while self._held:
                item, size = self._held[0]
                rid = self.spool.append(lambda rid, it=item: wire.encode(self.node, rid, it))
                self._held.popleft()
                self.stats.held_bytes -= size
                self.stats.held = len(self._held)
                self._accepted(rid, item)
        except SpoolDiskFull as exc:
            self._disk_is_full(exc)
            return
        except SpoolFull:  # the spool's own limit now: wait for acknowledgements (or the timer)
            self._retry_at = now + self._retry_delays[1]
            return
        if self.disk_full is not None:
            took = now - self._disk_full_since
            self.stats.disk_full_s += took
            log.warning("forward.disk_ok node=%s path=%s after_s=%.1f held_max=%d dropped=%d loss_markers=%d",
                        self.node, self.disk_full.path, took, self.stats.held_max, self.stats.held_dropped,
                        self.stats.loss_markers)
            self.disk_full = None
            self._retry = exponential_backoff(self._retry_delays[0], 2.0, self._retry_delays[1])

    def acked(self, rids: Iterable[int]) -> None:
        rids = list(rids)
        for rid in rids:
            self._inflight.pop(rid, None)
            self._hints.pop(rid, None)
        n = self.spool.release(rids)
        self.stats.acked += n
        if n:
            self._freed = True
            self._space.set()
            self._wake.set()

    def resend_now(self) -> None:
        """Treat everything in flight as unacknowledged-for-too-long: it goes again on the next pump."""
        if self._inflight:
            log.info("forward.resend_now node=%s records=%d", self.node, len(self._inflight))
            for rid in self._inflight:
                self._inflight[rid] = -1e18
            self._wake.set()

    def _dropped(self, payloads: list[bytes]) -> None:
        """The spool dropped these unreleased payloads: record exactly what was lost."""
        markers: list[Gap] = []
        for p in payloads:
            try:
                env = wire.decode(p)
            except PayloadError:
                continue
            self._inflight.pop(env.rid, None)
            if isinstance(env.item, Gap):
                markers.append(Gap(env.item.source, env.item.start_ns, env.item.end_ns,
                                   f"spool full: a gap record was dropped ({env.item.reason})"))
            else:
                markers.extend(loss_markers(env.item, "spool full, oldest data dropped"))
        dropped = {rid for rid in self._unsent if not self._in_spool(rid)}
        self._unsent = [rid for rid in self._unsent if rid not in dropped]
        self._pending_markers.extend(markers)
        self.stats.loss_markers += len(markers)

    def _in_spool(self, rid: int) -> bool:
        return any(rid in s.live for s in self.spool.segments)

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    async def run(self, stop: asyncio.Event, tick_s: float = 0.05, linger_s: float = 30.0) -> None:
        """Send, resend and persist the release watermark until ``stop``; then go on (resending too)
        until ingest has acknowledged everything or ``linger_s`` has passed. What is still spooled
        then is sent on the next start."""
        last_save = time.monotonic()
        give_up = None
        while True:
            self._retry_held()
            while self._pending_markers:
                await self.publish(self._pending_markers.pop(0))
            await self._pump()
            now = time.monotonic()
            if now - last_save >= 1.0:
                self._save()
                last_save = now
            if stop.is_set():
                give_up = give_up or now + linger_s
                if not self._unsent and not self.holding and not self.spool.depth:
                    break
                if now >= give_up:
                    # Unsent records are in the spool, and the next start sends them first; waiting
                    # for them to go through the window of unacknowledged records could take
                    # minutes (a backlog behind a slow worker) while whoever stopped us waits.
                    if self.holding:  # never spooled, so never promised: the next start's
                        # restart gap (from the last reading spooled) covers these readings
                        log.error("forward.stopped_holding node=%s held=%d: the spool's disk stayed full (%s)",
                                  self.node, len(self._held), self.disk_full)
                    break
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), tick_s)
            except TimeoutError:
                pass
        self._save()
        if self.spool.depth:
            log.warning("forward.stopped node=%s unacknowledged=%d (kept in the spool)", self.node, self.spool.depth)

    _last_ts_dirty = False
    _save_failing = False

    def _save(self) -> None:
        """Release watermark and last spooled time per source, about once a second. The times may
        lag what is spooled by that second, which only makes a restart's gap record start earlier."""
        try:
            self.spool.save_state()
            # Outages first: last times saved past an outage that is not on disk would start a
            # restart gap after the outage's readings.
            self._save_outages()
            if self._last_ts_dirty:
                atomic_write(self._last_ts_path, json.dumps(self._last_ts).encode())
                self._last_ts_dirty = False
        except OSError as exc:  # a full disk: kept dirty and written on a later call; stale is safe
            if not self._save_failing:
                log.warning("forward.save_failed node=%s dir=%s error=%s (retried every second)", self.node,
                            self.spool.dir, exc.strerror or exc)
            self._save_failing = True
            return
        self._save_failing = False

    async def _pump(self) -> None:
        if not self.link.up:
            return
        now = time.monotonic()
        stale = [rid for rid, t in self._inflight.items() if now - t >= self.resend_after_s]
        for rid in stale:
            if not self._in_spool(rid):
                self._inflight.pop(rid, None)
                continue
            await self._send(rid)
            self.stats.resent += 1
        while self._unsent and len(self._inflight) < self.window:
            rid = self._unsent.pop(0)
            if not self._in_spool(rid):
                continue
            await self._send(rid)
            self.stats.sent += 1

    async def _send(self, rid: int) -> None:
        payload = self.spool.read(rid)
        hint = self._hints.get(rid)
        if hint is None:
            hint = topic_hint(wire.decode(payload).item)
            self._hints[rid] = hint
        self._inflight[rid] = time.monotonic()
        await self.link.send(payload, hint)

    async def drain(self, timeout_s: float) -> bool:
        """Wait until ingest has acknowledged everything spooled; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while (self.spool.depth or self.holding) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return self.spool.depth == 0 and not self.holding


def topic_hint(item: wire.Item) -> str:
    """``site/line`` of what a payload carries: where it goes in the topic tree."""
    if isinstance(item, Gap):
        return "/".join(item.source.split("/")[:2])
    if item.num_rows == 0:
        return "_/_"
    return f"{item.column('site')[0].as_py()}/{item.column('line')[0].as_py()}"


def source_spans(batch: pa.RecordBatch) -> dict[str, tuple[int, int]]:
    """First and last source time per source of a batch.

    On the hot path of every publish, so it works on the dictionary codes of site, line and device
    rather than joining three strings per row; a batch of one source (the usual case) costs a min
    and a max."""
    ts = batch.column("ts").cast(pa.int64()).to_numpy()
    cols = [batch.column(c) for c in SOURCE_COLUMNS]
    if not len(ts):
        return {}
    if not all(pa.types.is_dictionary(c.type) for c in cols):
        cols = [pc.dictionary_encode(c) for c in cols]
    codes = [c.indices.to_numpy(zero_copy_only=False).astype(np.int64) for c in cols]
    sizes = [max(len(c.dictionary), 1) for c in cols]
    key = (codes[0] * sizes[1] + codes[1]) * sizes[2] + codes[2]
    first, last = int(key.min()), int(key.max())
    if first == last:
        uniq, lo, hi = [first], [int(ts.min())], [int(ts.max())]
    else:
        uniq_a, inv = np.unique(key, return_inverse=True)
        lo_a = np.full(len(uniq_a), np.iinfo(np.int64).max, dtype=np.int64)
        hi_a = np.full(len(uniq_a), np.iinfo(np.int64).min, dtype=np.int64)
        np.minimum.at(lo_a, inv, ts)
        np.maximum.at(hi_a, inv, ts)
        uniq, lo, hi = uniq_a.tolist(), lo_a.tolist(), hi_a.tolist()
    out: dict[str, tuple[int, int]] = {}
    for k, a, b in zip(uniq, lo, hi, strict=True):
        rest, device = divmod(k, sizes[2])
        site, line = divmod(rest, sizes[1])
        name = "/".join(c.dictionary[j].as_py() for c, j in zip(cols, (site, line, device), strict=True))
        if name in out:  # a dictionary that holds the same value twice
            a, b = min(a, out[name][0]), max(b, out[name][1])
        out[name] = (a, b)
    return out


def _load_last_ts(path: Path) -> dict[str, int]:
    try:
        return {str(k): int(v) for k, v in json.loads(path.read_text()).items()}
    except FileNotFoundError:
        return {}
    except (ValueError, TypeError, AttributeError):
        log.error("forward.bad_last_ts file=%s (restart gaps cannot be recorded this time)", path)
        return {}


def loss_markers(batch: pa.RecordBatch, reason: str) -> list[Gap]:
    """One gap record per source of a lost batch, naming its sequence numbers and time span."""
    out = []
    src = source_keys(batch)
    seq = batch.column("seq").to_numpy()
    ts = batch.column("ts").cast(pa.int64()).to_numpy()
    for name in sorted(set(src.to_pylist())):
        rows = np.flatnonzero(pc.equal(src, name).to_numpy(zero_copy_only=False))
        s = seq[rows]
        t = ts[rows]
        out.append(Gap(name, int(t.min()), int(t.max()),
                       f"{reason}: seq {int(s.min())}-{int(s.max())} ({len(rows)} readings) dropped"))
    return out

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
"""

from __future__ import annotations

import abc
import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from edge.spool import Spool
from qctrace import wire
from qctrace.durable import atomic_write
from qctrace.errors import PayloadError, SpoolFull
from qctrace.schema import Gap, source_keys

log = logging.getLogger(__name__)


class Link(abc.ABC):
    """The next hop toward ingest: sends payloads, delivers commit acknowledgements to ``on_ack``."""

    on_ack: Callable[[Iterable[int]], None] | None = None  # set by the forwarder; called on the event loop
    on_peer_online: Callable[[], None] | None = None  # an ingest worker (re)started

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


class Forwarder:
    def __init__(self, node: str, spool: Spool, link: Link, *, window: int = 64, resend_after_s: float = 15.0) -> None:
        self.node = node
        self.spool = spool
        self.link = link
        self.window = window
        self.resend_after_s = resend_after_s
        self.stats = ForwarderStats()
        self._inflight: dict[int, float] = {}  # rid -> monotonic time sent
        self._wake = asyncio.Event()
        self._space = asyncio.Event()
        self._hints: dict[int, str] = {}
        self._pending_markers: list[Gap] = []
        link.on_ack = self.acked
        link.on_peer_online = self.resend_now
        spool.on_drop = self._dropped
        self._unsent = list(spool.pending())  # after a restart: everything still spooled goes again
        self._last_ts: dict[str, int] = _load_last_ts(self._last_ts_path)
        self._restarted_after = dict(self._last_ts)  # sources whose first batch now follows an outage
        if self._unsent:
            log.info("forward.replay node=%s records=%d", node, len(self._unsent))

    @property
    def _last_ts_path(self) -> Path:
        return self.spool.dir / "last_ts.json"

    async def publish(self, item: wire.Item) -> None:
        """What readers call: returns once the item is durable in the spool (not yet delivered).

        The first batch of a source after this node (re)started is preceded by a gap record from
        the last reading spooled before the restart: readings the PLC produced while the edge was
        down were never collected (unless history backfill brings them), and downstream must know.
        """
        if not isinstance(item, Gap) and item.num_rows:
            spans = source_spans(item)
            for src, (lo, _hi) in spans.items():
                before = self._restarted_after.pop(src, None)
                if before is not None and lo > before:
                    await self._append(Gap(src, before, lo, f"edge node {self.node} restarted; readings in"
                                                              " between were not collected"))
            await self._append(item)
            for src, (_lo, hi) in spans.items():
                if hi > self._last_ts.get(src, -1):
                    self._last_ts[src] = hi
            self._last_ts_dirty = True
            return
        await self._append(item)

    async def _append(self, item: wire.Item) -> None:
        t0 = None
        while True:
            try:
                rid = self.spool.append(lambda rid: wire.encode(self.node, rid, item))
                break
            except SpoolFull:
                if t0 is None:
                    t0 = time.monotonic()
                    log.warning("forward.blocked node=%s spool full; readers wait for ingest", self.node)
                self._space.clear()
                self._wake.set()
                await self._space.wait()
        if t0 is not None:
            self.stats.blocked_s += time.monotonic() - t0
        self._hints[rid] = topic_hint(item)
        self._unsent.append(rid)
        self.stats.published += 1
        self._wake.set()

    def acked(self, rids: Iterable[int]) -> None:
        rids = list(rids)
        for rid in rids:
            self._inflight.pop(rid, None)
            self._hints.pop(rid, None)
        n = self.spool.release(rids)
        self.stats.acked += n
        if n:
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
            while self._pending_markers:
                await self.publish(self._pending_markers.pop(0))
            await self._pump()
            now = time.monotonic()
            if now - last_save >= 1.0:
                self._save()
                last_save = now
            if stop.is_set():
                give_up = give_up or now + linger_s
                if not self._unsent and (not self.spool.depth or now >= give_up):
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

    def _save(self) -> None:
        """Release watermark and last spooled time per source, about once a second. The times may
        lag what is spooled by that second, which only makes a restart's gap record start earlier."""
        self.spool.save_state()
        if self._last_ts_dirty:
            atomic_write(self._last_ts_path, json.dumps(self._last_ts).encode())
            self._last_ts_dirty = False

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
        while self.spool.depth and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return self.spool.depth == 0


def topic_hint(item: wire.Item) -> str:
    """``site/line`` of what a payload carries: where it goes in the topic tree."""
    if isinstance(item, Gap):
        return "/".join(item.source.split("/")[:2])
    if item.num_rows == 0:
        return "_/_"
    return f"{item.column('site')[0].as_py()}/{item.column('line')[0].as_py()}"


def source_spans(batch: pa.RecordBatch) -> dict[str, tuple[int, int]]:
    """First and last source time per source of a batch."""
    src = source_keys(batch)
    enc = pc.dictionary_encode(src)
    codes = enc.indices.to_numpy(zero_copy_only=False)
    ts = batch.column("ts").cast(pa.int64()).to_numpy()
    n = len(enc.dictionary)
    lo = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    hi = np.full(n, np.iinfo(np.int64).min, dtype=np.int64)
    np.minimum.at(lo, codes, ts)
    np.maximum.at(hi, codes, ts)
    return {name: (int(lo[i]), int(hi[i])) for i, name in enumerate(enc.dictionary.to_pylist())}


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

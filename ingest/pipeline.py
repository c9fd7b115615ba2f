"""Ingest: deduplicate, detect, sink, and report what the ledger should record.

Order matters: duplicates are dropped *before* detection so a redelivered reading never moves a
detector's state twice. Provenance facts (lot transitions, anomaly episodes, gaps, and each committed Parquet file with
its SHA-256) go to ``on_events``,
which the application wires to the ledger: ingest itself knows nothing of the ledger.

Several ingest workers may share one dataset, each holding some edge nodes (``qctrace.workers``).
Detection state is per sensor and sensors belong to nodes, so a node's state travels with it: each
commit names, per node this worker holds, the detector state file that matches the committed data
and the sources the node carries (``extra["detectors"]``, ``extra["node_sources"]``); the worker
that takes a node over (``adopt``) loads exactly those sensors from that file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ingest.compact import BackgroundCompactor
from ingest.detect import Detector
from ingest.detect.clock import ClockWatch
from ingest.episodes import Episode, EpisodeOpened, EpisodeTracker
from ingest.lots import LotFinished, LotStarted, LotTracker
from ingest.sink import CommittedFile, ParquetSink, storage_error
from qctrace import wire
from qctrace.config import DetectConfig, SinkConfig
from qctrace.errors import SinkCommitError
from qctrace.schema import Flag, Gap

log = logging.getLogger(__name__)

Fact = LotStarted | LotFinished | Episode | EpisodeOpened | Gap | CommittedFile
FUTURE_SKEW_NS = 300 * 10**9  # a source clock this far ahead of its receive time is not trusted as "now"
OnEvents = Callable[[list[Fact]], None]


@dataclass
class IngestStats:
    batches: int = 0
    readings_in: int = 0
    duplicates: int = 0
    flagged: int = 0
    episodes: int = 0
    gaps: int = 0
    clock_skewed: int = 0  # readings kept while their device's clock was off the plant's (ingest.detect.clock)


class Ingest:
    def __init__(self, data_dir: Path, detect: DetectConfig, sink: SinkConfig, on_events: OnEvents,
                 worker: str = "ingest", adopt_all: bool = True, *, clock_skew_s: float | None = 60.0) -> None:
        """``worker`` names this writer of the dataset; ``adopt_all`` restores every node's detector
        state now (one worker), otherwise only the nodes given to ``adopt`` later (several).
        ``clock_skew_s``: how far a device's clock may be off the plant's before it is reported
        (``ingest.detect.clock``; ``None``: not watched)."""
        self.worker = worker
        self.detector = Detector(detect)
        self.clock = ClockWatch(clock_skew_s) if clock_skew_s is not None else None
        self.episodes = EpisodeTracker()
        self.lots = LotTracker()
        self.sink = ParquetSink(data_dir / "readings", data_dir / "ingest", sink.flush_rows, sink.flush_age_s,
                                sink.row_group_rows, writer=worker)
        self.on_events = on_events
        self.on_commit: list[Callable[[], None]] = []  # called after each durable commit (acks upstream)
        self.commit_error: SinkCommitError | None = None  # the last commit the disk refused, until one succeeds
        self._retry_s = sink.retry_s
        self._retry_at = 0.0
        self.compactor = BackgroundCompactor(self.sink.root, self.sink.state_dir, sink.compact_every_s,
                                             sink.compact_min_files, sink.compact_target_rows, sink.retired_grace_s,
                                             sink.row_group_rows) if sink.compact_every_s else None
        self.stats = IngestStats()
        self.observer: Any = None  # qctrace.metrics.IngestMetrics when a process serves metrics
        self._pending_oldest_ns: list[int] = []  # per batch since the last commit: end-to-end lag at commit
        self.nodes: set[str] = set()  # edge nodes whose readings this worker takes
        self.node_sources: dict[str, set[str]] = {}  # node -> the sources (site/line/device) it carries
        self._released: set[str] = set()  # sources of nodes handed to another worker: not watched here
        self._now_ns = 0  # newest plausible source time seen: the data clock alarms' off-delays judge by
        self._source_ids: dict[str, int] = {}  # site/line/device -> index, for the stale timer's clocks
        self._sensor_source = np.zeros(0, np.int64)  # sensor -> its source's index (detector keys only grow)
        self._stale: set[int] = set()  # sensors reported silent and not heard in time since
        if adopt_all:
            for node in self.sink.extra.get("detectors", {}):
                self.adopt(node)

    def adopt(self, node: str) -> None:
        """Take ``node`` over: its sensors' detector state as last committed (by whichever worker
        held it), and every seq other workers committed, so their redeliveries are dropped here."""
        self.sink.sync()
        name = self.sink.extra.get("detectors", {}).get(node)
        sources = set(self.sink.extra.get("node_sources", {}).get(node, ()))
        self.nodes.add(node)
        self.node_sources.setdefault(node, set()).update(sources)
        self._released -= self.node_sources[node]
        if name and (self.sink.state_dir / name).exists():
            self.detector.load(self.sink.state_dir / name, keep=lambda k: k.rpartition("/")[0] in sources)
            log.info("ingest.adopt node=%s state=%s sources=%d", node, name, len(sources))

    def release(self, node: str) -> None:
        """Hand ``node`` to another worker: commit what is buffered, with the detector state that
        goes with it, so the next holder starts from there; stop watching its sensors for silence."""
        self.flush(force=True)
        self.nodes.discard(node)
        self._released |= self.node_sources.get(node, set())
        log.info("ingest.release node=%s", node)

    def process(self, batch: pa.RecordBatch, node: str = "") -> None:
        self.stats.batches += 1
        self.stats.readings_in += batch.num_rows
        fresh = self.sink.dedupe(batch)
        self.nodes.add(node)
        known = self.node_sources.setdefault(node, set())
        if not known.issuperset(self.sink.last_sources):
            known.update(self.sink.last_sources)
        self.stats.duplicates += batch.num_rows - fresh.num_rows
        if fresh.num_rows == 0:
            return
        t_detect = time.perf_counter()
        flagged, idx, _z = self.detector.flag(fresh)
        if self.observer is not None:
            self.observer.detected(time.perf_counter() - t_detect)
            self._pending_oldest_ns.append(int(pc.min(fresh.column("ts").cast(pa.int64())).as_py()))
        # A device clock far ahead of when the edge received the reading (a logger set to 2200) must
        # not become "now" for the alarms' off-delays (the stale timer uses each device's own clock).
        ts = fresh.column("ts").cast(pa.int64())
        plausible = pc.less_equal(ts, pc.add(fresh.column("recv_ts").cast(pa.int64()), FUTURE_SKEW_NS))
        if self.clock is not None:  # nor must a clock minutes ahead: kept, reported, not "now"
            skewed = self.clock.check(fresh)
            if skewed.any():
                plausible = pc.and_(plausible, pa.array(~skewed))
            self.stats.clock_skewed = self.clock.readings_skewed
        self._now_ns = max(self._now_ns, int(pc.max(pc.filter(ts, plausible)).as_py() or 0))
        flags = flagged.column("flags").to_numpy()
        self.stats.flagged += int(np.count_nonzero(flags))
        facts: list[Fact] = [*self.lots.update(flagged, flags)]
        eps = self.episodes.update(idx, flagged, flags, self.detector.keys)
        self.stats.episodes += len(eps)
        facts.extend(eps)
        facts.extend(self.episodes.opened)  # alarms are raised when an episode opens, not when it ends
        self.sink.add(flagged)
        if facts:
            self.on_events(facts)

    def flush(self, final: bool = False, force: bool = False) -> None:
        """Commit buffered rows together with the detector state that produced their flags.

        The state goes to a new file first (``detector-<worker>-<ns>.npz``, fsynced); the sink's
        atomic commit record then names it for each node this worker holds. A crash before the
        commit leaves the old record and the old state, which match each other; this worker's
        files that the record no longer names are removed after the commit.
        """
        if not self.sink.pending_rows or (not (final or force) and time.monotonic() < self._retry_at):
            return
        name = f"detector-{self.worker}-{time.time_ns()}.npz"
        t_commit = time.perf_counter()
        try:
            try:
                self.detector.save(self.sink.state_dir / name)
            except OSError as exc:
                raise storage_error("cannot save the detector state to", self.sink.state_dir, exc,
                                    self.sink.pending_rows) from exc
            nodes = sorted(self.nodes)
            files = self.sink.flush({"detectors": dict.fromkeys(nodes, name),
                                     "node_sources": {n: sorted(self.node_sources.get(n, ())) for n in nodes}})
        except SinkCommitError as exc:
            # Nothing is acknowledged (on_commit is not called): the rows stay pending, upstream
            # keeps them, and the commit is retried after retry_s. At the end of a run it raises.
            self.commit_error = exc
            self._retry_at = time.monotonic() + self._retry_s
            log.error("ingest.commit_failed pending=%d error=%s", self.sink.pending_rows, exc)
            if final:
                raise
            return
        self.commit_error = None
        if self.observer is not None:
            self.observer.committed(time.perf_counter() - t_commit, self._pending_oldest_ns)
            self._pending_oldest_ns = []
        named = set(self.sink.extra.get("detectors", {}).values())
        for old in self.sink.state_dir.glob(f"detector-{self.worker}-*.npz"):
            if old.name not in named:
                old.unlink(missing_ok=True)
        if files:
            self.on_events(list(files))
            self.sink.confirm_reported(files)
        for fn in self.on_commit:
            fn()

    def finish(self) -> None:
        """Commit what is buffered and close open episodes (end of run)."""
        eps = self.episodes.close_all(self.detector.keys)
        self.stats.episodes += len(eps)
        if eps:
            self.on_events(list(eps))
        self.flush(final=True)
        self.sink.save_confirmations()

    @property
    def now_ns(self) -> int:
        """The data clock: the newest plausible source time seen (what off-delays and timers judge by)."""
        return self._now_ns

    def _source_clocks(self, last: np.ndarray) -> np.ndarray:
        """Per sensor, the clock its silence is judged by: the newest of ``last`` (each sensor's
        newest reading) over the sensors of the same source (device)."""
        from ingest.detect.robust import NEVER

        keys = self.detector.keys
        n, known = len(keys), len(self._sensor_source)
        if known < n:
            ids = [self._source_ids.setdefault(k.rpartition("/")[0], len(self._source_ids)) for k in keys[known:]]
            self._sensor_source = np.concatenate([self._sensor_source, np.array(ids, np.int64)])
        clock = np.full(len(self._source_ids), NEVER, np.int64)
        np.maximum.at(clock, self._sensor_source[:n], last)
        return clock[self._sensor_source[:n]]

    def check_stale(self) -> list[Episode]:
        """Sensors that went silent (the detector's timer rule), each reported once per silence.

        Time is source time, the newest reading of any sensor of the same device: a sensor is
        silent while its device goes on without it. A device whose readings come late as a whole
        (an edge replaying minutes of spool through its window of unacknowledged records, a PLC
        server lagging its neighbours on a loaded machine) is late, not silent; and a device that
        falls silent as a whole is an outage, which its edge records as a gap. Judged by the
        worker's newest reading of any device, every sensor of a late device was "silent" again at
        every check as its readings moved on: the one-hour soak wrote 1.4 M STALE episodes, 89 % of
        its ledger, and writing and anchoring them slowed the worker until the edge could not
        drain. A silence ends when a check finds the sensor within its limit again.
        """
        if not len(self.detector.keys):
            return []
        last = self.detector.last_seen_all()
        clocks = self._source_clocks(last)
        silent = set(self.detector.stale(clocks))
        self._stale &= silent  # heard in time since: the next silence is reported again
        out = []
        for s in sorted(silent - self._stale):
            if self._released and self.detector.keys[s].rpartition("/")[0] in self._released:
                continue  # another worker holds its node now
            self._stale.add(s)  # only heard sensors are ever silent: last[s] is a time
            out.append(Episode(self.detector.keys[s], int(last[s]), int(clocks[s]), int(Flag.STALE), math.nan,
                               math.nan, 0, None))
        if out:
            self.stats.episodes += len(out)
            names = [e.sensor for e in out]
            log.warning("ingest.stale count=%d sensors=%s%s", len(names), ",".join(names[:10]),
                        f",… ({len(names) - 10} more)" if len(names) > 10 else "")
            self.on_events(out)
        return out

    def gap(self, gap: Gap) -> None:
        """A source could not be read for a while: record it, so missing data is explained."""
        self.stats.gaps += 1
        log.warning("ingest.gap source=%s start=%d end=%d reason=%s", gap.source, gap.start_ns, gap.end_ns,
                    gap.reason)
        self.on_events([gap])

    async def run(self, batches: AsyncIterator[pa.RecordBatch | Gap | wire.Envelope],
                  flush_check_s: float = 0.2) -> None:
        """Consume until the transport closes; commits on size or age, and once more at the end."""

        async def flusher() -> None:
            while True:
                await asyncio.sleep(flush_check_s)
                self.check_stale()
                if self.sink.due():
                    self.flush()
                self._compacted()

        late = self.sink.unreported()  # committed before a crash, never recorded
        if late:
            self.on_events(list(late))
            self.sink.confirm_reported(late)
        if self.compactor:
            self.compactor.start()
        task = asyncio.create_task(flusher())
        try:
            async for item in batches:
                node = ""
                if isinstance(item, wire.Envelope):
                    node, item = item.node, item.item
                if isinstance(item, Gap):
                    self.gap(item)
                    continue
                self.process(item, node)
                if self.sink.due():
                    self.flush()
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            if self.compactor:
                await asyncio.to_thread(self.compactor.stop)
        self.finish()
        self._compacted()

    def _compacted(self) -> None:
        """Files the background compactor wrote become facts here, on ingest's thread (the ledger's)."""
        files = self.compactor.drain() if self.compactor else []
        if files:
            self.on_events(list(files))
            self.compactor.confirm(files)

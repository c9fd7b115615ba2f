"""An ingest worker as a long-running process (`qctrace ingest`): take payloads from the shared
subscription, commit them, acknowledge them.

It runs until SIGINT/SIGTERM, then commits what it holds, which acknowledges it to the edges.
A kill -9 is survivable: what it had not committed is resent by the edges.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edge.mqtt import MqttSource
from firmware_sim.scenario import load_scenario
from ingest import Ingest, warm_up
from ingest.leases import Leases, assign, live_workers, node_leases
from ingest.receiver import Receiver
from ledger import Ledger
from qctrace.config import Config
from qctrace.edge_node import Say, stop_on_signals
from qctrace.ledger_ops import Checkpointer, ensure_keys, ledger_path, start_anchorer
from qctrace.metrics import IngestMetrics
from qctrace.metrics import serve as serve_metrics
from qctrace.provenance import Provenance

log = logging.getLogger(__name__)


@dataclass
class IngestParts:
    ingest: Ingest
    ledger: Ledger
    checkpointer: Checkpointer


def build_ingest(cfg: Config, data_dir: Path, on_facts: Callable[[list], list] = lambda f: f,
                 worker: str = "ingest", adopt_all: bool = True) -> IngestParts:
    """Ingest wired to the ledger: facts → (alarms, via ``on_facts``) → EPCIS events → signed checkpoints."""
    provenance = Provenance.of(load_scenario(cfg.plant.scenario))
    warm_up()
    ensure_keys(cfg)
    ledger = Ledger(ledger_path(data_dir))
    checkpointer = Checkpointer(cfg, ledger)

    def record(facts: list) -> None:
        ledger.append_many(provenance.events_for(on_facts(facts)))
        checkpointer.maybe()

    return IngestParts(Ingest(data_dir, cfg.detect, cfg.sink, record, worker, adopt_all), ledger, checkpointer)


async def share_nodes(ingest: Ingest, leases: Leases, source: MqttSource, worker: str, stop: asyncio.Event,
                      every_s: float = 0.25, drain_s: float = 0.3) -> None:
    """Keep holding exactly this worker's share of the edge nodes (``ingest.leases``): give up
    nodes another worker should have (stop reading, commit, then free the lease), take the ones
    that are ours once their lease is free.

    Checked every ``every_s``: a dead worker's nodes wait that long for a new holder while their
    edges spool, and a check is one directory listing and a non-blocking ``flock`` per worker."""
    while not stop.is_set():
        workers = live_workers(ingest.sink.state_dir, worker)
        mine = {n for n, w in assign(source.nodes, workers).items() if w == worker}
        for node in sorted(leases.held - mine):
            source.drop(node)
            await asyncio.sleep(drain_s)  # payloads already on their way are taken while we hold the node
            ingest.release(node)
            leases.give(node)
            log.info("ingest.handover node=%s from=%s workers=%s", node, worker, ",".join(workers))
        for node in sorted(mine - leases.held):
            if leases.try_take(node):
                ingest.adopt(node)
                source.take(node)
                log.info("ingest.take node=%s worker=%s workers=%s", node, worker, ",".join(workers))
        source.nodes_changed.clear()
        waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(source.nodes_changed.wait())]
        await asyncio.wait(waits, timeout=every_s, return_when=asyncio.FIRST_COMPLETED)  # a new node: at once
        for w in waits:
            w.cancel()


async def run_ingest(cfg: Config, worker: str, say: Say = lambda s: None, stop: asyncio.Event | None = None,
                     report_every_s: float = 10.0) -> Ingest:
    """Take payloads from the shared subscription, commit them, acknowledge them, until stopped."""
    from qctrace.alarm_ops import AlarmFeed

    data_dir = cfg.data_dir.resolve()
    stop = stop or stop_on_signals()
    feed = AlarmFeed(cfg)
    metrics_srv, registry, health = serve_metrics(f"ingest {worker}", cfg.metrics.host, cfg.metrics.ingest_port)
    im = IngestMetrics(registry, health, commit_stale_s=cfg.metrics.commit_stale_s)
    parts = build_ingest(cfg, data_dir, im.counting_alarms(feed), worker, adopt_all=False)
    anchorer = start_anchorer(cfg)  # in its own thread: a dead or slow chain never holds ingest up
    parts.checkpointer.anchorer = anchorer
    feed.clock = lambda: parts.ingest.now_ns  # alarm clears fall due on the data clock, not only on the next fact
    source = await MqttSource(cfg.mqtt, worker, by_node=True).start()
    leases = node_leases(parts.ingest.sink.state_dir)
    receiver = Receiver(parts.ingest, source.ack, data_dir / "quarantine", leases.holds)
    im.watch(parts.ingest, receiver, source, parts.ledger, parts.checkpointer)
    say(f"ingest {worker}: {source.subscription} → {data_dir}")
    task = asyncio.create_task(parts.ingest.run(receiver.items(source.receive())))
    sharing = asyncio.create_task(share_nodes(parts.ingest, leases, source, worker, stop))
    t0 = time.monotonic()
    try:
        while not stop.is_set() and not task.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), report_every_s)
            st = parts.ingest.stats
            say(f"  {time.monotonic() - t0:6.0f} s  readings {st.readings_in}  committed"
                f" {parts.ingest.sink.rows_committed}  duplicates {st.duplicates}  quarantined {receiver.quarantined}"
                f"  nodes {','.join(sorted(leases.held)) or '-'}")
    finally:
        sharing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sharing
        await source.close()
        await task
        parts.ledger.append_many(Provenance.of(load_scenario(cfg.plant.scenario)).events_for(feed.close()))
        parts.checkpointer.now()
        if anchorer is not None:
            anchorer.stop(timeout_s=5)
        parts.ledger.close()
        parts.ingest.sink.close()
        leases.close()
        if metrics_srv is not None:
            metrics_srv.stop()
    say(f"ingest {worker} stopped: {parts.ingest.stats.readings_in} readings in,"
        f" {parts.ingest.sink.rows_committed} committed")
    return parts.ingest

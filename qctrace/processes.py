"""Edge and ingest as separate, long-running processes joined by MQTT (`qctrace edge`, `qctrace ingest`).

Each runs until SIGINT/SIGTERM, then shuts down in the order that loses nothing: the edge stops
its readers (their buffers go to the spool), sends what it can and leaves the rest in the spool
for its next start; ingest commits what it holds, which acknowledges it to the edges.
A kill -9 of either is survivable the same way, only with more resending.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from edge import BatchBuilder, OpcUaReader, SeqAllocator, StreamTable
from edge.base import ReaderState
from edge.forward import Forwarder
from edge.mqtt import MqttLink, MqttSource
from edge.serial import serial_readers
from edge.spool import Spool
from firmware_sim.scenario import load_scenario
from ingest import Ingest
from ingest.detect import warm_up
from ingest.leases import Leases, assign, live_workers, node_leases
from ingest.receiver import Receiver
from ledger import Ledger
from qctrace.config import Config
from qctrace.errors import ConfigError
from qctrace.ledger_ops import Checkpointer, ensure_keys, ledger_path, start_anchorer
from qctrace.metrics import EdgeMetrics, IngestMetrics
from qctrace.metrics import serve as serve_metrics
from qctrace.provenance import Provenance

log = logging.getLogger(__name__)

Say = Callable[[str], None]


def open_spool(cfg: Config, data_dir: Path) -> Spool:
    sp = cfg.spool
    return Spool(data_dir / "edge" / cfg.edge.node / "spool", max_bytes=int(sp.max_mb * 2**20),
                 segment_bytes=int(sp.segment_mb * 2**20), policy=sp.policy, fsync=sp.fsync)


def make_forwarder(cfg: Config, spool: Spool, link) -> Forwarder:
    return Forwarder(cfg.edge.node, spool, link, window=cfg.spool.window, resend_after_s=cfg.spool.resend_after_s)


def build_readers(cfg: Config, data_dir: Path, publish, endpoints: tuple[str, ...],
                  trusted: Callable[[str], tuple[Path, ...]] = lambda e: ()) -> tuple[list, StreamTable]:
    """Every reader of this edge node: one per OPC UA endpoint, one per serial port."""
    e = cfg.edge
    streams = StreamTable()
    seqs = SeqAllocator(data_dir / "edge" / e.node / "seq.json")
    readers: list = [
        OpcUaReader(endpoint, BatchBuilder(streams, seqs), publish, publishing_interval_ms=e.publishing_interval_ms,
                    queue_size=e.queue_size, batch_max_rows=e.batch_max_rows, batch_max_age_s=e.batch_max_age_s,
                    opts=e.opcua, data_dir=data_dir, trusted_certs=trusted(endpoint),
                    sent_path=data_dir / "edge" / e.node / "opcua-sent" / f"{quote(endpoint, safe='')}.json")
        for endpoint in endpoints
    ]
    readers += serial_readers(e.serial, streams, seqs, publish, batch_max_rows=e.batch_max_rows,
                              batch_max_age_s=e.batch_max_age_s)
    return readers, streams


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


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def run_edge(cfg: Config, say: Say = lambda s: None, stop: asyncio.Event | None = None,
                   report_every_s: float = 10.0) -> Forwarder:
    """Read every configured device and forward over MQTT until stopped."""
    if not cfg.edge.opcua_endpoints and not cfg.edge.serial.devices:
        raise ConfigError("edge: nothing to read: set edge.opcua_endpoints and/or [[edge.serial.devices]]")
    data_dir = cfg.data_dir.resolve()
    stop = stop or _stop_on_signals()
    spool = open_spool(cfg, data_dir)
    link = await MqttLink(cfg.mqtt, cfg.edge.node).start()
    fwd = make_forwarder(cfg, spool, link)
    metrics_srv, registry, health = serve_metrics(f"edge {cfg.edge.node}", cfg.metrics.host, cfg.metrics.edge_port)
    em = EdgeMetrics(registry, health, spool_age_warn_s=cfg.metrics.spool_age_warn_s)
    readers, _ = build_readers(cfg, data_dir, em.counting(fwd.publish), cfg.edge.opcua_endpoints)
    em.watch(fwd, link, readers)
    fwd_stop = asyncio.Event()
    fwd_task = asyncio.create_task(fwd.run(fwd_stop, linger_s=5.0))
    reader_stop = asyncio.Event()

    async def read(r) -> None:  # each reader opens and runs on its own: a PLC that is down delays no other
        async with r:
            await r.run(reader_stop)

    tasks = [asyncio.create_task(read(r)) for r in readers]
    try:
        deadline = time.monotonic() + 10.0  # say "open" when every reader is, or some wait for their device
        while time.monotonic() < deadline and not any(t.done() for t in tasks) \
                and any(r.state is not ReaderState.OPEN for r in readers):
            await asyncio.sleep(0.05)
        for t in tasks:
            if t.done():
                t.result()  # a refusal retrying cannot cure (trust, login, configuration) stops the edge now
        waiting = sum(1 for r in readers if r.state is not ReaderState.OPEN)
        say(f"edge {cfg.edge.node}: {len(readers) - waiting} readers open → mqtt://{cfg.mqtt.host}:{cfg.mqtt.port};"
            f" spool {spool.dir} ({spool.depth} records waiting)"
            + (f"; {waiting} waiting for their device" if waiting else ""))
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), report_every_s)
            for t in [*tasks, fwd_task]:
                if t.done():
                    t.result()
            s = fwd.stats
            say(f"  spooled {s.published}  sent {s.sent}  resent {s.resent}  committed {s.acked}"
                f"  waiting {spool.depth}  oldest {spool.oldest_age_s():.0f} s")
        reader_stop.set()
        for r, t in zip(readers, tasks, strict=True):
            if r.state is not ReaderState.OPEN:
                t.cancel()  # still waiting for its device: nothing read, nothing to hand over
        for t in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(t, Exception):
                raise t
        fwd_stop.set()
        await fwd_task  # lingers (resending) until ingest has acknowledged everything, or 5 s
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        fwd_task.cancel()
        await link.close()
        spool.close()
        if metrics_srv is not None:
            metrics_srv.stop()
    say(f"edge {cfg.edge.node} stopped; {spool.depth} records stay spooled for the next start")
    return fwd


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
    stop = stop or _stop_on_signals()
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

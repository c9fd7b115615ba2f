"""The edge node as a long-running process (`qctrace edge`): read every device, forward over MQTT.

It runs until SIGINT/SIGTERM, then shuts down in the order that loses nothing: it stops its
readers (their buffers go to the spool), sends what it can and leaves the rest in the spool for
its next start. A kill -9 is survivable the same way, only with more resending.

It imports nothing of ingest or the ledger (numba, pandas, pyarrow.dataset): a killed edge is
back reading sooner, and its devices' readings wait less (see ``qctrace.ingest_worker``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

from edge.base import ReaderState
from edge.batcher import BatchBuilder, StreamTable
from edge.forward import Forwarder
from edge.mqtt import MqttLink
from edge.opcua import OpcUaReader
from edge.sequence import SeqAllocator
from edge.serial import serial_readers
from edge.spool import Spool
from qctrace.config import Config
from qctrace.errors import ConfigError
from qctrace.metrics import EdgeMetrics
from qctrace.metrics import serve as serve_metrics

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


def stop_on_signals() -> asyncio.Event:
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
    stop = stop or stop_on_signals()
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

"""Wiring: the only module (with the CLI) that knows every stage and connects them.

``run_demo`` starts the simulated plant as a child process, edge readers against it over real
TCP and a real pty, the in-process transport, ingest, the ledger and, optionally, the dashboard;
runs until the duration ends or it is told to stop, then shuts down in data-flow order so that
every reading the simulator sent is committed before anything closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from edge import BatchBuilder, OpcUaReader, SeqAllocator, SerialReader, StreamTable
from edge.transport import InProcessLink
from firmware_sim.scenario import COLDCHAIN_SITE, load_scenario, shipments_of
from ingest import Ingest, read_dataset, warm_up
from ingest.receiver import Receiver
from ledger import Ledger, events
from ledger.publish import anchor_checkpoint
from qctrace.alarm_ops import AlarmFeed
from qctrace.config import Config
from qctrace.edge_node import make_forwarder, open_spool
from qctrace.errors import QctraceError, ReaderError
from qctrace.ledger_ops import (
    READINGS_DIR,
    Checkpointer,
    checkpoint_dir,
    ensure_keys,
    ledger_path,
    open_anchor_chain,
)
from qctrace.metrics import EdgeMetrics, IngestMetrics
from qctrace.metrics import serve as serve_metrics
from qctrace.provenance import Provenance
from qctrace.schema import source_keys

log = logging.getLogger(__name__)

TRUTH_DIR = "truth"


@dataclass
class DemoSummary:
    duration_s: float
    produced: dict[str, int]
    written: dict[str, int]
    in_gaps: dict[str, int]
    unexplained: dict[str, int]
    readings_in: int
    duplicates: int
    flagged: int
    episodes: int
    gaps: int
    ledger_events: int
    ledger_head: str
    checkpoint: int = 0
    anchor: str = ""
    paths: dict[str, str] = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = [f"qctrace demo: ran {self.duration_s:.1f} s", "",
               f"readings per source{'':<15} produced   written   in gaps   missing"]
        cols = (self.produced, self.written, self.in_gaps, self.unexplained)
        for src in sorted(set(self.produced) | set(self.written)):
            out.append(f"  {src:<32}" + "".join(f"{c.get(src, 0):>10}" for c in cols))
        out += [
            f"  {'total':<32}" + "".join(f"{sum(c.values()):>10}" for c in cols),
            "",
            f"ingest: {self.readings_in} readings in, {self.duplicates} duplicates dropped,"
            f" {self.flagged} flagged, {self.episodes} anomaly episodes, {self.gaps} data gaps",
            f"ledger: {self.ledger_events} events, head {self.ledger_head}",
            f"        checkpoint signed at size {self.checkpoint}; {self.anchor}",
            "",
            *(f"{k:<9} {v}" for k, v in self.paths.items()),
        ]
        return out


def _die_with_parent() -> None:
    """In the child before exec: ask Linux to SIGTERM it when the demo dies, even by kill -9."""
    import ctypes

    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


class _Child:
    """A child process in its own session, stopped politely and then firmly; never left behind."""

    def __init__(self, proc: asyncio.subprocess.Process, name: str) -> None:
        self.proc = proc
        self.name = name

    async def stop(self, grace_s: float = 10.0) -> None:
        if self.proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), grace_s)
        except TimeoutError:
            log.warning("app.child_kill name=%s", self.name)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            await self.proc.wait()


def _sim_certs(data_dir: Path, endpoint: str) -> tuple[Path, ...]:
    """The certificate the simulator we started published for this endpoint: trusted because we started it."""
    from urllib.parse import urlparse

    cert = data_dir / "sim" / "certs" / f"server-{urlparse(endpoint).port}-cert.der"
    return (cert,) if cert.exists() else ()


async def _start_sim(cfg: Config, data_dir: Path) -> tuple[_Child, dict]:
    p = cfg.plant
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "qctrace", "sim", p.scenario, "--seed", str(p.seed), "--speed", str(p.speed),
        "--host", p.host, "--port", str(p.opcua_port), "--truth-dir", str(data_dir / TRUTH_DIR),
        "--dev-dir", str(data_dir / "dev"), "--control", "--metrics-port", str(cfg.metrics.sim_port),
        # The simulator offers secure endpoints and puts its certificates where the demo's readers trust them.
        *(() if cfg.edge.opcua.security_policy == "None" else
          ("--secure", "--cert-dir", str(data_dir / "sim" / "pki"), "--publish-cert", str(data_dir / "sim" / "certs"))),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, start_new_session=True,
        preexec_fn=_die_with_parent,
    )
    child = _Child(proc, "sim")
    try:
        ready = await _expect(proc, "ready", 60.0)
    except BaseException:
        await child.stop()
        raise
    return child, ready


async def _expect(proc: asyncio.subprocess.Process, event: str, timeout_s: float) -> dict:
    assert proc.stdout is not None
    async with asyncio.timeout(timeout_s):
        while True:
            line = await proc.stdout.readline()
            if not line:
                raise QctraceError(f"the simulator exited before saying {event!r} (exit code {await proc.wait()})")
            with contextlib.suppress(ValueError):
                msg = json.loads(line)
                if msg.get("event") == event:
                    return msg


async def _tell(proc: asyncio.subprocess.Process, command: str) -> None:
    assert proc.stdin is not None
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        proc.stdin.write(command.encode() + b"\n")
        await proc.stdin.drain()


def _dashboard_cmd(data_dir: Path, port: int, address: str, config_path: Path | None = None) -> list[str]:
    app = Path(__file__).resolve().parent.parent / "dashboard" / "app.py"
    return [sys.executable, "-m", "streamlit", "run", str(app), "--server.port", str(port), "--server.address",
            address, "--server.headless", "true", "--browser.gatherUsageStats", "false",
            "--client.toolbarMode", "viewer", "--", "--data-dir", str(data_dir.resolve())] + (
            ["--config", str(config_path.resolve())] if config_path is not None else [])


async def start_dashboard(data_dir: Path, port: int, address: str = "localhost",
                          config_path: Path | None = None) -> _Child:
    proc = await asyncio.create_subprocess_exec(
        *_dashboard_cmd(data_dir, port, address, config_path),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL, start_new_session=True,
        preexec_fn=_die_with_parent,
    )
    return _Child(proc, "dashboard")


async def run_demo(cfg: Config, duration_s: float | None, dashboard: bool,
                   say: Callable[[str], None] = lambda s: None) -> DemoSummary:
    data_dir = cfg.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    scenario = load_scenario(cfg.plant.scenario)
    provenance = Provenance.of(scenario)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    warm_up()  # compile (or load cached) kernels before the plant starts, not on the first batch
    ensure_keys(cfg)
    ledger = Ledger(ledger_path(data_dir))
    checkpointer = Checkpointer(cfg, ledger)
    metrics_srv, registry, health = serve_metrics("demo", cfg.metrics.host, cfg.metrics.demo_port)
    em = EdgeMetrics(registry, health, spool_age_warn_s=cfg.metrics.spool_age_warn_s)
    im = IngestMetrics(registry, health, commit_stale_s=cfg.metrics.commit_stale_s)

    # episodes and gaps become ISA-18.2 alarms, recorded and notified; clears wait on ingest's data clock
    alarm_feed = AlarmFeed(cfg, clock=lambda: ingest.now_ns, ledger=ledger)
    counted_feed = im.counting_alarms(alarm_feed)

    def record(facts: list) -> None:
        ledger.append_many(provenance.events_for(counted_feed(facts)))
        checkpointer.maybe()

    ingest = Ingest(data_dir, cfg.detect, cfg.sink, record)
    link = InProcessLink()
    spool = open_spool(cfg, data_dir)
    forwarder = make_forwarder(cfg, spool, link)
    receiver = Receiver(ingest, link.ack, data_dir / "quarantine")
    publish = em.counting(forwarder.publish)
    streams = StreamTable()
    seqs = SeqAllocator(data_dir / "edge" / "seq.json")
    sim, ready = await _start_sim(cfg, data_dir)
    say(f"simulated plant: OPC UA {ready['opcua']}, loggers {ready['serial']}")
    children = [sim]
    t0 = time.monotonic()
    try:
        e = cfg.edge
        readers = []
        for endpoint in ready["opcua"]:
            readers.append(OpcUaReader(endpoint, BatchBuilder(streams, seqs), publish,
                                       publishing_interval_ms=e.publishing_interval_ms, queue_size=e.queue_size,
                                       batch_max_rows=e.batch_max_rows, batch_max_age_s=e.batch_max_age_s,
                                       opts=e.opcua, data_dir=data_dir, trusted_certs=_sim_certs(data_dir, endpoint)))
        for sh in shipments_of(scenario):
            readers.append(SerialReader(ready["serial"][sh.id], COLDCHAIN_SITE, sh.id, sh.logger,
                                        BatchBuilder(streams, seqs), publish, lot=sh.lot,
                                        baudrate=e.serial_baudrate, batch_max_rows=e.batch_max_rows,
                                        batch_max_age_s=e.batch_max_age_s))
        em.watch(forwarder, link, readers)
        im.watch(ingest, receiver, None, ledger, checkpointer)
        async with contextlib.AsyncExitStack() as stack:
            for r in readers:
                await stack.enter_async_context(r)
            ingest_task = asyncio.create_task(ingest.run(receiver.items(link.receive())))
            forward_stop = asyncio.Event()
            forward_task = asyncio.create_task(forwarder.run(forward_stop))
            reader_stop = asyncio.Event()
            reader_tasks = [asyncio.create_task(r.run(reader_stop)) for r in readers]
            try:
                await _tell(sim.proc, "start")
                if dashboard:
                    children.append(await start_dashboard(data_dir, cfg.dashboard.port, cfg.dashboard.address))
                    say(f"dashboard: http://{cfg.dashboard.address}:{cfg.dashboard.port}")
                say("running" + (f" for {duration_s:g} s" if duration_s else "; Ctrl-C stops")
                    + f"; data in {data_dir}")
                await _wait(stop, duration_s, [*reader_tasks, ingest_task, forward_task], lambda: say(
                    f"  {time.monotonic() - t0:5.0f} s  readings {ingest.stats.readings_in:>7}  committed"
                    f" {ingest.sink.rows_committed:>7}  flagged {ingest.stats.flagged:>5}  episodes"
                    f" {ingest.stats.episodes:>3}"))
                say("stopping: simulator first, then readers drain, then ingest commits")
                await _tell(sim.proc, "stop")
                stopped = await _expect(sim.proc, "stopped", 30.0)
                produced = {k: int(v) for k, v in stopped["produced"].items()}
                await _drain(readers, produced, timeout_s=20.0)
                reader_stop.set()
                await asyncio.gather(*reader_tasks)
                for r in readers:  # what they still hold goes to the spool while the forwarder runs
                    await r.flush()
                forward_stop.set()
                await forward_task
                if not await forwarder.drain(timeout_s=30.0):
                    log.warning("app.spool_not_drained records=%d (kept in %s; sent again next run)", spool.depth,
                                spool.dir)
            except BaseException:
                for t in [*reader_tasks, ingest_task, forward_task]:
                    t.cancel()
                await asyncio.gather(*reader_tasks, ingest_task, forward_task, return_exceptions=True)
                raise
        await link.close()
        await ingest_task
        ledger.append_many(provenance.events_for(alarm_feed.close()))
    finally:
        spool.close()
        if metrics_srv is not None:
            metrics_srv.stop()
        await _tell(sim.proc, "quit")
        for c in children:
            await c.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    dataset = read_dataset(data_dir / READINGS_DIR)
    if dataset.num_rows:  # custody stages the data reached after ingest's last fact
        ledger.append_many(provenance.custody_until(pc.max(dataset.column("ts")).value))
    written = _per_source(dataset)
    in_gaps, unexplained = audit_against_truth(data_dir, ledger, dataset)
    n, head = ledger.head()
    size = checkpointer.now()
    try:
        with open_anchor_chain(cfg) as chain:
            receipt = anchor_checkpoint(ledger, chain, checkpoint_dir(data_dir), size)
        anchored = f"anchored on chain {receipt.chain_id} in block {receipt.block_number} (tx {receipt.tx_hash[:18]}…)"
    except QctraceError as exc:  # the data is safe and signed; anchoring can be retried with `qctrace anchor`
        anchored = f"NOT anchored ({exc}); retry with `qctrace anchor`"
    ledger.close()
    return DemoSummary(
        duration_s=time.monotonic() - t0, produced=produced, written=written, in_gaps=in_gaps,
        unexplained=unexplained, readings_in=ingest.stats.readings_in,
        duplicates=ingest.stats.duplicates, flagged=ingest.stats.flagged, episodes=ingest.stats.episodes,
        gaps=ingest.stats.gaps,
        ledger_events=n, ledger_head=head.hex(), checkpoint=size, anchor=anchored,
        paths={"readings": str(data_dir / READINGS_DIR), "ledger": str(ledger_path(data_dir)),
               "truth": str(data_dir / TRUTH_DIR)},
    )


async def _wait(stop: asyncio.Event, duration_s: float | None, tasks: list[asyncio.Task],
                report: Callable[[], None], every_s: float = 5.0) -> None:
    """Until stop, the duration, or a task dying (whose error is then raised)."""
    deadline = None if duration_s is None else time.monotonic() + duration_s
    stopped = asyncio.create_task(stop.wait())
    try:
        while not stop.is_set():
            left = every_s if deadline is None else min(every_s, deadline - time.monotonic())
            if left <= 0:
                return
            done, _ = await asyncio.wait([*tasks, stopped], timeout=left, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                if t in tasks:
                    t.result()  # a reader or ingest died: raise its error
                    raise ReaderError("a pipeline stage stopped unexpectedly")
            report()
    finally:
        stopped.cancel()


async def _drain(readers: list, produced: dict[str, int], timeout_s: float, quiet_s: float = 2.0) -> None:
    """Wait until the readers have received every reading the simulator says it sent, or nothing
    new has arrived for ``quiet_s`` (what is still missing then was lost in an outage, and the
    readers recorded it as a gap)."""
    deadline = time.monotonic() + timeout_s
    pending: dict[str, int] = {}
    last_total, last_change = -1, time.monotonic()
    while time.monotonic() < deadline:
        seen: dict[str, int] = {}
        for r in readers:
            for src, n in r.builder.received_per_source().items():
                seen[src] = seen.get(src, 0) + n
        pending = {s: n - seen.get(s, 0) for s, n in produced.items() if n > seen.get(s, 0)}
        if not pending:
            return
        total = sum(seen.values())
        if total != last_total:
            last_total, last_change = total, time.monotonic()
        elif time.monotonic() - last_change >= quiet_s:
            break
        await asyncio.sleep(0.1)
    log.warning("app.drain_incomplete missing=%s", pending)


def gap_windows(ledger: Ledger) -> dict[str, list[tuple[int, int]]]:
    """Per source, the (start, end) ns of every recorded data gap: what the ledger says was not collected."""
    gaps: dict[str, list[tuple[int, int]]] = {}
    for e in ledger.events(kind=events.DATA_GAP):
        g = e.as_dict()["qctrace:gap"]
        gaps.setdefault(g["source"], []).append((_parse_iso(g["start"]), _parse_iso(g["end"])))
    return gaps


def audit_against_truth(data_dir: Path, ledger: Ledger, dataset: pa.Table | None = None,
                        plant_clock: tuple[int, int] | None = None) -> tuple[dict[str, int], dict[str, int]]:
    """Compare what the simulator sent with Parquet: readings missing but inside a recorded gap of
    their source, and readings missing with no explanation (which must be none), per source.

    ``plant_clock`` (start ns, tick ns): a reading also counts as inside a gap when the plant's
    time of its tick is. A device whose clock was wrong stamps its readings with that clock, while
    a gap record for an edge outage speaks of the time the edge was away."""
    import pyarrow.parquet as pq

    truth_path = data_dir / TRUTH_DIR / "readings.parquet"
    if not truth_path.exists():
        return {}, {}
    truth = pq.read_table(truth_path)
    key = pa.table({"source": truth.column("source").cast(pa.string()),
                    "sensor": truth.column("sensor").cast(pa.string()),
                    "ts": truth.column("ts").cast(pa.int64()), "tick": truth.column("tick").cast(pa.int64())})
    got = read_dataset(data_dir / READINGS_DIR) if dataset is None else dataset
    have = pa.table({"source": source_keys(got), "sensor": got.column("sensor").cast(pa.string()),
                     "ts": got.column("ts").cast(pa.int64()), "seen": pa.array([True] * got.num_rows)})
    joined = key.join(have, ["source", "sensor", "ts"], join_type="left outer")
    missing = joined.filter(pc.is_null(joined.column("seen")))
    gaps, tick_windows = _gap_ticks(key, gap_windows(ledger))
    in_gaps: dict[str, int] = {}
    unexplained: dict[str, int] = {}
    ticks = missing.column("tick").to_pylist()
    for src, ts, tick in zip(missing.column("source").to_pylist(), missing.column("ts").to_pylist(), ticks,
                             strict=True):
        at = [ts] if plant_clock is None or tick is None else [ts, plant_clock[0] + tick * plant_clock[1]]
        covered = (any(a <= tick <= b for a, b in tick_windows.get(src, ()))
                   or any(a <= t <= b for a, b in gaps.get(src, ()) for t in at))
        target = in_gaps if covered else unexplained
        target[src] = target.get(src, 0) + 1
    return in_gaps, unexplained


def _gap_ticks(truth: pa.Table, gaps: dict[str, list[tuple[int, int]]]
               ) -> tuple[dict[str, list[tuple[int, int]]], dict[str, list[tuple[int, int]]]]:
    """The gaps whose two ends are times of real readings, as the simulator ticks of those readings
    (second), and the others as they are, in source time (first).

    An edge's restart gap runs from the last reading it spooled to the first one it read after the
    restart, each named by its source time. When the device's clock jumped in between (set a day
    back, say), the two times bound nothing in device time, but the two readings still bound the
    outage in the order the device sent them: the readings of the ticks in between are what the
    record explains, and no more: in device time the window would also hold a day of readings sent
    with the wrong clock."""
    # The ledger keeps times to the millisecond: match the truth's at that precision.
    ends = {(src, t // 1_000_000) for src, windows in gaps.items() for w in windows for t in w}
    if not ends:
        return gaps, {}
    ms = pc.divide(truth.column("ts"), 1_000_000)
    near = truth.append_column("ms", ms).filter(pc.is_in(ms, pa.array(sorted({t for _, t in ends}), pa.int64())))
    tick_of = {(src, t): tick for src, t, tick in zip(near.column("source").to_pylist(), near.column("ms").to_pylist(),
                                                      near.column("tick").to_pylist(), strict=True)
               if (src, t) in ends}
    in_time: dict[str, list[tuple[int, int]]] = {}
    in_ticks: dict[str, list[tuple[int, int]]] = {}
    for src, windows in gaps.items():
        for a, b in windows:
            ta, tb = tick_of.get((src, a // 1_000_000)), tick_of.get((src, b // 1_000_000))
            if ta is not None and tb is not None:
                in_ticks.setdefault(src, []).append((min(ta, tb), max(ta, tb)))
            else:
                in_time.setdefault(src, []).append((a, b))
    return in_time, in_ticks


def _parse_iso(text: str) -> int:
    from datetime import datetime

    return round(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000) * 1_000_000


def _per_source(table: pa.Table) -> dict[str, int]:
    if table.num_rows == 0:
        return {}
    counts = pc.value_counts(source_keys(table))
    return {d["values"]: d["counts"] for d in counts.to_pylist()}


def serve_dashboard(data_dir: Path, port: int, address: str = "localhost", config_path: Path | None = None) -> None:
    """Run the dashboard in the foreground until Ctrl-C or SIGTERM.

    Streamlit runs as a child process. SIGTERM (a service manager stopping us, a test's teardown)
    is passed on to it: left to the default handler, this process died at once and the
    Streamlit server went on serving, orphaned, holding its port."""
    import subprocess

    child = subprocess.Popen(_dashboard_cmd(data_dir, port, address, config_path))
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: child.terminate())
    try:
        with contextlib.suppress(KeyboardInterrupt):
            child.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
        if child.poll() is None:
            child.terminate()
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()

"""Prometheus metrics and a JSON health endpoint for the long-running processes (edge, ingest, sim, demo).

Counters that the pipeline already keeps (ForwarderStats, IngestStats, Spool depth) are read when
Prometheus scrapes, through custom collectors, so nothing is counted twice and the hot paths stay
untouched. Only what exists nowhere else is pushed: readings per source, gaps, timings (histograms)
and alarms raised. ``/health`` says in words what is wrong ("spool oldest record 312 s old",
"broker disconnected since 12:03:04", "no commit for 45 s") so an operator need not read graphs.

Each process builds its objects on its own ``CollectorRegistry``; processes pass the default
registry so the serial reader's module-level counters are served too, tests pass a fresh one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from qctrace.errors import ConfigError, QctraceError
from qctrace.schema import Gap, source_keys

log = logging.getLogger(__name__)

OK, DEGRADED, DOWN = "ok", "degraded", "down"
_RANK = {OK: 0, DEGRADED: 1, DOWN: 2}

REFUSAL_MEMORY_S = 60.0  # a refused publish keeps an edge "down" this long after the last one

Problem = tuple[str, str]  # (DEGRADED | DOWN, what is wrong in words)
Check = Callable[[], list[Problem]]


def clock(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts))


class _Since:
    """When a condition was first seen true, so health can say "since 12:03:04"."""

    def __init__(self) -> None:
        self.at: float | None = None

    def update(self, bad: bool) -> float | None:
        if not bad:
            self.at = None
        elif self.at is None:
            self.at = time.time()
        return self.at


class _Pull(Collector):
    """Families computed at scrape time from objects the pipeline already keeps up to date."""

    def __init__(self, fn: Callable[[], Iterable[Any]]) -> None:
        self.fn = fn

    def collect(self) -> Iterable[Any]:
        try:
            yield from self.fn()
        except Exception as exc:  # a scrape must never take the process down
            log.warning("metrics.collect_failed error=%r", exc)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


@dataclass
class Health:
    """Named components, each with checks; the worst problem decides the process's status."""

    process: str
    checks: dict[str, list[Check]] = field(default_factory=dict)
    started: float = field(default_factory=time.time)

    def add(self, component: str, check: Check) -> None:
        self.checks.setdefault(component, []).append(check)

    def report(self) -> dict[str, Any]:
        comps: dict[str, Any] = {}
        for name, checks in self.checks.items():
            problems: list[Problem] = []
            for check in checks:
                try:
                    problems += check()
                except Exception as exc:
                    problems.append((DEGRADED, f"health check failed: {exc!r}"))
            status = max((p[0] for p in problems), key=_RANK.__getitem__, default=OK)
            comps[name] = {"status": status, "problems": [p[1] for p in problems]}
        status = max((c["status"] for c in comps.values()), key=_RANK.__getitem__, default=OK)
        return {"process": self.process, "status": status, "uptime_s": round(time.time() - self.started, 1),
                "components": comps}


class EdgeMetrics:
    """An edge node: readings per source, the forwarder's batches, the spool, the broker link, readers."""

    def __init__(self, registry: CollectorRegistry, health: Health, *, spool_age_warn_s: float = 120.0) -> None:
        self.readings = Counter("qctrace_edge_readings", "Readings taken from devices, per source", ["source"],
                                registry=registry)
        self.gaps = Counter("qctrace_edge_gaps", "Gap records (readings known to be missing), per source",
                            ["source"], registry=registry)
        self.registry = registry
        self.health = health
        self.spool_age_warn_s = spool_age_warn_s
        self._broker_down = _Since()

    def counting(self, publish: Callable[[Any], Awaitable[None]]) -> Callable[[Any], Awaitable[None]]:
        """Wrap a reader's publish so readings and gaps are counted per source on their way to the spool."""

        async def publish_counted(item: Any) -> None:
            if isinstance(item, Gap):
                self.gaps.labels(item.source).inc()
            elif isinstance(item, pa.RecordBatch | pa.Table) and item.num_rows:
                for row in pc.value_counts(source_keys(item)).to_pylist():
                    self.readings.labels(row["values"]).inc(row["counts"])
            await publish(item)

        return publish_counted

    def watch(self, fwd: Any, link: Any, readers: list[Any]) -> None:
        """Forwarder (stats, spool), link (``up``) and readers (``state``) are read at scrape time."""
        spool = fwd.spool

        def families() -> Iterable[Any]:
            s = fwd.stats
            yield _counter("qctrace_edge_batches_spooled", "Batches written to the spool", s.published)
            yield _counter("qctrace_edge_batches_sent", "Batches sent to the broker (first time)", s.sent)
            yield _counter("qctrace_edge_batches_resent", "Batches sent again (no commit ack in time)", s.resent)
            yield _counter("qctrace_edge_batches_acknowledged", "Batches ingest acknowledged as committed", s.acked)
            yield _gauge("qctrace_edge_spool_depth_records", "Records in the spool not yet acknowledged", spool.depth)
            yield _gauge("qctrace_edge_spool_bytes", "Bytes of spool segments on disk", spool.bytes)
            yield _gauge("qctrace_edge_spool_oldest_age_seconds", "Age of the oldest unacknowledged record",
                         spool.oldest_age_s())
            yield _gauge("qctrace_edge_broker_connected", "1 when the MQTT link is up", 1.0 if link.up else 0.0)
            yield _counter("qctrace_edge_publishes_refused", "Publishes the broker refused (ACL: not authorized)",
                           getattr(link, "publish_refused", 0))
            g = GaugeMetricFamily("qctrace_edge_reader_open", "1 while a reader is open (its lifecycle state)",
                                  labels=["reader"])
            for r in readers:
                g.add_metric([_reader_name(r)], 1.0 if getattr(r.state, "value", "") == "open" else 0.0)
            yield g

        self.registry.register(_Pull(families))

        def spool_check() -> list[Problem]:
            age = spool.oldest_age_s()
            if spool.depth and age > self.spool_age_warn_s:
                return [(DEGRADED, f"spool oldest record {age:.0f} s old ({spool.depth} records waiting)")]
            return []

        def link_check() -> list[Problem]:
            since = self._broker_down.update(not link.up)
            return [] if since is None else [(DEGRADED, f"broker disconnected since {clock(since)}"
                                                         f" (readings are spooled: {spool.depth} waiting)")]

        refusals = {"n": 0, "at": 0.0}

        def refusal_check() -> list[Problem]:
            n = getattr(link, "publish_refused", 0)
            if n > refusals["n"]:
                refusals.update(n=n, at=time.time())
            if n and time.time() - refusals["at"] < REFUSAL_MEMORY_S:  # nothing this node sends arrives
                why = getattr(getattr(link, "_conn", None), "last_publish_refusal", "") or "refused"
                return [(DOWN, f"broker refused {n} publishes ({why}), the last at {clock(refusals['at'])}:"
                               " readings stay spooled, none reach ingest; is mqtt.username this node's name?")]
            return []

        def readers_check() -> list[Problem]:
            closed = [_reader_name(r) for r in readers if getattr(r.state, "value", "") != "open"]
            return [(DEGRADED, f"reader {n} not open") for n in closed]

        self.health.add("spool", spool_check)
        self.health.add("broker", link_check)
        self.health.add("broker", refusal_check)
        if readers:
            self.health.add("readers", readers_check)


def _reader_name(r: Any) -> str:
    return str(getattr(r, "endpoint", None) or getattr(r, "port", None) or getattr(r, "name", "reader"))


class IngestMetrics:
    """An ingest worker: readings in/out, commits and their latency, detection time, end-to-end lag,
    quarantine, alarms by priority, ledger checkpoint and anchoring state."""

    def __init__(self, registry: CollectorRegistry, health: Health, *, commit_stale_s: float = 30.0) -> None:
        self.registry = registry
        self.health = health
        self.commit_stale_s = commit_stale_s
        self.commits = Counter("qctrace_ingest_commits", "Durable Parquet commits", registry=registry)
        self.commit_seconds = Histogram("qctrace_ingest_commit_seconds", "Time to commit (detector state + Parquet)",
                                        registry=registry,
                                        buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
        self.detect_seconds = Histogram("qctrace_ingest_detect_seconds", "Anomaly detection time per batch",
                                        registry=registry,
                                        buckets=(.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .5))
        self.lag_seconds = Histogram("qctrace_ingest_end_to_end_lag_seconds",
                                     "Commit time minus the source timestamp of each batch's oldest reading",
                                     registry=registry, buckets=(.1, .25, .5, 1, 2, 5, 10, 30, 60, 300, 900, 3600))
        self.alarms = Counter("qctrace_ingest_alarms_raised", "Alarms raised, by priority", ["priority"],
                              registry=registry)
        self.last_commit: float | None = None
        self._broker_down = _Since()

    # The Ingest observer protocol (ingest/pipeline.py calls these when ``ingest.observer`` is set).
    def detected(self, seconds: float) -> None:
        self.detect_seconds.observe(seconds)

    def committed(self, seconds: float, oldest_ts_ns: list[int]) -> None:
        now = time.time()
        self.last_commit = now
        self.commits.inc()
        self.commit_seconds.observe(seconds)
        for ts in oldest_ts_ns:
            self.lag_seconds.observe(max(0.0, now - ts / 1e9))

    def counting_alarms(self, on_facts: Callable[[list], list]) -> Callable[[list], list]:
        """Wrap the alarm feed: every RAISE transition it returns is counted by its alarm's priority."""

        def counted(facts: list) -> list:
            out = on_facts(facts)
            for f in out:
                alarm, action = getattr(f, "alarm", None), getattr(f, "action", None)
                if alarm is not None and str(getattr(action, "value", action)) == "raised":
                    self.alarms.labels(str(alarm.priority)).inc()
            return out

        return counted

    def watch(self, ingest: Any, receiver: Any = None, source: Any = None, ledger: Any = None,
              checkpointer: Any = None) -> None:
        ingest.observer = self

        def families() -> Iterable[Any]:
            st = ingest.stats
            yield _counter("qctrace_ingest_readings_in", "Readings received (duplicates included)", st.readings_in)
            yield _counter("qctrace_ingest_readings_committed", "Readings durably committed to Parquet",
                           ingest.sink.rows_committed)
            yield _counter("qctrace_ingest_duplicates_dropped", "Redelivered readings dropped", st.duplicates)
            yield _counter("qctrace_ingest_batches", "Batches received", st.batches)
            yield _gauge("qctrace_ingest_pending_rows", "Rows buffered, not yet committed", ingest.sink.pending_rows)
            if receiver is not None:
                yield _counter("qctrace_ingest_quarantined_payloads", "Payloads refused and kept in quarantine/",
                               receiver.quarantined)
            if source is not None:
                yield _gauge("qctrace_ingest_broker_connected", "1 when the MQTT link is up",
                             1.0 if _source_up(source) else 0.0)
            if ledger is not None:
                yield _gauge("qctrace_ledger_events", "Events in the provenance ledger", len(ledger))
            if checkpointer is not None:
                yield _gauge("qctrace_ledger_last_checkpoint_size", "Ledger size at the last signed checkpoint",
                             checkpointer.last)
                anchored = _last_anchored(checkpointer)
                yield _gauge("qctrace_ledger_last_anchored_size",
                             "Ledger size at the last anchored checkpoint (0: none)", anchored)

        self.registry.register(_Pull(families))

        def commit_check() -> list[Problem]:
            if ingest.commit_error is not None:
                return [(DOWN, f"commits failing: {ingest.commit_error}")]
            pending = ingest.sink.pending_rows
            since = self.last_commit or self.health.started
            idle = time.time() - since
            if pending and idle > self.commit_stale_s:
                return [(DEGRADED, f"no commit for {idle:.0f} s ({pending} rows waiting)")]
            return []

        self.health.add("sink", commit_check)
        if source is not None:
            def link_check() -> list[Problem]:
                since = self._broker_down.update(not _source_up(source))
                return [] if since is None else [(DEGRADED, f"broker disconnected since {clock(since)}")]
            self.health.add("broker", link_check)


def _source_up(source: Any) -> bool:
    conn = getattr(source, "_conn", None)
    return conn is not None and conn.connected.is_set()


def _last_anchored(checkpointer: Any) -> int:
    from ledger.publish import anchor_files

    files = anchor_files(checkpointer.dir)
    return files[-1][0] if files else 0


class SimMetrics:
    """The simulated plant: readings produced (read from the plant when scraped)."""

    def __init__(self, registry: CollectorRegistry, produced: Callable[[], dict[str, int]]) -> None:
        def families() -> Iterable[Any]:
            c = CounterMetricFamily("qctrace_sim_readings_produced", "Readings the simulated plant produced",
                                    labels=["source"])
            for src, n in produced().items():
                c.add_metric([src], n)
            yield c

        registry.register(_Pull(families))


class DashboardMetrics:
    """Page renders in the Streamlit process (one per process: Streamlit reruns the script, not the process)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.renders = Counter("qctrace_dashboard_page_renders", "Dashboard page renders", ["page"],
                               registry=registry)
        self.render_seconds = Histogram("qctrace_dashboard_render_seconds", "Time to render a page", ["page"],
                                        registry=registry, buckets=(.05, .1, .25, .5, 1, 2.5, 5, 10, 30))

    @contextlib.contextmanager
    def rendering(self, page: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:  # Streamlit ends a page with st.stop()/st.rerun() exceptions: still a render
            self.renders.labels(page).inc()
            self.render_seconds.labels(page).observe(time.perf_counter() - t0)


_dashboards: dict[tuple[str, int], DashboardMetrics] = {}
_dashboards_lock = threading.Lock()


def dashboard_metrics(host: str, port: int) -> DashboardMetrics:
    """The Streamlit process's one set (its caches may be cleared; its port stays bound)."""
    with _dashboards_lock:
        if (host, port) not in _dashboards:
            _server, registry, _health = serve("dashboard", host, port)
            _dashboards[(host, port)] = DashboardMetrics(registry)
        return _dashboards[(host, port)]


class MetricsServer:
    """``/metrics`` (Prometheus text) and ``/health`` (JSON; HTTP 503 when down) on a daemon thread.

    The health report is also refreshed every second, so "since" times are when a problem began,
    not when someone first asked."""

    def __init__(self, registry: CollectorRegistry, health: Health, host: str = "127.0.0.1", port: int = 0) -> None:
        self.registry = registry
        self.health = health
        reg, hl = registry, health

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                if path == "/metrics":
                    body, ctype, code = generate_latest(reg), CONTENT_TYPE_LATEST, 200
                elif path in ("/health", "/healthz"):
                    rep = hl.report()
                    body, ctype = json.dumps(rep, indent=1).encode(), "application/json"
                    code = 503 if rep["status"] == DOWN else 200
                else:
                    body, ctype, code = b"qctrace: /metrics or /health\n", "text/plain", 404
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # scrapes are not news
                pass

        try:
            self.httpd = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            raise ConfigError(f"metrics: cannot listen on {host}:{port}: {exc.strerror}; set another port in"
                              " [metrics] (0 turns it off)") from None
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://{host}:{self.port}"
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self.httpd.serve_forever, name="metrics-http", daemon=True),
                         threading.Thread(target=self._tick, name="metrics-health", daemon=True)]

    def _tick(self) -> None:
        while not self._stop.wait(1.0):
            with contextlib.suppress(Exception):
                self.health.report()

    def start(self) -> MetricsServer:
        for t in self._threads:
            t.start()
        log.info("metrics.listening url=%s", self.url)
        return self

    def stop(self) -> None:
        self._stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> MetricsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(process: str, host: str, port: int) -> tuple[MetricsServer | None, CollectorRegistry, Health]:
    """A fresh registry and health for one process object, served on ``port`` unless it is 0 (off).

    The default registry (the serial reader's module-level counters, process and GC metrics) is
    served through it, so a process started twice in one interpreter (tests) never collides."""
    from prometheus_client import REGISTRY

    reg = CollectorRegistry()
    reg.register(_Pull(REGISTRY.collect))
    health = Health(process)
    server = None
    if port:
        try:
            server = MetricsServer(reg, health, host, port).start()
        except QctraceError as exc:
            # Monitoring must not stop a plant's data: run on, loudly, without the endpoint.
            log.error("metrics.off process=%r error=%s", process, exc)
    return server, reg, health


__all__ = ["DEGRADED", "DOWN", "OK", "DashboardMetrics", "EdgeMetrics", "Health", "IngestMetrics",
           "MetricsServer", "SimMetrics", "serve"]

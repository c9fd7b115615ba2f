"""One OPC UA reader process against the 10,000-tag plant: throughput, lag, CPU, for minutes.

The simulator runs the stress plant shape (``--lines`` line PLCs of ``--tags-per-line`` tags at
1 Hz, one server process per line, by default ten of 1,000) at real speed, its endpoints secured
with ``--security`` (default Basic256Sha256 SignAndEncrypt, the reader's default; the reader
trusts the certificates the simulator publishes). Then, in this one process:

1. Baseline: plain asyncua clients (``Client.create_subscription`` with a handler that only counts)
   subscribed to every tag for ``--baseline-s`` seconds: notifications/s and CPU.
2. The qctrace reader (one ``OpcUaReader`` per server, 1 s publishing interval) for ``--minutes``:
   notifications/s, CPU of this process (``resource.getrusage``, less the time spent in this
   bench's own bookkeeping of the batches the reader publishes), and the lag from each reading's
   source time to the reader's receive time, at the start (first minute) and at the end (last
   minute) as p50/p99. The simulated clock is mapped onto the wall clock by the servers' own
   stamps (ServerTimestamp is the wall-clock time of each write; the smallest server-minus-source
   difference seen in the baseline is the offset), so the lag runs from the moment the PLC wrote
   the tick's first value. When the plant stops, every tag must have been read up to its last
   tick, and no sample between a tag's first and last reading may be missing. ``delivery_*`` is
   the time from the server's write (its ServerTimestamp) to receipt, sampled once per publish
   response: if the source lag grows and delivery does not, the plant is late, not the reader.

``python bench/edge_opcua.py`` (10 minutes) or ``--quick`` (2 lines of 50 tags, seconds). The
last line of output is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
from asyncua import Client, ua

from edge import BatchBuilder, OpcUaReader, SeqAllocator, StreamTable
from edge.opcua_pki import POLICY_CLASSES, ensure_client_certificate
from qctrace.config import OpcUaClientConfig

_SCENARIO = """
[plant]
start = "{start}"
tick_s = 1.0
[[sites]]
name = "stress"
  [[sites.lines]]
  name = "line{{i:02d}}"
  count = {lines}
  lot_every_s = 600
  lot_prefix = "LOT-S-L{{i:02d}}-"
    [[sites.lines.devices]]
    name = "plc"
      [[sites.lines.devices.tags]]
      name = "t{{i:04d}}"
      count = {tags}
      unit = "bar"
      nominal = 50.0
      noise = 1.0
      eu_range = [0.0, 100.0]
"""


def _cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


class _Sim:
    """The simulator as a child process driven over its --control pipe."""

    def __init__(self, work: Path, lines: int, tags: int, security: str) -> None:
        scenario = work / "bench.toml"
        start = datetime.now(UTC).replace(microsecond=0)
        self.start_ns = int(start.timestamp()) * 10**9
        scenario.write_text(_SCENARIO.format(start=start.strftime("%Y-%m-%dT%H:%M:%SZ"), lines=lines, tags=tags))
        self.pub = work / "pub"
        cmd = [sys.executable, "-m", "qctrace", "sim", str(scenario), "--speed", "1", "--control",
               "--processes"]
        if security != "None":
            cmd += ["--secure", "--cert-dir", str(work / "srv"), "--publish-cert", str(self.pub)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    async def expect(self, event: str) -> dict:
        assert self.proc.stdout is not None
        while True:
            line = await asyncio.to_thread(self.proc.stdout.readline)
            if not line:
                raise RuntimeError(f"the simulator exited before {event!r}")
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if msg.get("event") == event:
                return msg

    def tell(self, cmd: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()


class _Count:
    """Counts notifications, and keeps server-minus-source time of the first ones: the simulated
    clock's offset to the wall clock (the server stamps each write with the wall clock)."""

    def __init__(self) -> None:
        self.n = 0
        self.offsets: list[float] = []

    def status_change_notification(self, status) -> None:
        pass

    def datachange_notification(self, node, val, data) -> None:
        self.n += 1
        if len(self.offsets) < 50_000:
            dv = data.monitored_item.Value
            if dv.ServerTimestamp is not None and dv.SourceTimestamp is not None:
                self.offsets.append((dv.ServerTimestamp - dv.SourceTimestamp).total_seconds())


async def baseline(endpoints: list[str], tags: int, seconds: float, opts: OpcUaClientConfig, pki: Path,
                   pub: Path) -> dict:
    """Plain asyncua clients and subscriptions, a handler that only counts: the reference cost."""
    handler = _Count()
    clients, subs = [], []
    for url in endpoints:
        c = Client(url, timeout=30, watchdog_intervall=30)  # as patient as the reader: load is not a dead link
        if opts.security_policy != "None":
            cert, key = await ensure_client_certificate(pki, opts.application_uri)
            c.application_uri = opts.application_uri
            port = url.rsplit(":", 1)[1].split("/")[0]
            await c.set_security(POLICY_CLASSES[opts.security_policy], str(cert), str(key),
                                 server_certificate=str(pub / f"server-{port}-cert.der"),
                                 mode=getattr(ua.MessageSecurityMode, opts.mode_name))
        await c.connect()
        clients.append(c)
        line = f"line{len(clients) - 1:02d}"
        sub = await c.create_subscription(1000, handler, queue_maxsize=100_000)
        nodes = [c.get_node(f"ns=2;s=stress/{line}/plc/t{i:04d}") for i in range(tags)]
        await sub.subscribe_data_change(nodes, queuesize=10)
        subs.append(sub)
    await asyncio.sleep(min(3.0, seconds))  # initial values and first publishes out of the way
    n0, cpu0, t0 = handler.n, _cpu_s(), time.perf_counter()
    await asyncio.sleep(seconds)
    n1, cpu1, t1 = handler.n, _cpu_s(), time.perf_counter()
    for sub in subs:
        await sub.delete()
    for c in clients:
        await c.disconnect()
    return {"baseline_asyncua_notifications_per_s": round((n1 - n0) / (t1 - t0)),
            "baseline_asyncua_cpu_pct": round(100 * (cpu1 - cpu0) / (t1 - t0), 1),
            "_clock_offset_ns": int(min(handler.offsets) * 1e9)}


class _Lag:
    """Receive-minus-source time of every reading, kept per second of the run, and per tag the
    first and last sample seen and how many (NumPy, per batch)."""

    def __init__(self, lines: int, tags: int) -> None:
        self.per_s: dict[int, list[np.ndarray]] = {}
        self.rows = 0
        self.t0 = time.monotonic()
        self.tags = tags
        self.first = np.full(lines * tags, np.iinfo(np.int64).max, dtype=np.int64)
        self.last = np.zeros(lines * tags, dtype=np.int64)
        self.count = np.zeros(lines * tags, dtype=np.int64)
        self.delivery: list[tuple[float, int]] = []  # (run second, receive minus server stamp), one per publish
        self.cpu_s = 0.0

    @staticmethod
    def _codes(col: pa.DictionaryArray, parse) -> np.ndarray:
        table = np.array([parse(v) for v in col.dictionary.to_pylist()], dtype=np.int64)
        return table[col.indices.to_numpy(zero_copy_only=False)]

    async def __call__(self, item) -> None:
        """The reader's publish: the bench's own bookkeeping, timed so it is not billed to the reader."""
        c0 = time.process_time()
        try:
            self._count(item)
        finally:
            self.cpu_s += time.process_time() - c0

    def _count(self, item) -> None:
        if not isinstance(item, pa.RecordBatch):
            return
        ts = item.column("ts").cast(pa.int64()).to_numpy()
        self.per_s.setdefault(int(time.monotonic() - self.t0), []).append(
            item.column("recv_ts").cast(pa.int64()).to_numpy() - ts)
        key = (self._codes(item.column("line"), lambda v: int(v[4:])) * self.tags
               + self._codes(item.column("sensor"), lambda v: int(v[1:])))
        np.minimum.at(self.first, key, ts)
        np.maximum.at(self.last, key, ts)
        np.add.at(self.count, key, 1)
        self.rows += item.num_rows

    def delivery_window(self, a: float, b: float) -> np.ndarray:
        return np.array([d for s, d in self.delivery if a <= s < b] or [0], dtype=np.int64)

    def missing(self) -> int:
        """Samples between each tag's first and last reading (1 Hz) that never arrived."""
        seen = self.count > 0
        return int(((self.last[seen] - self.first[seen]) // 10**9 + 1).sum() - self.count[seen].sum())

    def window(self, a: float, b: float) -> np.ndarray:
        parts = [x for s, xs in self.per_s.items() if a <= s < b for x in xs]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def _sample_delivery(r: OpcUaReader, lag: _Lag) -> None:
    """Server write to reader receive, for the first item of each publish response: tells a late
    plant (source lag grows, delivery does not) from a late reader (both grow). One item per
    response, so it costs the reader nothing per reading."""
    on_publish = r._on_publish

    def sampled(result: ua.PublishResult) -> None:
        for notif in result.NotificationMessage.NotificationData or ():
            if isinstance(notif, ua.DataChangeNotification) and notif.MonitoredItems:
                stamp = notif.MonitoredItems[0].Value.ServerTimestamp
                if stamp is not None:
                    lag.delivery.append((time.monotonic() - lag.t0, time.time_ns() - int(stamp.timestamp() * 1e9)))
                break
        on_publish(result)

    r._on_publish = sampled


async def run(args: argparse.Namespace) -> dict:
    opts = OpcUaClientConfig(security_policy=args.security, backoff_initial_s=0.5)
    with tempfile.TemporaryDirectory(prefix="qctrace-bench-opcua-") as d:
        work = Path(d)
        sim = _Sim(work, args.lines, args.tags_per_line, args.security)
        try:
            ready = await sim.expect("ready")
            endpoints = ready["opcua"]
            sim.tell("start")
            out = {"tags": args.lines * args.tags_per_line, "servers": len(endpoints),
                   "security": f"{opts.security_policy}/{opts.mode_name}", "publishing_interval_ms": 1000}
            out.update(await baseline(endpoints, args.tags_per_line, args.baseline_s, opts, work / "pki-base",
                                      sim.pub))
            print(json.dumps(out), file=sys.stderr, flush=True)
            offset = out.pop("_clock_offset_ns")
            lag = _Lag(args.lines, args.tags_per_line)
            streams = StreamTable()
            readers = [OpcUaReader(url, BatchBuilder(streams, SeqAllocator(None)), lag, publishing_interval_ms=1000,
                                   queue_size=10, batch_max_rows=10_000, batch_max_age_s=0.5, opts=opts,
                                   data_dir=work, trusted_certs=tuple(sim.pub.glob("*.der")))
                       for url in endpoints]
            for r in readers:
                _sample_delivery(r, lag)
            t_open = time.perf_counter()
            for r in readers:  # one after another: ten RSA handshakes at once can outlast a request timeout
                await r.__aenter__()
            out["subscribe_s"] = round(time.perf_counter() - t_open, 2)
            stop = asyncio.Event()
            tasks = [asyncio.create_task(r.run(stop)) for r in readers]
            await asyncio.sleep(args.warmup_s)
            measured = args.minutes * 60
            s0 = time.monotonic() - lag.t0
            n0, cpu0, t0 = sum(r.notifications for r in readers), _cpu_s() - lag.cpu_s, time.perf_counter()
            every = max(10.0, measured / 10)
            left = measured
            while left > 0:
                await asyncio.sleep(min(every, left))
                left -= every
                cpu = _cpu_s() - lag.cpu_s - cpu0
                print(json.dumps({"elapsed_s": round(time.perf_counter() - t0), "notifications":
                                  sum(r.notifications for r in readers) - n0,
                                  "cpu_pct": round(100 * cpu / (time.perf_counter() - t0), 1)}),
                      file=sys.stderr, flush=True)
            n1, cpu1, t1 = sum(r.notifications for r in readers), _cpu_s() - lag.cpu_s, time.perf_counter()
            s1 = time.monotonic() - lag.t0
            sim.tell("stop")
            produced = sum((await sim.expect("stopped"))["produced"].values())
            final_ts = sim.start_ns + (produced // len(lag.count) - 1) * 10**9  # every tag, every tick
            deadline = time.perf_counter() + 90  # a loaded plant may be seconds behind
            while lag.last.min() < final_ts and time.perf_counter() < deadline:
                await asyncio.sleep(0.2)
            stop.set()
            await asyncio.gather(*tasks)
            for r in readers:
                await r.__aexit__(None, None, None)
            sim.tell("quit")
        finally:
            try:
                sim.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                sim.proc.kill()
    span = min(60.0, (s1 - s0) / 3)
    start, end = lag.window(s0, s0 + span) - offset, lag.window(s1 - span, s1) - offset
    wall = t1 - t0
    out.update({
        "minutes": round(wall / 60, 2),
        "notifications_per_s": round((n1 - n0) / wall),
        "reader_cpu_pct": round(100 * (cpu1 - cpu0) / wall, 1),
        "lag_start_p50_ms": round(float(np.percentile(start, 50)) / 1e6, 1),
        "lag_start_p99_ms": round(float(np.percentile(start, 99)) / 1e6, 1),
        "lag_end_p50_ms": round(float(np.percentile(end, 50)) / 1e6, 1),
        "lag_end_p99_ms": round(float(np.percentile(end, 99)) / 1e6, 1),
        "delivery_start_p50_ms": round(float(np.percentile(lag.delivery_window(s0, s0 + span), 50)) / 1e6, 1),
        "delivery_end_p50_ms": round(float(np.percentile(lag.delivery_window(s1 - span, s1), 50)) / 1e6, 1),
        "readings_received": lag.rows,
        "readings_missing": lag.missing(),
        "tags_read_to_the_last_tick": int((lag.last >= final_ts).sum()),
        "gaps": sum(r.gaps_sent for r in readers),
    })
    out["cpu_ratio_vs_asyncua_handler"] = round(
        (out["reader_cpu_pct"] / max(1, out["notifications_per_s"]))
        / max(1e-9, out["baseline_asyncua_cpu_pct"] / max(1, out["baseline_asyncua_notifications_per_s"])), 3)
    out["machine"] = f"{platform.machine()} {os.cpu_count()} cpu, Python {platform.python_version()}"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0, help="measured reader window (default 10)")
    ap.add_argument("--lines", type=int, default=10, help="line PLC servers, one process each (default 10)")
    ap.add_argument("--tags-per-line", type=int, default=1000, help="tags per server at 1 Hz (default 1000)")
    ap.add_argument("--security", default="Basic256Sha256",
                    choices=["Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss", "None"],
                    help="security policy of the endpoints and the reader (SignAndEncrypt)")
    ap.add_argument("--baseline-s", type=float, default=60.0, help="plain asyncua baseline window, seconds")
    ap.add_argument("--warmup-s", type=float, default=10.0, help="reader warm-up before the window opens")
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 lines of 50 tags, a few seconds")
    args = ap.parse_args()
    if args.quick:
        args.lines, args.tags_per_line, args.minutes, args.baseline_s, args.warmup_s = 2, 50, 0.05, 1.5, 1.5
    print(json.dumps(asyncio.run(run(args))))


if __name__ == "__main__":
    main()

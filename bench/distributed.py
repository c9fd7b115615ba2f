"""Distributed mode: latency under faults on the 10,000-tag plant, and throughput with 1 and 2 ingest workers.

Runs alone: ``python bench/distributed.py [--minutes M] [--quick]``. Two parts:

- **latency**: the fault campaign (``qctrace.campaign``) on the ``stress`` scenario (ten PLC server
  processes, 10,000 tags at 1 Hz, real time) through 2 edge node processes, a private Mosquitto
  and 2 ingest worker processes, while ingest workers and edge nodes are killed with SIGKILL and
  the broker is crashed at random (one fault every ``--fault-every`` seconds on average). Latency
  is per reading, from the moment the simulator sent it (its source time, mapped to wall time by
  the simulator's own report of when tick 0 was) to its Parquet commit (the file's mtime: files are
  written and fsynced just before their commit record). The oracle must find nothing missing
  outside a gap record and nothing written twice.
- **throughput**: 4 edge nodes in this process (spool with fdatasync, forwarder, MQTT QoS 1), each
  with a plant of its own (1,000 sensors), publish 2 M readings as fast as the spool takes them, to
  1 and then 2 ``qctrace ingest`` processes; the clock stops when every spool is empty (every batch committed and
  acknowledged). The ratio of the two is reported as it is: on a 2-core machine the edge, the
  broker and the workers share the cores, so a second worker adds little.

The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# bench/ holds ledger.py and sink.py, which would shadow the packages of those names.
HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]

import pyarrow as pa  # noqa: E402

from edge.forward import Forwarder  # noqa: E402
from edge.mqtt import MqttLink  # noqa: E402
from edge.spool import Spool  # noqa: E402
from ingest.sink import read_dataset  # noqa: E402
from qctrace.broker import LocalBroker  # noqa: E402
from qctrace.campaign import run_campaign  # noqa: E402
from qctrace.config import MqttConfig  # noqa: E402

_spec = importlib.util.spec_from_file_location("bench_transport", HERE / "transport.py")
_transport = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_transport)
make_batches = _transport.make_batches  # the same readings as bench/transport.py

NODES = 4


def bench_latency(minutes: float, fault_every_s: float, work: Path) -> dict:
    res = run_campaign(work, seed=11, duration_s=minutes * 60, scenario="stress", speed=1.0,
                       faults=("kill_ingest", "kill_edge", "crash_broker"), mean_interval_s=fault_every_s,
                       edges=2, workers=2, measure_latency=True,
                       overrides={"sink.flush_age_s": 0.5},
                       say=lambda s: print(s, flush=True))
    print("\n".join(res.lines()), flush=True)
    produced = sum(res.produced.values())
    lm = res.latency_ms
    return {"latency_p50_ms": round(res.latency_ms.get("p50", float("nan")), 1),
            "latency_p99_ms": round(res.latency_ms.get("p99", float("nan")), 1),
            "latency_max_ms": round(res.latency_ms.get("max", float("nan")), 1),
            "latency_p50_outside_outages_ms": round(res.latency_ms.get("p50_outside_outages", float("nan")), 1),
            "latency_p99_outside_outages_ms": round(res.latency_ms.get("p99_outside_outages", float("nan")), 1),
            "readings_late_from_outages": int(res.latency_ms.get("in_outages", 0)),
            "recovery_to_under_2s_p50_s": round(res.latency_ms.get("recovery_p50_s", float("nan")), 1),
            "recovery_to_under_2s_max_s": round(res.latency_ms.get("recovery_max_s", float("nan")), 1),
            "readings_sent_while_recovering_share": round(res.latency_ms.get("recovering_share", float("nan")), 4),
            "latency_p99_between_faults_ms": round(res.latency_ms.get("p99_between_faults", float("nan")), 1),
            "latency_from_edge_receipt_p50_ms": round(res.latency_ms.get("p50_from_edge", float("nan")), 1),
            "latency_from_edge_receipt_p99_ms": round(res.latency_ms.get("p99_from_edge", float("nan")), 1),
            "readings_over_2s": int(lm.get("over_goal", 0)),
            "readings_over_2s_share": round(lm.get("over_goal", 0) / max(1, lm.get("readings", 1)), 5),
            **{f"readings_over_2s_{k.removeprefix('over_goal_')}": int(v) for k, v in lm.items()
               if k.startswith("over_goal_after_")},
            "campaign_readings_per_s": round(produced / (minutes * 60)),
            "campaign_produced": produced, "campaign_written": sum(res.written.values()),
            "campaign_in_gaps": sum(res.in_gaps.values()), "campaign_missing": sum(res.unexplained.values()),
            "campaign_duplicated": res.duplicated,
            "campaign_samples_repeated": res.samples_repeated, "campaign_faults": dict(res.faults),
            "campaign_mean_s_between_faults": round(minutes * 60 / max(1, sum(res.faults.values())), 1),
            "campaign_ledger_verified": res.ledger_verified}


async def _publish_all(port: int, batches: list[pa.RecordBatch], tmp: Path) -> tuple[float, int]:
    """NODES forwarders in this process, the batches dealt out among them; seconds until all but
    the warm-up batches are committed, and how many readings that was."""
    fwds = []
    for i in range(NODES):
        spool = Spool(tmp / f"spool{i}", max_bytes=8 << 30, segment_bytes=64 << 20, fsync=True)
        link = await MqttLink(MqttConfig(port=port), f"node{i}").start()
        fwds.append(Forwarder(f"node{i}", spool, link, window=64, resend_after_s=30.0))
    stop = asyncio.Event()
    tasks = [asyncio.create_task(f.run(stop)) for f in fwds]
    # Warm-up: one batch per node, committed, so every node has its worker before the clock starts
    # (what an edge sends before any worker has subscribed to it is resent after resend_after_s).
    for k, f in enumerate(fwds):
        await f.publish(batches[k])  # batch k is of plant k
    while any(f.spool.depth for f in fwds):
        await asyncio.sleep(0.05)
    batches = batches[len(fwds):]
    t0 = time.perf_counter()
    for k, b in enumerate(batches):
        f = fwds[k % NODES]  # batch k is of plant k % NODES (node_batches)
        await f.publish(b)
        await asyncio.sleep(0)  # let the pumps run between batches, as between a reader's (bench/transport.py)
    while any(f.spool.depth for f in fwds):
        await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - t0
    stop.set()
    await asyncio.gather(*tasks)
    for f in fwds:
        await f.link.close()
        f.spool.close()
    return elapsed, sum(b.num_rows for b in batches)


def node_batches(n: int, batch: int) -> list[pa.RecordBatch]:
    """bench/transport.py's readings, a plant of their own per node (site ``plantK``: ten lines, one
    PLC of 100 sensors each), interleaved node by node as they would reach the broker. A source
    belongs to one node, as in a real plant."""
    per_node = make_batches(n // NODES, batch)
    out = []
    for b in per_node:
        for k in range(NODES):
            site = b.column("site")
            renamed = pa.DictionaryArray.from_arrays(site.indices, pa.array([f"plant{k}"]))
            out.append(b.set_column(b.schema.get_field_index("site"), b.schema.field("site"), renamed))
    return out


def bench_throughput(workers: int, batches: list[pa.RecordBatch], tmp: Path) -> tuple[float, int, int, int]:
    tmp.mkdir(parents=True, exist_ok=True)
    conf = tmp / "ingest.toml"
    with LocalBroker(tmp / "broker") as broker:
        conf.write_text(f'data_dir = "{tmp / "data"}"\n[mqtt]\nport = {broker.port}\n[sink]\nflush_rows = 500000\n'
                        'flush_age_s = 0.5\ncompact_every_s = 0\n[metrics]\ningest_port = 0\n')
        procs = [subprocess.Popen([sys.executable, "-m", "qctrace", "ingest", str(conf), "--worker", f"w{i + 1}"],
                                  stdout=subprocess.PIPE, text=True) for i in range(workers)]
        try:
            for p in procs:
                assert p.stdout.readline().startswith("ingest w")
            elapsed, timed = asyncio.run(_publish_all(broker.port, batches, tmp))
        finally:
            for p in procs:
                p.terminate()
                p.wait(60)
    table = read_dataset(tmp / "data" / "readings")
    keys = pa.table({"site": table.column("site").cast(pa.string()), "line": table.column("line").cast(pa.string()),
                     "seq": table.column("seq")})
    distinct = keys.group_by(["site", "line", "seq"]).aggregate([]).num_rows
    return elapsed, timed, distinct, table.num_rows - distinct


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=5.0, help="length of the latency run under faults")
    ap.add_argument("--fault-every", type=float, default=30.0, metavar="S", help="mean seconds between faults")
    ap.add_argument("--readings", type=int, default=2_000_000, help="readings for the throughput part")
    ap.add_argument("--quick", action="store_true", help="1-minute latency run, 200,000 readings")
    ap.add_argument("--part", choices=("all", "latency", "throughput"), default="all")
    args = ap.parse_args()
    minutes = 1.0 if args.quick else args.minutes
    n = 200_000 if args.quick else args.readings
    result: dict = {"machine": f"{platform.machine()} {os.cpu_count()} cpus, Python {platform.python_version()}"}
    with tempfile.TemporaryDirectory(prefix="qctrace-bench-distributed-") as d:
        tmp = Path(d)
        if args.part in ("all", "throughput"):
            batches = node_batches(n, 10_000)
            rates = {}
            for w in (1, 2):
                elapsed, timed, distinct, doubled = bench_throughput(w, batches, tmp / f"tp{w}")
                rates[w] = timed / elapsed
                print(f"{w} ingest worker(s): {rates[w]:,.0f} readings/s ({timed} readings from {NODES} edge nodes in"
                      f" {elapsed:.2f} s after a warm-up batch each; {n - distinct} lost, {doubled} doubled)",
                      flush=True)
                result[f"lost_readings_{w}_workers"] = n - distinct
                result[f"doubled_readings_{w}_workers"] = doubled
            result.update({"readings_per_s_1_worker": round(rates[1]), "readings_per_s_2_workers": round(rates[2]),
                           "ratio_2_vs_1_workers": round(rates[2] / rates[1], 3), "throughput_readings": n})
        if args.part in ("all", "latency"):
            result.update(bench_latency(minutes, args.fault_every, tmp / "latency"))
            result["goal_latency_p99_ms"] = 2000
    print(json.dumps(result))


if __name__ == "__main__":
    main()

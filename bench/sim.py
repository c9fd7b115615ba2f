"""The simulated plant under load, and replay speed.

1. Live: the 10,000-tag stress plant (ten line-server processes of 1,000 tags at 1 Hz) runs for
   ``--duration`` seconds (5 minutes by default) with one client process subscribed to every tag
   through qctrace's OPC UA reader. Every value change the servers made is counted against every
   notification the client got. CPU of the server processes and of the client is read from /proc.
2. Replay: ``--replay-ticks`` ticks of the same plant (1,000 ticks = 10 million readings) written
   straight to Parquet, against a plain ``pyarrow.parquet.write_table`` of the same rows in the
   same run.

Runs alone: ``python bench/sim.py [--duration S] [--replay-ticks N]``. The last line of output is
one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from edge import BatchBuilder, OpcUaReader, SeqAllocator, StreamTable
from firmware_sim.replay import replay
from firmware_sim.scenario import load_scenario
from qctrace.config import OpcUaClientConfig

_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> float:
    """User+system CPU seconds of a process and all its descendants that are still alive."""
    total = 0.0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / _TICK
            for t in Path(f"/proc/{p}/task").iterdir():
                kids = (t / "children").read_text().split()
                todo += [int(k) for k in kids]
        except (OSError, IndexError, ValueError):
            continue
    return total


async def live(duration_s: float, warmup_s: float) -> dict:
    proc = subprocess.Popen([sys.executable, "-m", "qctrace", "sim", "stress", "--speed", "1", "--control"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdin and proc.stdout
    ready = json.loads(await asyncio.to_thread(proc.stdout.readline))
    endpoints = ready["opcua"]
    streams = StreamTable()
    received = [0]

    async def count(batch) -> None:
        received[0] += batch.num_rows

    readers = [OpcUaReader(url, BatchBuilder(streams, SeqAllocator(None)), count, publishing_interval_ms=500,
                           queue_size=100, batch_max_rows=10_000, batch_max_age_s=0.5,
                           opts=OpcUaClientConfig(security_policy="None")) for url in endpoints]  # sim, not crypto
    t_sub = time.perf_counter()
    for r in readers:
        await r.__aenter__()
    subscribe_s = time.perf_counter() - t_sub
    stop = asyncio.Event()
    tasks = [asyncio.create_task(r.run(stop)) for r in readers]
    proc.stdin.write("start\n")
    proc.stdin.flush()
    await asyncio.sleep(warmup_s)
    cpu_srv0, cpu_cli0, wall0, rx0 = _cpu_s(proc.pid), time.process_time(), time.perf_counter(), received[0]
    await asyncio.sleep(duration_s)
    cpu_srv1, cpu_cli1, wall1, rx1 = _cpu_s(proc.pid), time.process_time(), time.perf_counter(), received[0]
    proc.stdin.write("stop\n")
    proc.stdin.flush()
    stopped = json.loads(await asyncio.to_thread(proc.stdout.readline))
    produced = sum(stopped["produced"].values())
    deadline = time.perf_counter() + 30
    while sum(r.builder.received_per_source().get(s, 0) for r in readers for s in stopped["produced"]) < produced \
            and time.perf_counter() < deadline:
        await asyncio.sleep(0.2)
    stop.set()
    await asyncio.gather(*tasks)
    for r in readers:
        await r.__aexit__(None, None, None)
    proc.stdin.write("quit\n")
    proc.stdin.flush()
    proc.wait(timeout=60)
    got = received[0]
    window = wall1 - wall0
    return {
        "tags": len(streams.keys),
        "servers": len(endpoints),
        "subscribe_s": round(subscribe_s, 2),
        "duration_s": round(window, 1),
        "value_changes_produced": produced,
        "notifications_received": got,
        "notifications_lost": produced - got,
        "notifications_per_s": round((rx1 - rx0) / window),
        "servers_cpu_cores": round((cpu_srv1 - cpu_srv0) / window, 3),
        "client_cpu_cores": round((cpu_cli1 - cpu_cli0) / window, 3),
    }


def replay_speed(ticks: int) -> dict:
    sc = load_scenario("stress")
    with tempfile.TemporaryDirectory() as d:
        res = replay(sc, 1, Path(d), ticks)
        table = pq.read_table(res.readings_path)
        t0 = time.perf_counter()
        pq.write_table(table, Path(d) / "raw.parquet", compression="zstd")
        raw_s = time.perf_counter() - t0
        size = res.readings_path.stat().st_size
    return {
        "replay_readings": res.readings,
        "replay_s": round(res.seconds, 2),
        "replay_readings_per_s": round(res.readings / res.seconds),
        "raw_write_table_readings_per_s": round(res.readings / raw_s),
        "replay_ratio_vs_raw_write": round(raw_s / res.seconds, 3),
        "replay_bytes_per_reading": round(size / res.readings, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=300.0, help="measured live window, seconds")
    ap.add_argument("--warmup", type=float, default=10.0, help="seconds before the window opens")
    ap.add_argument("--replay-ticks", type=int, default=1000, help="1,000 ticks of the stress plant = 10 M readings")
    args = ap.parse_args()
    out = {"machine": f"{platform.machine()} {os.cpu_count()} cpu, Python {platform.python_version()}"}
    out.update(replay_speed(args.replay_ticks))
    print(json.dumps(out), file=sys.stderr)
    out.update(asyncio.run(live(args.duration, args.warmup)))
    print(json.dumps(out))


if __name__ == "__main__":
    main()

"""Edge → MQTT (QoS 1) → ingest, counted at the far end, against raw paho-mqtt QoS 1 of the same payloads.

Runs alone: ``python bench/transport.py [--readings N] [--batch B] [--quick]``. A private Mosquitto
(the shipped configuration) is started on a free port.

- **qctrace**: this process is the edge: every batch is encoded (``qctrace.wire``), appended to the
  spool with fdatasync, sent by the forwarder over ``MqttLink``; a separate ``qctrace ingest``
  process decodes, deduplicates, runs detection, commits Parquet and acknowledges. The clock stops
  when the spool is empty, i.e. when ingest has acknowledged the commit of every batch; then the
  dataset is checked: every (source, seq) exactly once.
- **raw**: the same payload bytes published with plain paho QoS 1 (no spool, no acknowledgement
  beyond PUBACK) to a plain paho subscriber in another process that only counts messages.

The last line of output is one JSON object.
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

import numpy as np
import pyarrow as pa

from edge.forward import Forwarder
from edge.mqtt import MqttLink
from edge.spool import Spool
from ingest.sink import read_dataset
from qctrace import wire
from qctrace.broker import LocalBroker
from qctrace.config import MqttConfig
from qctrace.schema import READING_SCHEMA

T0 = 1_793_599_200 * 10**9
SOURCES = 10
SENSORS_PER_SOURCE = 100


def make_batches(n: int, batch: int) -> list[pa.RecordBatch]:
    """Readings of 10 sources x 100 sensors at 1 Hz, in batches as an edge node builds them."""
    rng = np.random.default_rng(1)
    out = []
    seq_next = np.zeros(SOURCES, dtype=np.int64)
    tick = 0
    per_tick = SOURCES * SENSORS_PER_SOURCE
    for start in range(0, n, batch):
        m = min(batch, n - start)
        idx = (np.arange(start, start + m) % per_tick)
        src = idx // SENSORS_PER_SOURCE
        sensor = idx % SENSORS_PER_SOURCE
        tick_of = (np.arange(start, start + m) // per_tick)
        seq = np.empty(m, dtype=np.uint64)
        for s in range(SOURCES):
            rows = np.flatnonzero(src == s)
            seq[rows] = np.arange(seq_next[s], seq_next[s] + len(rows), dtype=np.uint64)
            seq_next[s] += len(rows)
        ts = T0 + tick_of * 10**9
        d = lambda codes, names: pa.DictionaryArray.from_arrays(pa.array(codes, pa.int32()), pa.array(names))  # noqa: E731
        cols = [
            pa.array(ts, pa.timestamp("ns", tz="UTC")), pa.array(ts, pa.timestamp("ns", tz="UTC")),
            d(np.zeros(m, np.int32), ["plant1"]),
            d((src % SOURCES).astype(np.int32), [f"line{i}" for i in range(SOURCES)]),
            d(np.zeros(m, np.int32), ["plc1"]),
            d(sensor.astype(np.int32), [f"s{i:03d}" for i in range(SENSORS_PER_SOURCE)]),
            pa.array(100.0 + rng.normal(0, 1, m)), pa.array(np.zeros(m, np.uint8)), pa.array(seq, pa.uint64()),
            d(np.zeros(m, np.int32), ["L-1"]), pa.array(np.zeros(m, np.uint32)),
        ]
        out.append(pa.RecordBatch.from_arrays(cols, schema=READING_SCHEMA))
        tick += 1
    return out


_RAW_SUB = """
import sys, time
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
port, expect = int(sys.argv[1]), int(sys.argv[2])
got = 0
c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="raw-sub", protocol=mqtt.MQTTv5)
def on_message(cl, u, m):
    global got
    got += 1
c.on_message = on_message
c.on_connect = lambda cl, u, f, r, p: cl.subscribe("raw/#", qos=1)
c.connect("127.0.0.1", port)
c.loop_start()
time.sleep(1.0)
print("ready", flush=True)
while got < expect:
    time.sleep(0.002)
print(time.time(), flush=True)
c.loop_stop()
"""


def bench_raw(port: int, payloads: list[bytes]) -> float:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    sub = subprocess.Popen([sys.executable, "-c", _RAW_SUB, str(port), str(len(payloads))], stdout=subprocess.PIPE,
                           text=True)
    assert sub.stdout.readline().strip() == "ready"
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="raw-pub", protocol=mqtt.MQTTv5)
    c.max_inflight_messages_set(64)
    c.connect("127.0.0.1", port)
    c.loop_start()
    t0 = time.time()
    infos = [c.publish(f"raw/{i % SOURCES}", p, qos=1) for i, p in enumerate(payloads)]
    for info in infos:
        info.wait_for_publish(60)
    end = float(sub.stdout.readline())
    sub.wait(30)
    c.loop_stop()
    c.disconnect()
    return end - t0


async def bench_qctrace(port: int, batches: list[pa.RecordBatch], tmp: Path) -> tuple[float, dict]:
    conf = tmp / "ingest.toml"
    conf.write_text(f'data_dir = "{tmp / "data"}"\n[mqtt]\nport = {port}\n[sink]\nflush_rows = 500000\n'
                    'flush_age_s = 0.5\n')
    ingest = subprocess.Popen([sys.executable, "-m", "qctrace", "ingest", str(conf)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert ingest.stdout.readline().startswith("ingest w1:")
        cfg = MqttConfig(port=port)
        spool = Spool(tmp / "spool", max_bytes=8 << 30, segment_bytes=64 << 20, fsync=True)
        link = await MqttLink(cfg, "bench").start()
        fwd = Forwarder("bench", spool, link, window=64, resend_after_s=30.0)
        stop = asyncio.Event()
        task = asyncio.create_task(fwd.run(stop))
        # Warm-up: the first batch committed before the clock starts, so a worker holds this node
        # (what an edge sends before any worker subscribed to it is resent after resend_after_s).
        await fwd.publish(batches[0])
        while spool.depth:
            await asyncio.sleep(0.05)
        batches = batches[1:]
        t0 = time.perf_counter()
        for b in batches:
            await fwd.publish(b)
            # Let the pump run after each batch, as it does between a reader's batches: publish
            # returns once the batch is in the spool without yielding, and a loop that never yields
            # would spool hundreds of batches (an fdatasync each) before the first one is sent.
            await asyncio.sleep(0)
        while spool.depth:
            await asyncio.sleep(0.002)
        elapsed = time.perf_counter() - t0
        stop.set()
        await task
        stats = {"resent": fwd.stats.resent, "spool_bytes_per_reading": None}
        await link.close()
        spool.close()
    finally:
        ingest.terminate()
        ingest.wait(60)
    return elapsed, stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--readings", type=int, default=3_000_000)
    ap.add_argument("--batch", type=int, default=10_000, help="readings per MQTT message (the edge's batch)")
    ap.add_argument("--quick", action="store_true", help="a few seconds: 200,000 readings")
    args = ap.parse_args()
    n = 200_000 if args.quick else args.readings
    batches = make_batches(n, args.batch)
    payloads = [wire.encode("raw", i, b) for i, b in enumerate(batches)]
    with tempfile.TemporaryDirectory(prefix="qctrace-bench-transport-") as d:
        tmp = Path(d)
        with LocalBroker(tmp / "broker") as broker:
            raw_s = bench_raw(broker.port, payloads)
            print(f"raw paho QoS 1: {n / raw_s:,.0f} readings/s ({len(payloads)} messages in {raw_s:.2f} s)")
            q_s, stats = asyncio.run(bench_qctrace(broker.port, batches, tmp))
            nq = n - batches[0].num_rows  # the warm-up batch is not timed
            print(f"qctrace edge → MQTT → ingest (committed, acknowledged): {nq / q_s:,.0f} readings/s in {q_s:.2f} s")
        table = read_dataset(tmp / "data" / "readings")
        keys = pa.table({"line": table.column("line").cast(pa.string()), "seq": table.column("seq")})
        distinct = keys.group_by(["line", "seq"]).aggregate([]).num_rows
        lost = n - distinct
        doubled = table.num_rows - distinct
        print(f"far end: {table.num_rows} rows, {distinct} distinct (source, seq): lost {lost}, doubled {doubled}")
    result = {
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, Python {platform.python_version()}",
        "readings": n, "batch_readings": args.batch,
        "readings_per_s": round(nq / q_s), "raw_paho_qos1_readings_per_s": round(n / raw_s),
        "ratio_vs_raw_paho": round((nq / q_s) / (n / raw_s), 3), "lost_readings": lost, "doubled_readings": doubled,
        "resent_batches": stats["resent"], "goal_readings_per_s": 1_000_000,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()

"""The Parquet sink's sustained write rate against a bare pyarrow ``write_table`` of the same rows.

Runs alone: ``python bench/sink.py [--readings N] [--batch B] [--quick]``. Readings of the simulator's stress
plant (10 lines x 1,000 tags, replayed, flags filled in) are fed to ``ParquetSink`` in batches of
``--batch`` rows as ingest receives them (dedupe, add, commit every ``--flush-rows``); the baseline
writes the same rows, already concatenated, with one ``pyarrow.parquet.write_table`` (zstd) per
partition. Both sides are warmed up first and run ``--repeat`` times (best reported). Also
reported: bytes per reading on disk. The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from firmware_sim.replay import replay
from firmware_sim.scenario import load_scenario
from ingest.sink import ParquetSink
from qctrace.schema import READING_SCHEMA


def readings(n: int, tmp: Path) -> pa.Table:
    sc = load_scenario("stress")
    ticks = max(n // 10_000, 1)
    res = replay(sc, 1, tmp / "replay", ticks)
    t = pq.read_table(res.readings_path)
    t = t.slice(0, n)
    cols = {f.name: t.column(f.name).cast(f.type) if f.name in t.column_names else None for f in READING_SCHEMA}
    cols["flags"] = pa.array([0] * t.num_rows, pa.uint32())
    if cols.get("recv_ts") is None:
        cols["recv_ts"] = t.column("ts").cast(READING_SCHEMA.field("recv_ts").type)
    return pa.Table.from_arrays([cols[f.name] for f in READING_SCHEMA], schema=READING_SCHEMA)


def bench_sink(table: pa.Table, root: Path, batch: int, flush_rows: int) -> float:
    sink = ParquetSink(root / "readings", root / "state", flush_rows=flush_rows, flush_age_s=3600)
    batches = table.to_batches(max_chunksize=batch)
    t = time.perf_counter()
    for b in batches:
        fresh = sink.dedupe(b)
        sink.add(fresh)
        if sink.due():
            sink.flush()
    sink.flush()
    return time.perf_counter() - t


def bench_write_table(table: pa.Table, root: Path) -> float:
    """One write_table per (site, line) partition of the same rows: the floor for the same layout."""
    keys = pc.binary_join_element_wise(table.column("site").cast(pa.string()), table.column("line").cast(pa.string()),
                                       "/")
    t = time.perf_counter()
    enc = pc.dictionary_encode(keys).combine_chunks()
    codes = enc.indices.to_numpy(zero_copy_only=False)
    for k, name in enumerate(enc.dictionary.to_pylist()):
        part = table.filter(pa.array(codes == k)).drop_columns(["site", "line"])
        d = root / name.replace("/", "_")
        d.mkdir(parents=True, exist_ok=True)
        pq.write_table(part, d / "part.parquet", compression="zstd", row_group_size=1 << 20)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--readings", type=int, default=5_000_000)
    ap.add_argument("--batch", type=int, default=5_000, help="rows per batch handed to the sink")
    ap.add_argument("--flush-rows", type=int, default=1_000_000, help="rows per commit")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each side; the best is reported")
    ap.add_argument("--quick", action="store_true", help="200,000 readings, one run (a smoke test)")
    args = ap.parse_args()
    if args.quick:
        args.readings, args.repeat, args.flush_rows = 200_000, 1, 100_000
    tmp = Path(tempfile.mkdtemp(prefix="qctrace-bench-sink-"))
    try:
        table = readings(args.readings, tmp)
        n = table.num_rows
        print(f"{n:,} readings ready", flush=True)
        # Warm up both sides (Numba's cached kernels load, pyarrow's first-call costs), as a running
        # ingest is warm: the goal is the sustained rate.
        warm = table.slice(0, min(n, 50_000))
        bench_sink(warm, tmp / "warm-sink", args.batch, args.flush_rows)
        bench_write_table(warm, tmp / "warm-base")
        sink_s, base_s = [], []
        for r in range(args.repeat):
            shutil.rmtree(tmp / "sink", ignore_errors=True)
            sink_s.append(bench_sink(table, tmp / "sink", args.batch, args.flush_rows))
            base_s.append(bench_write_table(table, tmp / f"base{r}"))
            print(f"run {r + 1}: sink {n / sink_s[-1]:,.0f} readings/s, write_table {n / base_s[-1]:,.0f}", flush=True)
        disk = sum(p.stat().st_size for p in (tmp / "sink" / "readings").rglob("*.parquet"))
        result = {
            "machine": f"{platform.machine()} {platform.python_version()}",
            "readings": n,
            "batch_rows": args.batch,
            "flush_rows": args.flush_rows,
            "runs": args.repeat,
            "sink_readings_per_s": round(n / min(sink_s)),
            "write_table_readings_per_s": round(n / min(base_s)),
            "ratio_vs_write_table": round(min(base_s) / min(sink_s), 3),
            "ratio_per_run": [round(b / s, 3) for b, s in zip(base_s, sink_s, strict=True)],
            "bytes_per_reading": round(disk / n, 2),
            "load_avg_1m": round(os.getloadavg()[0], 2),
        }
        print(json.dumps(result))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

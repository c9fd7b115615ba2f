"""Replay: a scenario's readings and labels straight to Parquet, no servers, as fast as NumPy goes.

For benchmarks and for measuring detection at scale. The readings are exactly what the live plant
would deliver to a correct reader (same generator, same seed): rows a fault suppresses (dropout,
disconnect, server restart) or damages beyond recovery (corrupt or partial frames) are absent,
``seq`` numbers each source's readings from 0, ``recv_ts`` equals ``ts`` and ``flags`` is 0.
Output: ``readings.parquet`` in the reading schema, and ``labels.parquet``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from firmware_sim.generator import PlantGenerator
from firmware_sim.plant import custody_table, dictionary_codes, labels_table
from firmware_sim.scenario import Scenario, shipments_of
from qctrace.schema import READING_SCHEMA, SCHEMA_VERSION, Quality


@dataclass(frozen=True, slots=True)
class ReplayResult:
    readings: int
    ticks: int
    seconds: float
    readings_path: Path
    labels_path: Path


def _quality(status: np.ndarray) -> np.ndarray:
    severity = (status >> 30) & 0b11
    return np.where(severity == 0, Quality.GOOD, np.where(severity == 1, Quality.UNCERTAIN, Quality.BAD)).astype(
        np.uint8)


def replay(scenario: Scenario, seed: int, out_dir: Path, ticks: int, chunk_ticks: int | None = None,
           progress: Callable[[int, int], None] | None = None) -> ReplayResult:
    t0 = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    gen = PlantGenerator(scenario, seed)
    streams = gen.streams
    n_streams = len(streams)
    chunk_ticks = chunk_ticks or max(1, min(ticks, 2_000_000 // max(n_streams, 1)))

    parts = {name: dictionary_codes([getattr(s, name) for s in streams])
             for name in ("site", "line", "device", "sensor")}
    sources = sorted({s.source for s in streams})
    src_of = np.array([sources.index(s.source) for s in streams], dtype=np.int64)
    next_seq = np.zeros(len(sources), dtype=np.int64)

    # Lots: each line's lot number per tick, each shipment's fixed lot.
    line_keys = sorted({s.line_key for s in streams if s.kind == "opcua"})
    ships = {sh.id: sh for sh in shipments_of(scenario)}
    lot_names: list[str] = []
    fixed_lot = np.full(n_streams, -1, dtype=np.int64)
    for c, s in enumerate(streams):
        if s.kind == "serial":
            lot_names.append(ships[s.line].lot)
            fixed_lot[c] = len(lot_names) - 1
    line_of = np.array([line_keys.index(s.line_key) if s.kind == "opcua" else -1 for s in streams], dtype=np.int64)
    lot_ids: dict[tuple[int, int], int] = {}

    # Frames that a noisy line damaged are lost to any reader: drop those logger rows.
    frame_faults = [f for f in scenario.faults if f.kind in ("corrupt_frames", "partial_frames")]
    tick_s = scenario.plant.tick_s

    writer = pq.ParquetWriter(out_dir / "readings.parquet", READING_SCHEMA.with_metadata(
        {"qctrace.schema_version": str(SCHEMA_VERSION), "qctrace.scenario_seed": str(seed)}), compression="zstd")
    total = 0
    done = 0
    try:
        while done < ticks:
            n = min(chunk_ticks, ticks - done)
            ch = gen.generate(n)
            emit = ch.emit.copy()
            t_s = ch.ticks * tick_s
            for f in frame_faults:
                active = (t_s >= f.at_s) & (t_s < f.at_s + f.duration_s)
                cols = [c for c, s in enumerate(streams) if s.kind == "serial" and s.line == f.target]
                emit[np.ix_(active, cols)] = False
            rows, cols = np.nonzero(emit)  # tick-major: each source's rows in time order
            m = len(rows)
            src = src_of[cols]
            order = np.argsort(src, kind="stable")
            counts = np.bincount(src, minlength=len(sources))
            starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
            rank = np.empty(m, dtype=np.int64)
            rank[order] = np.arange(m) - np.repeat(starts, counts)
            seq = next_seq[src] + rank
            next_seq += counts
            lot = fixed_lot[cols].copy()
            opc = line_of[cols] >= 0
            if opc.any():
                for li, key in enumerate(line_keys):
                    numbers = gen.lot_at(key, ch.ticks)
                    for num in np.unique(numbers):
                        if (li, int(num)) not in lot_ids:
                            lot_ids[(li, int(num))] = len(lot_names)
                            lot_names.append(gen.lot_name(key, int(num)))
                    lut = np.array([lot_ids[(li, int(x))] for x in numbers], dtype=np.int64)
                    here = opc & (line_of[cols] == li)
                    lot[here] = lut[rows[here]]
            ts = pa.array(ch.ts[rows, cols], pa.timestamp("ns", tz="UTC"))
            batch = pa.RecordBatch.from_arrays([
                ts, ts,
                *(pa.DictionaryArray.from_arrays(pa.array(parts[k][0][cols]), parts[k][1])
                  for k in ("site", "line", "device", "sensor")),
                pa.array(ch.values[rows, cols]),
                pa.array(_quality(ch.status[rows, cols])),
                pa.array(seq.astype(np.uint64)),
                pa.DictionaryArray.from_arrays(pa.array(lot.astype(np.int32)), pa.array(lot_names, pa.string())),
                pa.array(np.zeros(m, dtype=np.uint32)),
            ], schema=READING_SCHEMA)
            writer.write_batch(batch, row_group_size=max(m, 1))
            total += m
            done += n
            if progress is not None:
                progress(done, ticks)
    finally:
        writer.close()
    pq.write_table(labels_table(gen.labels()), out_dir / "labels.parquet")
    pq.write_table(custody_table(gen.custody()), out_dir / "custody.parquet")
    return ReplayResult(total, ticks, time.perf_counter() - t0, out_dir / "readings.parquet",
                        out_dir / "labels.parquet")

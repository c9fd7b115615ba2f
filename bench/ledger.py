"""Ledger figures: append rate against a raw SQLite insert, full verification, trace and proofs.

Runs alone: ``python bench/ledger.py [--events N] [--lots M]``. Builds a ledger of N events over M
product lots with a realistic genealogy (input lots received from suppliers, transformations, QC
results, anomaly episodes, packing into shipments, custody moves, deliveries), then measures:

* append: events/s through ``Ledger.append_many`` (canonical JSON, validation, chain hash, Merkle
  leaf and nodes, trace indexes) in batches of 1,000, and a raw ``executemany`` INSERT of the very
  same rows (kind, lot, time, body, same indexes, same WAL and fsync settings) into a plain table;
* verification of the whole ledger: chain + leaves + stored Merkle nodes (what ``qctrace verify``
  always does), and separately the re-derivation of the trace indexes from every body;
* trace: backward + forward genealogy of random lots, p50/p95 over 200 lots;
* inclusion and consistency proofs on the full tree.

The last line of output is one JSON object with the figures.
"""

from __future__ import annotations

import sys
from pathlib import Path

# This file is named like the package it measures: keep its own directory off the import path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse
import json
import platform
import random
import sqlite3
import tempfile
import time

import numpy as np

from ledger import Ledger
from ledger import events as E
from ledger.canonical import canonical_bytes
from ledger.merkle import leaf_hash, verify_consistency, verify_inclusion
from ledger.trace import trace

T0 = 1_793_599_200 * 10**9
GTIN, INPUT_GTIN = "0614141.107346", "0614141.200018"


def make_events(n: int, lots: int, seed: int = 1) -> list[dict]:
    """n events: per product lot ~10 (produce, QC, episodes, packing, custody, delivery)."""
    rng = random.Random(seed)
    out: list[dict] = []
    lot_no = 0
    t = T0
    while len(out) < n:
        lot = f"L-{lot_no:07d}"
        inp = f"TP-{lot_no // 3:07d}"
        t += 10**9
        if lot_no % 3 == 0:
            out.append(E.input_received(inp, INPUT_GTIN, f"supplier-{rng.randrange(50)}", "plant1", t))
        out.append(E.lot_produced(lot, GTIN, "plant1", f"line{lot_no % 10}", t,
                                  inputs=[E.lot_class(inp, INPUT_GTIN)], equipment=[f"plant1/line{lot_no % 10}/plc"]))
        for _ in range(rng.randrange(3)):
            out.append(E.anomaly_episode(lot, GTIN, f"plant1/line{lot_no % 10}/plc/weight", t, t + 5 * 10**9, 4,
                                         "EWMA_Z", 490.125, 512.5, 5))
        out.append(E.qc_result(lot, GTIN, "plant1", f"line{lot_no % 10}", t + 60 * 10**9, 480, rng.randrange(3)))
        ship = f"SHP-{lot_no:07d}"
        out.append(E.lot_packed(lot, GTIN, ship, "plant1", t + 61 * 10**9))
        out.append(E.shipment_moved(ship, "truck", f"reefer-{rng.randrange(20)}", t + 62 * 10**9, previous="plant1"))
        out.append(E.shipment_moved(ship, "distribution_centre", "dc-north", t + 63 * 10**9))
        out.append(E.lot_delivered(lot, GTIN, ship, f"customer-{rng.randrange(500)}", "store", t + 64 * 10**9))
        lot_no = (lot_no + 1) % lots
    return out[:n]


def bench_raw(path: Path, evs: list[dict], batch: int, serialise: bool = False) -> float:
    """The same rows as a plain insert into a log table with the same columns and settings.

    ``serialise`` False: the rows' bytes are prepared outside the timing (the floor: SQLite alone).
    True: each event is serialised with ``json.dumps`` inside the timing, as an application that
    logs its events to SQLite without a ledger does.
    """
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE events (idx INTEGER PRIMARY KEY, kind TEXT NOT NULL, lot TEXT, event_time TEXT NOT NULL,"
               " body BLOB NOT NULL)")
    db.execute("CREATE INDEX events_kind ON events(kind)")
    keys = [(i, E.kind_of(e), (E.lots_in(e) or [None])[0], e["eventTime"]) for i, e in enumerate(evs)]
    rows = None if serialise else [(*k, canonical_bytes(e)) for k, e in zip(keys, evs, strict=True)]
    t = time.perf_counter()
    for i in range(0, len(keys), batch):
        chunk = rows[i:i + batch] if rows is not None else [
            (*k, json.dumps(e).encode()) for k, e in zip(keys[i:i + batch], evs[i:i + batch], strict=True)]
        db.execute("BEGIN IMMEDIATE")
        db.executemany("INSERT INTO events VALUES (?,?,?,?,?)", chunk)
        db.execute("COMMIT")
    s = time.perf_counter() - t
    db.close()
    return len(keys) / s


def bench_append(led: Ledger, evs: list[dict], batch: int) -> float:
    t = time.perf_counter()
    for i in range(0, len(evs), batch):
        led.append_many(evs[i:i + batch])
    return len(evs) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--lots", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--append-events", type=int, default=200_000,
                    help="events timed for the append-vs-raw comparison (the 1M ledger is built untimed too)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="qctrace-bench-ledger-"))
    t = time.perf_counter()
    evs = make_events(args.events, args.lots)
    gen_s = time.perf_counter() - t
    print(f"generated {len(evs)} events in {gen_s:.1f} s", flush=True)

    k = min(args.append_events, len(evs))
    raw_rate = bench_raw(tmp / "raw.sqlite", evs[:k], args.batch)
    raw_json_rate = bench_raw(tmp / "raw-json.sqlite", evs[:k], args.batch, serialise=True)
    led = Ledger(tmp / "ledger.sqlite")
    append_rate = bench_append(led, evs[:k], args.batch)
    print(f"append {append_rate:,.0f}/s  raw insert {raw_rate:,.0f}/s  json.dumps + insert {raw_json_rate:,.0f}/s",
          flush=True)
    t = time.perf_counter()
    for i in range(k, len(evs), 10_000):
        led.append_many(evs[i:i + 10_000])
    print(f"built the rest in {time.perf_counter() - t:.1f} s", flush=True)
    led.close()
    del evs

    led = Ledger(tmp / "ledger.sqlite", readonly=True)
    n = len(led)
    t = time.perf_counter()
    report = led.scan(check_index=False)
    verify_s = time.perf_counter() - t
    assert report.events == n
    t = time.perf_counter()
    led.scan(check_index=True)
    verify_index_s = time.perf_counter() - t
    print(f"verify {verify_s:.2f} s, with index re-derivation {verify_index_s:.2f} s", flush=True)

    rng = random.Random(7)
    lat = []
    sizes = []
    for _ in range(200):
        lot = f"L-{rng.randrange(args.lots):07d}"
        t = time.perf_counter()
        b = trace(led, lot, forward=False)
        f = trace(led, lot, forward=True)
        lat.append(time.perf_counter() - t)
        sizes.append(len(b.events) + len(f.events))
    root = report.root
    proof_lat, cons_lat = [], []
    for _ in range(500):
        i = rng.randrange(n)
        t = time.perf_counter()
        proof = led.inclusion_proof(i, n)
        proof_lat.append(time.perf_counter() - t)
        verify_inclusion(report.leaves[i], i, n, proof, root)
        m = rng.randrange(1, n)
        t = time.perf_counter()
        cproof = led.consistency_proof(m, n)
        cons_lat.append(time.perf_counter() - t)
        verify_consistency(m, n, led.root(m), root, cproof)
    assert leaf_hash(next(led.events()).body) == report.leaves[0]
    led.close()
    result = {
        "machine": f"{platform.machine()} {platform.python_version()}",
        "events": n,
        "lots": args.lots,
        "append_events_per_s": round(append_rate),
        "raw_sqlite_insert_events_per_s": round(raw_rate),
        "append_ratio_vs_raw_insert": round(append_rate / raw_rate, 3),
        "json_dumps_and_insert_events_per_s": round(raw_json_rate),
        "append_ratio_vs_json_dumps_and_insert": round(append_rate / raw_json_rate, 3),
        "verify_s": round(verify_s, 2),
        "verify_with_index_s": round(verify_index_s, 2),
        "trace_p50_ms": round(float(np.percentile(lat, 50)) * 1e3, 2),
        "trace_p95_ms": round(float(np.percentile(lat, 95)) * 1e3, 2),
        "trace_events_mean": round(float(np.mean(sizes)), 1),
        "inclusion_proof_p95_ms": round(float(np.percentile(proof_lat, 95)) * 1e3, 3),
        "consistency_proof_p95_ms": round(float(np.percentile(cons_lat, 95)) * 1e3, 3),
        "ledger_mb": round((tmp / "ledger.sqlite").stat().st_size / 1e6, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()

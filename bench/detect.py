"""Throughput of the detection kernel (spec limits + EWMA z-score) against its Python reference.

Runs alone: ``python bench/detect.py [--readings N] [--sensors M]``. The last line of output is
one JSON object with the figures. Both implementations are timed in this run on the same data.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time

import numpy as np

from ingest.detect import kernels
from ingest.detect.reference import SensorParams, spec_ewma_reference


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--readings", type=int, default=10_000_000)
    ap.add_argument("--sensors", type=int, default=10_000)
    ap.add_argument("--reference-readings", type=int, default=500_000,
                    help="prefix timed with the pure-Python reference (it is ~100x slower)")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    n, m = args.readings, args.sensors
    idx = rng.integers(0, m, n).astype(np.int64)
    values = kernels.readonly(rng.normal(50, 5, n).round(3))
    quality = kernels.readonly(np.zeros(n, np.uint8))
    lsl, usl = np.full(m, 35.0), np.full(m, 65.0)
    lam, zlim, warm, rebase = np.full(m, 0.1), np.full(m, 5.0), np.full(m, 30, np.int64), np.full(m, 120, np.int64)

    t = time.perf_counter()
    kernels.warm_up()
    compile_s = time.perf_counter() - t

    def run_numba() -> tuple[float, np.ndarray]:
        mean, var, count, run = np.zeros(m), np.zeros(m), np.zeros(m, np.int64), np.zeros(m, np.int64)
        flags, z = np.zeros(n, np.uint32), np.zeros(n)
        t0 = time.perf_counter()
        kernels.spec_ewma(idx, values, quality, lsl, usl, lam, zlim, warm, rebase, mean, var, count, run, flags, z)
        return time.perf_counter() - t0, flags

    times = []
    for _ in range(5):
        dt, flags = run_numba()
        times.append(dt)
    numba_s = float(np.median(times))

    k = min(args.reference_readings, n)
    params = {s: SensorParams(35.0, 65.0, 0.1, 5.0, 30, 120) for s in range(m)}
    ref_in = (idx[:k].tolist(), values[:k].tolist(), quality[:k].tolist())
    t0 = time.perf_counter()
    ref_flags, _ = spec_ewma_reference(*ref_in, params, {})
    ref_s = time.perf_counter() - t0
    assert ref_flags == flags[:k].tolist(), "kernel and reference disagree"

    # Latency of one 1,000-reading batch through the kernel, as ingest calls it.
    mean, var, count, run = np.zeros(m), np.zeros(m), np.zeros(m, np.int64), np.zeros(m, np.int64)
    lat = []
    for i in range(2000):
        s = slice(i * 1000, (i + 1) * 1000)
        f, z = np.zeros(1000, np.uint32), np.zeros(1000)
        t0 = time.perf_counter()
        kernels.spec_ewma(idx[s], values[s], quality[s], lsl, usl, lam, zlim, warm, rebase, mean, var, count, run, f,
                          z)
        lat.append(time.perf_counter() - t0)

    numba_rate = n / numba_s
    ref_rate = k / ref_s
    result = {
        "machine": f"{platform.machine()} {platform.python_version()}",
        "readings": n,
        "sensors": m,
        "numba_readings_per_s": round(numba_rate),
        "python_reference_readings_per_s": round(ref_rate),
        "ratio_vs_python": round(numba_rate / ref_rate, 1),
        "batch_1000_p99_ms": round(float(np.percentile(lat, 99)) * 1e3, 4),
        "warm_up_s": round(compile_s, 3),
        "flagged_fraction": round(float(np.count_nonzero(flags)) / n, 6),
    }
    assert math.isfinite(result["ratio_vs_python"])
    print(json.dumps(result))


if __name__ == "__main__":
    main()

"""The full rule set: the Numba kernels against their plain-Python references and NumPy baselines.

Runs alone: ``python bench/detect.py [--readings N] [--sensors M]``. 10 M readings over 10,000
sensors (a random sensor per reading, time increasing, Gaussian values, a few percent repeats and
NaNs) through spec limits + EWMA and every rule family (Nelson 1-8 and CUSUM, rate, robust spike,
stuck and gap, cold-chain band, budget, MKT and door), each sensor configured with every rule on.
Measured in the same run on the same data:

* the kernels over the whole set on one core (and per family);
* the pure-Python references on a prefix (``--reference-readings``), the NumPy versions on
  another (``--numpy-readings``): rates, and the kernels' ratio to each;
* p99 latency of one 1,000-reading batch through every kernel;
* compile time in a fresh process with an empty Numba cache, and start-up from the cache.

The last line of output is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

from ingest.detect import Detector, kernels
from ingest.detect.family import RuleFamily
from ingest.detect.reference import EwmaState, SensorParams, spec_ewma_reference
from ingest.detect.vectorised import spec_ewma_vectorised
from qctrace.config import DetectConfig, SensorRule

T0 = 1_793_599_200 * 10**9


def data(n: int, m: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, m, n).astype(np.int64)
    ts = T0 + np.arange(n, dtype=np.int64) * max(10**9 * m // max(n, 1), 1)  # each sensor ~1 reading/s
    values = rng.normal(5.0, 1.0, n).round(3)
    values[rng.random(n) < 0.001] = np.nan
    quality = np.zeros(n, np.uint8)
    quality[rng.random(n) < 0.001] = 2
    return idx, kernels.readonly(ts), kernels.readonly(values), kernels.readonly(quality)


def configured(m: int) -> Detector:
    """Every sensor with every rule on (a cold-chain temperature's band and budget, a door limit)."""
    # door_max_s stays off: its check still runs for every reading, but a door rule on an analogue
    # value would flag nearly everything and measure nothing useful
    rule = SensorRule(match="*", lsl=0.0, usl=10.0, nelson=(1, 2, 3, 4, 5, 6, 7, 8), max_rate=1e6, spike_k=8.0,
                      stuck_n=30, band=(2.0, 8.0), budget_min=30.0, mkt=True)
    det = Detector(DetectConfig(sensors=(rule,)))
    for i in range(m):
        det.sensor_index(f"b/l/d/s{i}")
    return det


CHUNK = 100_000  # ingest hands the detector batches; output buffers are reused, as a long run would


def run_kernels(det: Detector, idx, ts, values, quality) -> np.ndarray:
    n = len(idx)
    flags = np.zeros(n, np.uint32)
    width = min(n, CHUNK)
    scores = {"ewma_z": np.empty(width)} | {s: np.empty(width) for f in det.families for s in f.scores}
    for a in range(0, n, CHUNK):
        b = min(a + CHUNK, n)
        det._run(idx[a:b], ts[a:b], values[a:b], quality[a:b], flags[a:b], {k: v[:b - a] for k, v in scores.items()})
    return flags


def run_family_kernel(fam: RuleFamily, det: Detector, idx, ts, values, flags) -> None:
    width = min(len(idx), CHUNK)
    scores = [np.empty(width) for _ in fam.scores]
    params = [det.params[fam.name][f.name] for f in fam.params]
    state = [det.state[fam.name][f.name] for f in fam.state]
    for a in range(0, len(idx), CHUNK):
        b = min(a + CHUNK, len(idx))
        fam.kernel(idx[a:b], ts[a:b], values[a:b], flags[a:b], *(x[:b - a] for x in scores), *params, *state)


def run_reference(det: Detector, idx, ts, values, quality) -> list[int]:
    c = {k: v.tolist() for k, v in det.core.items()}
    params = {i: SensorParams(c["lsl"][i], c["usl"][i], c["lam"][i], c["zlim"][i], c["warmup"][i], c["rebase"][i])
              for i in range(len(det.keys))}
    state: dict[int, EwmaState] = {}
    flags, _ = spec_ewma_reference(idx.tolist(), values.tolist(), quality.tolist(), params, state)
    for fam in det.families:
        p = {k: v.tolist() for k, v in det.params[fam.name].items()}
        st = {k: v.tolist() for k, v in fam.alloc(len(det.keys))[1].items()}
        scores = {s: [math.nan] * len(flags) for s in fam.scores}
        fam.reference(idx.tolist(), ts.tolist(), values.tolist(), flags, scores, p, st)
    return flags


def run_numpy(det: Detector, idx, ts, values, quality) -> np.ndarray:
    n = len(idx)
    m = len(det.keys)
    c = det.core
    flags = np.zeros(n, np.uint32)
    z = np.empty(n)
    spec_ewma_vectorised(idx, values, quality, c["lsl"], c["usl"], c["lam"], c["zlim"], c["warmup"], c["rebase"],
                         np.zeros(m), np.zeros(m), np.zeros(m, np.int64), np.zeros(m, np.int64), np.full(m, np.nan),
                         flags, z)
    for fam in det.families:
        scores = {s: np.full(n, np.nan) for s in fam.scores}
        fam.vectorised(idx, ts, values, flags, scores, det.params[fam.name], fam.alloc(m)[1])
    return flags


def compile_times() -> tuple[float, float]:
    """Seconds to import and warm up every kernel: with an empty cache, then from that cache."""
    code = "import time; t = time.perf_counter(); from ingest.detect import warm_up; warm_up(); " \
           "print(time.perf_counter() - t)"
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        out = []
        for _ in range(2):
            res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
            out.append(float(res.stdout.strip().splitlines()[-1]))
    return out[0], out[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--readings", type=int, default=10_000_000)
    ap.add_argument("--sensors", type=int, default=10_000)
    ap.add_argument("--reference-readings", type=int, default=200_000)
    ap.add_argument("--numpy-readings", type=int, default=2_000_000)
    args = ap.parse_args()
    n, m = args.readings, args.sensors
    idx, ts, values, quality = data(n, m)
    cold_s, cached_s = compile_times()
    print(f"compile: cold {cold_s:.2f} s, from cache {cached_s:.2f} s", flush=True)

    from ingest.detect import warm_up

    warm_up()
    det = configured(m)
    t = time.perf_counter()
    flags = run_kernels(det, idx, ts, values, quality)
    numba_s = time.perf_counter() - t
    print(f"kernels: {n / numba_s / 1e6:.1f} M readings/s", flush=True)

    per_family = {}
    for fam in det.families:
        d2 = configured(m)
        f2 = np.zeros(n, np.uint32)
        t = time.perf_counter()
        run_family_kernel(fam, d2, idx, ts, values, f2)
        per_family[f"{fam.name}_readings_per_s"] = round(n / (time.perf_counter() - t))

    k = min(args.reference_readings, n)
    t = time.perf_counter()
    ref_flags = run_reference(configured(m), idx[:k], ts[:k], values[:k], quality[:k])
    ref_s = time.perf_counter() - t
    kern_k = run_kernels(configured(m), idx[:k], ts[:k], values[:k], quality[:k])
    assert (np.array(ref_flags, np.uint32) == kern_k).all(), "kernels and references disagree"
    print(f"python reference: {k / ref_s / 1e3:.0f} k readings/s", flush=True)

    j = min(args.numpy_readings, n)
    t = time.perf_counter()
    np_flags = run_numpy(configured(m), idx[:j], ts[:j], values[:j], quality[:j])
    np_s = time.perf_counter() - t
    kern_j = run_kernels(configured(m), idx[:j], ts[:j], values[:j], quality[:j])
    assert (np_flags == kern_j).all(), "kernels and NumPy versions disagree"
    print(f"numpy: {j / np_s / 1e6:.2f} M readings/s", flush=True)

    lat = []
    d3 = configured(m)
    for a in range(0, min(n, 2_000_000), 1000):
        t = time.perf_counter()
        run_kernels(d3, idx[a:a + 1000], ts[a:a + 1000], values[a:a + 1000], quality[a:a + 1000])
        lat.append(time.perf_counter() - t)

    rate = n / numba_s
    result = {
        "machine": f"{platform.machine()} {platform.python_version()}",
        "readings": n,
        "sensors": m,
        "rule_families": [f.name for f in det.families],
        "numba_readings_per_s": round(rate),
        **per_family,
        "python_reference_readings_per_s": round(k / ref_s),
        "numpy_readings_per_s": round(j / np_s),
        "ratio_vs_python": round(rate / (k / ref_s), 1),
        "ratio_vs_numpy": round(rate / (j / np_s), 1),
        "batch_1000_p99_ms": round(float(np.percentile(lat, 99)) * 1e3, 4),
        "compile_cold_s": round(cold_s, 2),
        "startup_cached_s": round(cached_s, 2),
        "flagged_fraction": round(float(np.count_nonzero(flags)) / n, 6),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()

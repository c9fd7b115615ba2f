"""Numba kernels for the sink's flush: the order that partitions and sorts a commit's rows.

A commit groups rows by partition (site, line, UTC day) and sorts each partition by (sensor, ts).
A general sort (``np.lexsort`` over three keys) cost most of a flush; but partitions and sensors
are few small integers and rows arrive nearly in time order per sensor, so a stable counting sort
on (partition, sensor) followed by a check (and, rarely, a sort) of each sensor's run by ``ts`` is
linear. Pure functions over arrays, no I/O; ``sink_reference.partition_order`` is the plain-Python
twin and ``tests/ingest/test_sink_kernels.py`` checks with hypothesis that both agree.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def _partition_order(part, sensor, ts, n_sensors):
    n = part.shape[0]
    top = 0
    for i in range(n):
        if part[i] > top:
            top = part[i]
    dense = np.full(top + 1, -1, dtype=np.int64)
    for i in range(n):
        dense[part[i]] = 0
    m = 0
    for p in range(top + 1):  # dense ids in ascending partition order
        if dense[p] == 0:
            dense[p] = m
            m += 1
    ids = np.empty(m, dtype=np.int64)
    for p in range(top + 1):
        if dense[p] >= 0:
            ids[dense[p]] = p
    k = m * n_sensors
    start = np.zeros(k + 1, dtype=np.int64)
    for i in range(n):
        start[dense[part[i]] * n_sensors + sensor[i] + 1] += 1
    for b in range(k):
        start[b + 1] += start[b]
    pos = start[:-1].copy()
    order = np.empty(n, dtype=np.int64)
    for i in range(n):  # stable scatter: arrival order kept within a bucket
        b = dense[part[i]] * n_sensors + sensor[i]
        order[pos[b]] = i
        pos[b] += 1
    for b in range(k):
        lo, hi = start[b], start[b + 1]
        for j in range(lo + 1, hi):
            if ts[order[j]] < ts[order[j - 1]]:  # out of time order: sort this run (stable)
                run = order[lo:hi].copy()
                o = np.argsort(ts[run], kind="mergesort")
                for q in range(hi - lo):
                    order[lo + q] = run[o[q]]
                break
    bounds = np.empty(m + 1, dtype=np.int64)
    for d in range(m):
        bounds[d] = start[d * n_sensors]
    bounds[m] = n
    return order, bounds, ids


def partition_order(part: np.ndarray, sensor: np.ndarray, ts: np.ndarray,
                    n_sensors: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row order by (partition, sensor, ts, arrival), and where each partition starts in it.

    ``part`` holds non-negative partition numbers (small: the caller numbers them densely enough),
    ``sensor`` ranks in ``[0, n_sensors)`` in the order files are sorted by, ``ts`` int64.
    Returns ``(order, bounds, ids)``: rows ``order[bounds[j]:bounds[j+1]]`` are partition ``ids[j]``.
    """
    part = np.ascontiguousarray(part, dtype=np.int64)
    sensor = np.ascontiguousarray(sensor, dtype=np.int64)
    ts = np.ascontiguousarray(ts, dtype=np.int64)
    if not (part.shape == sensor.shape == ts.shape) or part.ndim != 1:
        raise ValueError(f"partition_order: part, sensor and ts must be 1-d and of one length, got {part.shape},"
                         f" {sensor.shape}, {ts.shape}")
    if len(part) and (part.min() < 0 or sensor.min() < 0 or sensor.max() >= n_sensors):
        raise ValueError("partition_order: partitions must be >= 0 and sensor ranks in [0, n_sensors);"
                         " number them with dictionary codes first")
    return _partition_order(part, sensor, ts, int(n_sensors))

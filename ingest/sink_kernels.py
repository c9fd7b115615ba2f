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


@njit(cache=True, nogil=True)
def _dense_groups(key, key_space):
    """Rows' keys numbered 0.. in ascending key order; and the keys."""
    lookup = np.full(key_space, -1, dtype=np.int64)
    for i in range(key.shape[0]):
        lookup[key[i]] = 0
    m = 0
    for k in range(key_space):
        if lookup[k] == 0:
            lookup[k] = m
            m += 1
    keys = np.empty(m, dtype=np.int64)
    group = np.empty(key.shape[0], dtype=np.int64)
    for k in range(key_space):
        if lookup[k] >= 0:
            keys[lookup[k]] = k
    for i in range(key.shape[0]):
        group[i] = lookup[key[i]]
    return group, keys


@njit(cache=True, nogil=True)
def _fresh_rows(group, seq, n_groups, off, starts, ends):
    n = seq.shape[0]
    keep = np.empty(n, dtype=np.bool_)
    count = np.zeros(n_groups + 1, dtype=np.int64)
    last = np.full(n_groups, np.iinfo(np.int64).min, dtype=np.int64)
    ordered = np.ones(n_groups, dtype=np.bool_)
    for i in range(n):
        g = group[i]
        s = seq[i]
        lo = off[g]
        j = lo + np.searchsorted(starts[lo:off[g + 1]], s, side="right") - 1
        keep[i] = not (j >= lo and s <= ends[j])
        if s <= last[g]:
            ordered[g] = False
        last[g] = s
        count[g + 1] += 1
    for g in range(n_groups):
        count[g + 1] += count[g]
    pos = count[:-1].copy()
    rows = np.empty(n, dtype=np.int64)
    for i in range(n):  # rows grouped, arrival order within a group
        rows[pos[group[i]]] = i
        pos[group[i]] += 1
    for g in range(n_groups):
        if not ordered[g]:  # sort this group's rows by seq (stable: the first arrival comes first)
            a, b = count[g], count[g + 1]
            r = rows[a:b].copy()
            o = np.argsort(seq[r], kind="mergesort")
            for q in range(b - a):
                rows[a + q] = r[o[q]]
            for q in range(a + 1, b):  # a seq twice in one batch: keep its first row only
                if seq[rows[q]] == seq[rows[q - 1]]:
                    keep[rows[q]] = False
    run_g = np.empty(n, dtype=np.int64)
    run_s = np.empty(n, dtype=np.int64)
    run_e = np.empty(n, dtype=np.int64)
    k = -1
    for q in range(n):
        i = rows[q]
        if not keep[i]:
            continue
        g = group[i]
        if k >= 0 and run_g[k] == g and seq[i] == run_e[k] + 1:
            run_e[k] = seq[i]
        else:
            k += 1
            run_g[k] = g
            run_s[k] = seq[i]
            run_e[k] = seq[i]
    return keep, run_g[:k + 1], run_s[:k + 1], run_e[:k + 1]


def group_rows(key: np.ndarray, key_space: int) -> tuple[np.ndarray, np.ndarray]:
    """``(group, keys)``: each row's key numbered densely in ascending order, and the distinct keys."""
    key = np.ascontiguousarray(key, dtype=np.int64)
    if key_space > max(1 << 20, 4 * len(key)):
        keys, group = np.unique(key, return_inverse=True)
        return group.astype(np.int64), keys.astype(np.int64)
    return _dense_groups(key, int(key_space))


def fresh_rows(group: np.ndarray, seq: np.ndarray, n_groups: int, off: np.ndarray, starts: np.ndarray,
               ends: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Which rows carry a seq not seen before, and the seqs they add as runs.

    Group ``g``'s seen seqs are the sorted disjoint intervals ``starts[off[g]:off[g+1]]`` ..
    ``ends[...]`` (inclusive). Returns ``keep`` (a row is new and the first of its seq in this
    batch) and ``(run_group, run_start, run_end)``: the kept seqs as maximal runs, sorted by group
    and seq, ready to merge into the groups' intervals.
    """
    group = np.ascontiguousarray(group, dtype=np.int64)
    seq = np.ascontiguousarray(seq, dtype=np.int64)
    if group.shape != seq.shape or len(off) != n_groups + 1:
        raise ValueError("fresh_rows: group and seq must be of one length and off of n_groups + 1")
    return _fresh_rows(group, seq, int(n_groups), np.ascontiguousarray(off, dtype=np.int64),
                       np.ascontiguousarray(starts, dtype=np.int64), np.ascontiguousarray(ends, dtype=np.int64))


def warm_up() -> None:
    """Compile (or load from Numba's cache) the flush's kernels now, with the argument types a
    flush passes: a worker that compiled them on its first batch held a fresh plant's first
    commit back by 7 s on a loaded 2-core machine (the campaign's first seconds of latency).

    ``ts`` and ``seq`` come straight from Arrow buffers (read-only) on the hot path and as plain
    arrays elsewhere (queries, compaction): both are compiled, so neither pays later."""
    from ingest.detect.kernels import readonly

    one = np.zeros(1, np.int64)
    for arr in (one, readonly(one)):
        partition_order(one, one, arr, 1)
        fresh_rows(one, arr, 1, np.array([0, 0], np.int64), one[:0], one[:0])
    group_rows(one, 1)

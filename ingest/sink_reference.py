"""Plain-Python twin of ``ingest.sink_kernels``: slow, obviously right, for the property tests."""

from __future__ import annotations

import numpy as np


def partition_order(part: np.ndarray, sensor: np.ndarray, ts: np.ndarray,
                    n_sensors: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows = sorted(range(len(part)), key=lambda i: (int(part[i]), int(sensor[i]), int(ts[i]), i))
    order = np.array(rows, dtype=np.int64)
    ids: list[int] = []
    bounds: list[int] = []
    for j, i in enumerate(rows):
        if not ids or ids[-1] != int(part[i]):
            ids.append(int(part[i]))
            bounds.append(j)
    bounds.append(len(rows))
    return order, np.array(bounds, dtype=np.int64), np.array(ids, dtype=np.int64)


def fresh_rows(group: np.ndarray, seq: np.ndarray, n_groups: int, off: np.ndarray, starts: np.ndarray,
               ends: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    seen: list[set[int]] = [set() for _ in range(n_groups)]
    intervals = [list(zip(starts[off[g]:off[g + 1]].tolist(), ends[off[g]:off[g + 1]].tolist(), strict=True))
                 for g in range(n_groups)]
    keep = np.zeros(len(seq), dtype=bool)
    for i, (g, s) in enumerate(zip(group.tolist(), seq.tolist(), strict=True)):
        if s not in seen[g] and not any(a <= s <= b for a, b in intervals[g]):
            keep[i] = True
            seen[g].add(s)
    runs: list[tuple[int, int, int]] = []
    for g in range(n_groups):
        for s in sorted(seen[g]):
            if runs and runs[-1][0] == g and runs[-1][2] == s - 1:
                runs[-1] = (g, runs[-1][1], s)
            else:
                runs.append((g, s, s))
    cols = list(zip(*runs, strict=True)) if runs else [(), (), ()]
    return keep, *(np.array(c, dtype=np.int64) for c in cols)

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

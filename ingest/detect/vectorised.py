"""The spec + EWMA rules in plain NumPy: the baseline ``bench/detect.py`` measures the kernel against.

Streaming rules are sequential per sensor, so NumPy cannot vectorise along time; it can across
sensors. Readings are grouped into rounds, round k holding every sensor's k-th reading of the
batch (at most one per sensor, so a round's updates never collide), and each round is a handful
of array operations over the sensors in it. The arithmetic is the kernel's, operation for
operation, so results are bit-identical (a test checks).
"""

from __future__ import annotations

import numpy as np

from qctrace.schema import Flag, Quality

_BAD = np.uint8(Quality.BAD)


def rounds(idx: np.ndarray) -> list[np.ndarray]:
    """Row numbers per round: round k = each sensor's k-th row in arrival order."""
    if len(idx) == 0:
        return []
    order = np.argsort(idx, kind="stable")
    sorted_idx = idx[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_idx)) + 1]
    sizes = np.diff(np.r_[starts, len(idx)])
    rank = np.arange(len(idx)) - np.repeat(starts, sizes)
    by_rank = np.argsort(rank, kind="stable")
    bounds = np.r_[0, np.cumsum(np.bincount(rank))]
    rows = order[by_rank]
    return [np.sort(rows[bounds[k]:bounds[k + 1]]) for k in range(len(bounds) - 1)]


def spec_ewma_vectorised(idx, values, quality, lsl, usl, lam, zlim, warmup, rebase, mean, var, count, run, last,
                         flags, z) -> None:
    """Same contract and results as ``kernels.spec_ewma``."""
    for rows in rounds(idx):
        s = idx[rows]
        x = values[rows]
        bad = quality[rows] == _BAD
        nonfinite = ~np.isfinite(x) & ~bad
        ok = ~bad & ~nonfinite
        flags[rows[bad]] = np.uint32(Flag.BAD_QUALITY)
        flags[rows[nonfinite]] = np.uint32(Flag.NOT_FINITE)
        z[rows[~ok]] = np.nan
        rows, s, x = rows[ok], s[ok], x[ok]
        f = np.where(x < lsl[s], np.uint32(Flag.SPEC_LOW), np.uint32(0)) | np.where(
            x > usl[s], np.uint32(Flag.SPEC_HIGH), np.uint32(0))
        n = count[s]
        sd = np.sqrt(var[s])
        d = x - mean[s]
        with np.errstate(divide="ignore", invalid="ignore"):
            zi = np.where((n > 0) & (sd > 0.0), d / sd, 0.0)
        ewma = (n > 0) & (n >= warmup[s]) & (np.abs(zi) > zlim[s])
        f = f | np.where(ewma, np.uint32(Flag.EWMA_Z), np.uint32(0))
        z[rows] = zi
        flags[rows] = f
        repeat = x == last[s]
        last[s] = x
        r = np.where(ewma, run[s] + 1, 0)
        reset = ewma & (rebase[s] > 0) & (r >= rebase[s])
        run[s] = np.where(reset, 0, r)
        count[s[reset]] = 0
        learn = ~reset & ((f == 0) | (n < warmup[s])) & ~repeat
        first = learn & (n == 0)
        upd = learn & (n > 0)
        mean[s[first]] = x[first]
        var[s[first]] = 0.0
        su, du, lu = s[upd], d[upd], lam[s[upd]]
        incr = lu * du
        mean[su] = mean[su] + incr
        var[su] = (1.0 - lu) * (var[su] + du * incr)
        count[s[learn]] = n[learn] + 1

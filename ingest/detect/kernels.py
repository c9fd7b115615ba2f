"""Numba kernels: pure functions over arrays. State goes in and comes out as arrays; no I/O.

Each kernel has a plain-Python twin in ``reference.py`` with the same signature, and
``tests/ingest/test_detect.py`` checks with hypothesis that both agree and that splitting a stream
into batches changes nothing. Flag bits are ``qctrace.schema.Flag``; the constants below are
those bits as plain ints because Numba cannot read an ``IntFlag``.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from qctrace.schema import Flag, Quality

SPEC_LOW = np.uint32(Flag.SPEC_LOW)
SPEC_HIGH = np.uint32(Flag.SPEC_HIGH)
EWMA_Z = np.uint32(Flag.EWMA_Z)
BAD_QUALITY = np.uint32(Flag.BAD_QUALITY)
NOT_FINITE = np.uint32(Flag.NOT_FINITE)
QUALITY_BAD = np.uint8(Quality.BAD)


@njit(cache=True, nogil=True)
def spec_ewma(idx, values, quality, lsl, usl, lam, zlim, warmup, rebase, mean, var, count, run, last, flags, z):
    """Spec limits and EWMA z-score for one batch, updating per-sensor ``mean``/``var``/``count``.

    z is the deviation from the EWMA mean in units of the EWMA standard deviation, computed
    *before* the reading updates the state. Readings that break a rule do not update the state
    (phase II SPC: the baseline is what the process does when in control), so a shift stays
    flagged for as long as it lasts, until ``rebase[s]`` consecutive EWMA flags (``run``) say it is
    the new normal: then the baseline is learnt again from the next reading (0 = never).
    Bad-quality and non-finite readings are flagged and skipped. A reading equal to the sensor's
    previous one (``last``) is judged but not learnt: a frozen register would otherwise shrink the
    variance towards zero and make ordinary noise look like an alarm once it thaws.
    """
    for i in range(idx.shape[0]):
        s = idx[i]
        x = values[i]
        if quality[i] == QUALITY_BAD:
            flags[i] = BAD_QUALITY
            z[i] = np.nan
            continue
        if not math.isfinite(x):
            flags[i] = NOT_FINITE
            z[i] = np.nan
            continue
        f = np.uint32(0)
        if x < lsl[s]:
            f |= SPEC_LOW
        if x > usl[s]:
            f |= SPEC_HIGH
        n = count[s]
        if n == 0:
            zi = 0.0
        else:
            d = x - mean[s]
            sd = math.sqrt(var[s])
            zi = d / sd if sd > 0.0 else 0.0
            if n >= warmup[s] and abs(zi) > zlim[s]:
                f |= EWMA_Z
        z[i] = zi
        flags[i] = f
        repeat = x == last[s]
        last[s] = x
        if f & EWMA_Z:
            run[s] += 1
            if rebase[s] > 0 and run[s] >= rebase[s]:
                count[s] = 0
                run[s] = 0
                continue
        else:
            run[s] = 0
        if (f == 0 or n < warmup[s]) and not repeat:
            if n == 0:
                mean[s] = x
                var[s] = 0.0
            else:
                d = x - mean[s]
                incr = lam[s] * d
                mean[s] += incr
                var[s] = (1.0 - lam[s]) * (var[s] + d * incr)
            count[s] = n + 1


@njit(cache=True, nogil=True)
def episodes(idx, ts, flags, values, is_open, start, last, mask, vmin, vmax, nflag,
             out_sensor, out_start, out_end, out_mask, out_min, out_max, out_n, out_row, opened_row):
    """Group consecutive flagged readings of a sensor into episodes.

    An episode opens at a sensor's first flagged reading and closes at its next unflagged one;
    closed episodes are written to the ``out_*`` arrays (returns how many; ``out_row`` is the row
    that closed each). ``opened_row[i]`` is set to 1 where an episode opened, so the caller can
    note the lot at its start.
    """
    k = 0
    for i in range(idx.shape[0]):
        s = idx[i]
        f = flags[i]
        opened_row[i] = 0
        if f != 0:
            if not is_open[s]:
                is_open[s] = True
                start[s] = ts[i]
                mask[s] = 0
                vmin[s] = np.inf
                vmax[s] = -np.inf
                nflag[s] = 0
                opened_row[i] = 1
            last[s] = ts[i]
            mask[s] |= f
            x = values[i]
            if math.isfinite(x):
                vmin[s] = min(vmin[s], x)
                vmax[s] = max(vmax[s], x)
            nflag[s] += 1
        elif is_open[s]:
            is_open[s] = False
            out_sensor[k] = s
            out_start[k] = start[s]
            out_end[k] = last[s]
            out_mask[k] = mask[s]
            out_min[k] = vmin[s]
            out_max[k] = vmax[s]
            out_n[k] = nflag[s]
            out_row[k] = i
            k += 1
    return k


@njit(cache=True, nogil=True)
def lot_changes(idx, lot_rows, on_lot, lot_code, changed):
    """Mark rows that are a sensor's first reading of a new lot (``changed[i] = 1``) and remember
    each sensor's lot. A sensor's first lot ever is not a change; rows without a lot (-1) are skipped."""
    n = 0
    for i in range(idx.shape[0]):
        s = idx[i]
        code = lot_rows[i]
        changed[i] = 0
        if code < 0 or not on_lot[s]:
            continue
        if lot_code[s] != code:
            if lot_code[s] >= 0:
                changed[i] = 1
                n += 1
            lot_code[s] = code
    return n


def readonly(a: np.ndarray) -> np.ndarray:
    """Mark an input read-only, as Arrow-backed arrays are, so kernels see one array type."""
    if a.flags.writeable:
        a = a.view()
        a.flags.writeable = False
    return a


def warm_up() -> None:
    """Compile (or load from cache) every kernel now, so the first batch does not pay for it.

    The argument types match the detector's calls exactly, read-only where the arrays come
    straight from Arrow buffers, so no second specialisation is compiled later.
    """
    def i() -> np.ndarray:
        return np.zeros(1, np.int64)

    def f() -> np.ndarray:
        return np.zeros(1, np.float64)

    def u() -> np.ndarray:
        return np.zeros(1, np.uint32)

    q = readonly(np.zeros(1, np.uint8))
    spec_ewma(i(), readonly(f()), q, f(), f(), f(), f(), i(), i(), f(), f(), i(), i(), f(), u(), f())
    episodes(i(), readonly(i()), readonly(u()), readonly(f()), np.zeros(1, np.bool_), i(), i(), u(), f(), f(), i(),
             i(), i(), i(), u(), f(), f(), i(), i(), np.zeros(1, np.uint8))
    lot_changes(i(), i(), np.zeros(1, np.bool_), i(), np.zeros(1, np.uint8))

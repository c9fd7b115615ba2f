"""Cold-chain rules: product band, excursion budget, mean kinetic temperature, door open too long.

One sensor is one channel of one shipment's logger (``LOGGER_CHANNELS`` in ``firmware_sim``), so
per-sensor state is per-shipment state. Rules, per sensor, in arrival order, SKIP rows ignored:

* **Band** (``band_lo``/``band_hi``, NaN = off; temperature and humidity): ``BAND_LOW`` /
  ``BAND_HIGH`` on a reading outside the band.
* **Excursion budget** (``budget_s``, inf = off): time is attributed sample-and-hold: the interval
  ``(ts_prev, ts]`` between consecutive readings counts as out of band when the reading at
  ``ts_prev`` was, because that is what the logger last saw. One interval counts at most
  ``max_dt_s`` (default 300 s; NaN or inf = no cap), so a logger that goes silent does not quietly
  spend the budget on time nobody measured (the GAP/STALE rules report the silence itself).
  ``BUDGET`` is set on every out-of-band reading once the cumulative out-of-band time is strictly
  greater than ``budget_s``: every further excursion of a shipment whose allowance is spent is a
  budget breach, while readings back in band raise nothing (the spent budget stays in the score
  ``excursion_s`` and in the shipment's record, not as an endless alarm). Time is summed in integer
  nanoseconds (state ``out_ns``) so the sum, and so the flag, is exact whatever the batching.
* **Mean kinetic temperature** (``mkt`` = 1 to turn on, ``delta_h`` J/mol, default 83 144): the
  same intervals weight ``exp(-ΔH / (R·T_k))`` (Haynes 1971; USP <1079.2>); score ``mkt_c`` is the
  MKT so far in °C, NaN until one positive interval has been seen. An interval whose held
  temperature is at or below absolute zero is left out rather than poisoning the sum.
* **Door** (``door_max_s``, inf = off; value >= 0.5 means open): ``DOOR_OPEN`` on an open reading
  when the door has been open continuously, since the first open reading of the run, for strictly
  longer than ``door_max_s``.

Time: a reading older than the sensor's latest (``ts < prev_ts``: late or replayed) is judged
(band, and the budget and door as they stand) but moves no state, so it can neither rewind time nor
be counted twice; an equal timestamp adds a zero interval. No rule ever divides by an interval.

Nothing here is rebaselined on a lot change: a shipment's excursion budget and MKT belong to the
shipment, and a lot change-over must not forgive time already spent out of band.

Three implementations of these semantics (see ``family.py``): the Numba ``kernel`` below, the
NumPy ``vectorised`` version (sensor-grouped scans, see ``_seg_accumulate``) and the plain-Python
``reference`` in ``coldchain_reference.py``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from numba import njit

from ingest.detect.coldchain_reference import KELVIN, NS, OPEN, R_GAS, reference
from ingest.detect.family import SKIP, Field, RuleFamily
from qctrace.schema import Flag

__all__ = ["FAMILY", "R_GAS", "kernel", "mean_kinetic_temperature", "vectorised"]

BAND_LOW = np.uint32(Flag.BAND_LOW)
BAND_HIGH = np.uint32(Flag.BAND_HIGH)
BUDGET = np.uint32(Flag.BUDGET)
DOOR_OPEN = np.uint32(Flag.DOOR_OPEN)
_INT64_MIN = np.iinfo(np.int64).min


@njit(cache=True, nogil=True)
def kernel(idx, ts, values, flags, excursion_s, mkt_c,
           band_lo, band_hi, budget_s, max_dt_s, mkt, delta_h, door_max_s,
           prev_ts, prev_x, out_ns, mkt_ns, mkt_sum, door_since):
    """The cold-chain rules over one batch; state arrays are updated in place (see module docstring)."""
    for i in range(idx.shape[0]):
        if flags[i] & SKIP:
            excursion_s[i] = np.nan
            mkt_c[i] = np.nan
            continue
        s = idx[i]
        t = ts[i]
        x = values[i]
        lo = band_lo[s]
        hi = band_hi[s]
        px = prev_x[s]
        first = px != px
        if first or t >= prev_ts[s]:
            if not first:
                dt = t - prev_ts[s]
                if dt / NS > max_dt_s[s]:
                    dt = max(np.int64(max_dt_s[s] * NS), np.int64(0))
                if px < lo or px > hi:
                    out_ns[s] += dt
                tk = px + KELVIN
                if mkt[s] != 0 and tk > 0.0:
                    mkt_ns[s] += dt
                    mkt_sum[s] += math.exp(-delta_h[s] / (R_GAS * tk)) * (dt / NS)
            if x >= OPEN and not px >= OPEN:
                door_since[s] = t
            prev_ts[s] = t
            prev_x[s] = x
        f = np.uint32(0)
        if x < lo:
            f |= BAND_LOW
        if x > hi:
            f |= BAND_HIGH
        if out_ns[s] / NS > budget_s[s] and (x < lo or x > hi):
            f |= BUDGET
        if x >= OPEN and prev_x[s] >= OPEN and (t - door_since[s]) / NS > door_max_s[s]:
            f |= DOOR_OPEN
        flags[i] |= f
        excursion_s[i] = out_ns[s] / NS if (lo == lo or hi == hi) else np.nan
        mkt_c[i] = np.nan
        if mkt[s] != 0 and mkt_ns[s] > 0:
            r = mkt_sum[s] / (mkt_ns[s] / NS)
            if 0.0 < r < 1.0:
                mkt_c[i] = delta_h[s] / R_GAS / -math.log(r) - KELVIN


def _seg_accumulate(ufunc: np.ufunc, v: np.ndarray, start: np.ndarray, length: np.ndarray,
                    seed: np.ndarray, layout: str | None = None) -> np.ndarray:
    """``ufunc.accumulate`` within each contiguous segment, starting from ``seed[segment]``.

    Each element is combined strictly left to right, as the reference loop does, so float sums
    agree to the last bit rather than depending on a global cumsum minus an offset (which loses
    a small segment's precision after a large one). NumPy has no segmented accumulate, so pick the
    layout by shape: a padded ``[segments, longest]`` matrix when padding is cheap (one C call);
    otherwise loop ``min(segments, longest) <= sqrt(n)`` times: per segment when a few are long,
    or in rounds (the k-th element of every segment at least that long) when many are short.
    ``layout`` ("dense", "segments", "rounds") forces one, for tests.
    """
    n, m = v.shape[0], start.shape[0]
    out = np.empty_like(v)
    if n == 0:
        return out
    longest = int(length.max())
    if layout is None:
        layout = "dense" if m * (longest + 1) <= 2 * n + 4096 else "segments" if m <= longest else "rounds"
    if layout == "dense":
        row = np.repeat(np.arange(m), length)
        col = np.arange(n) - np.repeat(start, length) + 1
        mat = np.zeros((m, longest + 1), dtype=v.dtype)
        mat[:, 0] = seed
        mat[row, col] = v
        return ufunc.accumulate(mat, axis=1)[row, col]
    if layout == "segments":
        for j in range(m):
            a, b = start[j], start[j] + length[j]
            out[a:b] = ufunc.accumulate(np.concatenate((seed[j:j + 1].astype(v.dtype), v[a:b])))[1:]
        return out
    by_len = np.argsort(-length, kind="stable")
    first, acc = start[by_len], seed[by_len].astype(v.dtype)
    live = m - np.searchsorted(np.sort(length), np.arange(longest), side="right")  # segments longer than k
    for k in range(longest):
        rows = first[:live[k]] + k
        acc = ufunc(acc[:live[k]], v[rows])
        out[rows] = acc
    return out


def _seg_cumsum_exact(d: np.ndarray, start: np.ndarray, length: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """Integer running sums per segment from ``seed``: one global cumsum, exact even if it wraps."""
    c = np.cumsum(d)
    base = np.zeros(start.shape[0], dtype=np.int64)
    base[1:] = c[start[1:] - 1]
    with np.errstate(over="ignore"):
        return c + np.repeat(seed - base, length)


def vectorised(idx: np.ndarray, ts: np.ndarray, values: np.ndarray, flags: np.ndarray,
               scores: Mapping[str, np.ndarray], params: Mapping[str, np.ndarray],
               state: Mapping[str, np.ndarray]) -> None:
    """The same rules in NumPy: group readings by sensor, then segmented scans instead of a loop.

    The valid rows are stably sorted by sensor (arrival order kept within a sensor). Per sensor:
    a running max of time finds the late rows; the in-order rows form a chain whose shifted copy
    gives each interval's held reading; integer cumsums give the budget time, ``_seg_accumulate``
    the MKT sum, a forward fill the door's open-since; every row then reads the state left by the
    latest in-order row at or before it.
    """
    exc_out, mkt_out = scores["excursion_s"], scores["mkt_c"]
    exc_out[:] = np.nan
    mkt_out[:] = np.nan
    rows = np.flatnonzero((flags & SKIP) == 0)
    if rows.size == 0:
        return
    key = idx[rows]
    if key.size and int(key.max()) < 2**16:
        key = key.astype(np.uint16)  # NumPy's stable sort is a radix sort for 16-bit keys
    order = rows[np.argsort(key, kind="stable")]
    s, t, x = idx[order], ts[order], values[order]
    n = order.size
    new_seg = np.empty(n, dtype=bool)
    new_seg[0] = True
    np.not_equal(s[1:], s[:-1], out=new_seg[1:])
    seg_start = np.flatnonzero(new_seg)
    seg_len = np.diff(np.append(seg_start, n))
    seg_of = np.cumsum(new_seg) - 1
    sens = s[seg_start]

    px0, pt0 = state["prev_x"][sens], state["prev_ts"][sens]
    has0 = ~np.isnan(px0)

    # 1. late rows: older than the newest reading before them (in the batch or in the state)
    seed_max = np.where(has0, pt0, _INT64_MIN)
    if ((t[1:] < t[:-1]) & ~new_seg[1:]).any():
        newest = _seg_accumulate(np.maximum, t, seg_start, seg_len, seed_max)
    else:
        newest = t
    before = np.empty(n, dtype=np.int64)
    before[1:] = newest[:-1]
    before[seg_start] = seed_max
    late = t < before

    # 2. the in-order chain: each in-order reading and the one it follows (or the state's)
    chain_all = not late.any()  # the usual case: the chain is every row, and step 3 is free
    if chain_all:
        io, si, ti, xi, gi, m = None, s, t, x, seg_of, n
        io_first, io_start, io_len = new_seg, seg_start, seg_len
    else:
        io = np.flatnonzero(~late)
        si, ti, xi, gi = s[io], t[io], x[io], seg_of[io]
        m = io.size
        io_first = np.empty(m, dtype=bool)
        if m:
            io_first[0] = True
            np.not_equal(gi[1:], gi[:-1], out=io_first[1:])
        io_start = np.flatnonzero(io_first)
        io_len = np.diff(np.append(io_start, m))
    io_seg = gi[io_start]
    io_sens = sens[io_seg]
    pt = np.empty(m, dtype=np.int64)
    pt[1:] = ti[:-1]
    pt[io_start] = pt0[io_seg]
    px = np.empty(m, dtype=np.float64)
    px[1:] = xi[:-1]
    px[io_start] = px0[io_seg]
    has = ~np.isnan(px)
    dt = np.where(has, ti - pt, 0)
    cap = params["max_dt_s"][si]
    with np.errstate(invalid="ignore"):
        over = dt / NS > cap
        dt[over] = np.maximum((cap[over] * NS).astype(np.int64), 0)
    lo_i, hi_i = params["band_lo"][si], params["band_hi"][si]
    d_out = np.where((px < lo_i) | (px > hi_i), dt, 0)
    tk = px + KELVIN
    mkt_i, dh_i = params["mkt"][si] != 0, params["delta_h"][si]
    use = mkt_i & (tk > 0.0)
    d_mkt = np.where(use, dt, 0)
    e = np.zeros(m, dtype=np.float64)
    e[use] = np.exp(-dh_i[use] / (R_GAS * tk[use])) * (dt[use] / NS)
    out_i = _seg_cumsum_exact(d_out, io_start, io_len, state["out_ns"][io_sens])
    mns_i = _seg_cumsum_exact(d_mkt, io_start, io_len, state["mkt_ns"][io_sens])
    msum_i = _seg_accumulate(np.add, e, io_start, io_len, state["mkt_sum"][io_sens])

    # door open-since: forward-fill the start of each open run (or the state's, if it continues one)
    is_open = xi >= OPEN
    was_open = px >= OPEN
    opened = is_open & ~was_open
    anchor = opened | (io_first & is_open & was_open)
    since_seed = state["door_since"][sens][gi]
    anchor_t = np.where(opened, ti, since_seed)
    last = np.maximum.accumulate(np.where(anchor, np.arange(m), -1))
    seg_first_io = np.repeat(io_start, io_len)
    since_i = np.where(last >= seg_first_io, anchor_t[np.maximum(last, 0)], since_seed)

    # 3. every valid row reads the state after the latest in-order row at or before it
    if chain_all:
        cur_px, cur_out, cur_mns, cur_msum, cur_since = xi, out_i, mns_i, msum_i, since_i
        lo, hi, mkt_on, dh = lo_i, hi_i, mkt_i, dh_i
    else:
        k = np.full(n, -1, dtype=np.int64)
        k[io] = np.arange(m)
        np.maximum.accumulate(k, out=k)
        ok = k >= 0
        ok[ok] = gi[k[ok]] == seg_of[ok]
        kk = k[ok]

        def now(after_io: np.ndarray, seed_seg: np.ndarray) -> np.ndarray:
            cur = seed_seg[seg_of]
            cur[ok] = after_io[kk]
            return cur

        cur_px = now(xi, px0)
        cur_out = now(out_i, state["out_ns"][sens])
        cur_mns = now(mns_i, state["mkt_ns"][sens])
        cur_msum = now(msum_i, state["mkt_sum"][sens])
        cur_since = now(since_i, state["door_since"][sens])
        lo, hi = params["band_lo"][s], params["band_hi"][s]
        mkt_on, dh = params["mkt"][s] != 0, params["delta_h"][s]
    f = np.where(x < lo, BAND_LOW, np.uint32(0))
    f |= np.where(x > hi, BAND_HIGH, np.uint32(0))
    f |= np.where((cur_out / NS > params["budget_s"][s]) & ((x < lo) | (x > hi)), BUDGET, np.uint32(0))
    door = (x >= OPEN) & (cur_px >= OPEN) & ((t - cur_since) / NS > params["door_max_s"][s])
    f |= np.where(door, DOOR_OPEN, np.uint32(0))
    flags[order] |= f
    exc_out[order] = np.where(np.isnan(lo) & np.isnan(hi), np.nan, cur_out / NS)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = cur_msum / (cur_mns / NS)
        good = mkt_on & (cur_mns > 0) & (r > 0.0) & (r < 1.0)
        mkt_out[order[good]] = dh[good] / R_GAS / -np.log(r[good]) - KELVIN

    # 4. state: the last in-order reading of each sensor that had one
    if m:
        end = io_start + io_len - 1
        state["prev_ts"][io_sens] = ti[end]
        state["prev_x"][io_sens] = xi[end]
        state["out_ns"][io_sens] = out_i[end]
        state["mkt_ns"][io_sens] = mns_i[end]
        state["mkt_sum"][io_sens] = msum_i[end]
        state["door_since"][io_sens] = since_i[end]


def mean_kinetic_temperature(temps_c: np.ndarray, weights: np.ndarray | None = None,
                             delta_h: float = 83144.0) -> float:
    """Mean kinetic temperature in °C of ``temps_c`` (Haynes 1971; USP <1079.2>), for lot reports.

    ``weights`` are the time each temperature was held (e.g. seconds to the next reading, as the
    streaming rule attributes them); equal weights when omitted, as the pharmacopoeia's formula
    for equally spaced readings has it. Computed as a log-mean-exp so a long record neither
    underflows nor loses digits.
    """
    t = np.asarray(temps_c, dtype=np.float64)
    w = np.ones_like(t) if weights is None else np.asarray(weights, dtype=np.float64)
    if t.ndim != 1 or t.shape != w.shape:
        raise ValueError(f"temps_c and weights must be 1-D and the same length, got {t.shape} and {w.shape}")
    if t.size == 0 or not np.isfinite(t).all() or (t <= -KELVIN).any():
        raise ValueError("temps_c must be non-empty, finite and above absolute zero (°C); drop NaN readings first")
    if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError("weights must be finite, non-negative and not all zero")
    if not delta_h > 0:
        raise ValueError(f"delta_h must be a positive activation energy in J/mol, got {delta_h}")
    a = -delta_h / (R_GAS * (t + KELVIN))
    top = a[w > 0].max()
    log_mean = top + math.log(float(np.dot(w, np.exp(a - top))) / float(w.sum()))
    return delta_h / R_GAS / -log_mean - KELVIN


FAMILY = RuleFamily(
    name="coldchain",
    bits=int(Flag.BAND_LOW | Flag.BAND_HIGH | Flag.BUDGET | Flag.DOOR_OPEN),
    params=(
        Field("band_lo", np.float64, math.nan),
        Field("band_hi", np.float64, math.nan),
        Field("budget_s", np.float64, math.inf),
        Field("max_dt_s", np.float64, 300.0),
        Field("mkt", np.uint8, 0),
        Field("delta_h", np.float64, 83144.0),
        Field("door_max_s", np.float64, math.inf),
    ),
    state=(
        Field("prev_ts", np.int64, 0),  # time of the latest in-order reading (meaningless while prev_x is NaN)
        Field("prev_x", np.float64, math.nan),  # its value; NaN = no reading yet
        Field("out_ns", np.int64, 0),  # cumulative out-of-band time, ns
        Field("mkt_ns", np.int64, 0),  # cumulative time weighted into the MKT, ns
        Field("mkt_sum", np.float64, 0.0),  # sum of exp(-ΔH/(R·T_k))·dt_s
        Field("door_since", np.int64, 0),  # first reading of the current open run (while prev_x >= 0.5)
    ),
    scores=("excursion_s", "mkt_c"),
    kernel=kernel,
    reference=reference,
    vectorised=vectorised,
    rebaseline={},
)

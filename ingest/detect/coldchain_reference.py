"""Plain-Python twin of the cold-chain rule family (``coldchain.py``), written for clarity.

It walks the readings one by one with Python ints and floats, so a disagreement with the Numba
kernel or the NumPy version points at a typing, casting or vectorising slip. The semantics are
documented once, in ``coldchain.py``; this file only restates them as a loop.
"""

from __future__ import annotations

import math

from ingest.detect.family import SKIP
from qctrace.schema import Flag

R_GAS = 8.3144598  # J/(mol·K), as USP <1079.2> and the brief give it
KELVIN = 273.15
NS = 1e9  # nanoseconds per second
OPEN = 0.5  # a door_open reading at or above this means open


def reference(idx: list[int], ts: list[int], values: list[float], flags: list[int],
              scores: dict[str, list[float]], params: dict[str, list], state: dict[str, list]) -> None:
    """Band, excursion budget, mean kinetic temperature and door-open rules, one reading at a time."""
    skip = int(SKIP)
    lo_p, hi_p, budget_p, cap_p = params["band_lo"], params["band_hi"], params["budget_s"], params["max_dt_s"]
    mkt_p, dh_p, door_p = params["mkt"], params["delta_h"], params["door_max_s"]
    prev_ts, prev_x, out_ns = state["prev_ts"], state["prev_x"], state["out_ns"]
    mkt_ns, mkt_sum, door_since = state["mkt_ns"], state["mkt_sum"], state["door_since"]
    exc_score, mkt_score = scores["excursion_s"], scores["mkt_c"]
    for i, (s, t, x) in enumerate(zip(idx, ts, values, strict=True)):
        if flags[i] & skip:
            exc_score[i] = math.nan
            mkt_score[i] = math.nan
            continue
        lo, hi = lo_p[s], hi_p[s]
        px = prev_x[s]
        first = math.isnan(px)
        if first or t >= prev_ts[s]:  # a late reading (t < prev_ts) moves no state
            if not first:
                # the interval (prev_ts, t] is attributed to the previous reading, capped
                dt = t - prev_ts[s]
                if dt / NS > cap_p[s]:
                    dt = max(int(cap_p[s] * NS), 0)
                if px < lo or px > hi:
                    out_ns[s] += dt
                tk = px + KELVIN
                if mkt_p[s] and tk > 0:
                    mkt_ns[s] += dt
                    mkt_sum[s] += math.exp(-dh_p[s] / (R_GAS * tk)) * (dt / NS)
            if x >= OPEN and not px >= OPEN:
                door_since[s] = t
            prev_ts[s] = t
            prev_x[s] = x
        f = 0
        if x < lo:
            f |= Flag.BAND_LOW
        if x > hi:
            f |= Flag.BAND_HIGH
        if out_ns[s] / NS > budget_p[s] and (x < lo or x > hi):
            f |= Flag.BUDGET
        if x >= OPEN and prev_x[s] >= OPEN and (t - door_since[s]) / NS > door_p[s]:
            f |= Flag.DOOR_OPEN
        flags[i] |= int(f)
        exc_score[i] = out_ns[s] / NS if not (math.isnan(lo) and math.isnan(hi)) else math.nan
        mkt_score[i] = math.nan
        if mkt_p[s] and mkt_ns[s] > 0:
            r = mkt_sum[s] / (mkt_ns[s] / NS)
            if 0.0 < r < 1.0:
                mkt_score[i] = dh_p[s] / R_GAS / -math.log(r) - KELVIN

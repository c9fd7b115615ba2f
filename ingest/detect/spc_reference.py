"""Plain-Python twin of the SPC rule family (``spc.py``), written for clarity rather than speed.

It walks the readings one by one over lists, keeps every per-sensor value in the state lists by
name, and spells each rule out as the textbook states it, so a disagreement with the Numba kernel
or the NumPy rounds points at a slip there. The semantics are documented once, in ``spc.py``.
"""

from __future__ import annotations

import math

from ingest.detect.family import SKIP
from qctrace.schema import Flag

SIGMA_FLOOR = 1e-12  # relative: sigma must exceed SIGMA_FLOOR * max(1, |centre|) for the sigma rules


def _ones(m: int) -> int:
    return bin(m).count("1")


def reference(idx: list[int], ts: list[int], values: list[float], flags: list[int], scores: dict[str, list[float]],
              params: dict[str, list], state: dict[str, list]) -> None:
    """Nelson rules 1–8 and a two-sided, capped tabular CUSUM, one reading at a time (see ``spc.py``)."""
    p, st = params, state
    z_out, cusum_out = scores["spc_z"], scores["cusum"]
    for i, (s, x) in enumerate(zip(idx, values, strict=True)):
        z_out[i] = math.nan
        cusum_out[i] = math.nan
        if flags[i] & SKIP:
            continue
        c, sigma = p["centre"][s], p["sigma"][s]

        # Phase I: learn the centre and sigma from the first readings, judging none of them.
        if (math.isnan(c) or math.isnan(sigma)) and math.isnan(st["c0"][s]):
            n = st["n"][s] + 1
            delta = x - st["mean"][s]
            st["mean"][s] = st["mean"][s] + delta / n
            st["m2"][s] = st["m2"][s] + delta * (x - st["mean"][s])
            st["n"][s] = n
            if n >= max(p["phase1_n"][s], 2):
                st["c0"][s] = st["mean"][s]
                st["s0"][s] = math.sqrt(st["m2"][s] / (n - 1))
            continue
        if math.isnan(c):
            c = st["c0"][s]
        if math.isnan(sigma):
            sigma = st["s0"][s]

        found = 0
        d = x - c

        # Rule 2: nine in a row strictly on one side; a reading on the centre line ends the run.
        run = st["side"][s]
        if d > 0:
            run = run + 1 if run > 0 else 1
        elif d < 0:
            run = run - 1 if run < 0 else -1
        else:
            run = 0
        st["side"][s] = run
        if abs(run) >= 9:
            found |= Flag.NELSON_2

        # Rules 3 and 4: steps between consecutive judged readings; an equal value ends both runs.
        prev, last_step = st["prev"][s], st["direction"][s]
        step = 1 if x > prev else -1 if x < prev else 0  # no previous reading (NaN) is no step
        if step == 0:
            trend, alt = 0, 0
        else:
            trend = st["trend"][s] + 1 if step == last_step else 1
            alt = st["alt"][s] + 1 if last_step != 0 and step == -last_step else 1
        st["prev"][s], st["direction"][s], st["trend"][s], st["alt"][s] = x, step, trend, alt
        if trend >= 5:  # six points, five steps the same way
            found |= Flag.NELSON_3
        if alt >= 13:  # fourteen points, thirteen steps each reversing the last
            found |= Flag.NELSON_4

        cusum_found = 0
        if sigma > SIGMA_FLOOR * max(1.0, abs(c)):
            z = d / sigma
            if abs(z) > 3:
                found |= Flag.NELSON_1

            above2 = ((st["above2"][s] << 1) | (z > 2)) & 0b111
            below2 = ((st["below2"][s] << 1) | (z < -2)) & 0b111
            st["above2"][s], st["below2"][s] = above2, below2
            if (z > 2 and _ones(above2) >= 2) or (z < -2 and _ones(below2) >= 2):
                found |= Flag.NELSON_5

            above1 = ((st["above1"][s] << 1) | (z > 1)) & 0b11111
            below1 = ((st["below1"][s] << 1) | (z < -1)) & 0b11111
            st["above1"][s], st["below1"][s] = above1, below1
            if (z > 1 and _ones(above1) >= 4) or (z < -1 and _ones(below1) >= 4):
                found |= Flag.NELSON_6

            st["inner"][s] = st["inner"][s] + 1 if abs(z) < 1 else 0
            if st["inner"][s] >= 15:
                found |= Flag.NELSON_7
            st["outer"][s] = st["outer"][s] + 1 if abs(z) > 1 else 0
            if st["outer"][s] >= 8:
                found |= Flag.NELSON_8

            # CUSUM: judge the new sums against h, then cap what they carry forward (see spc.py).
            k, h = p["cusum_k"][s], p["cusum_h"][s]
            old_hi, old_lo = st["cusum_hi"][s], st["cusum_lo"][s]
            v = old_hi + z - k
            hi = v if v > 0 else 0.0
            v = old_lo - z - k
            lo = v if v > 0 else 0.0
            if h > 0 and hi > h:
                cusum_found |= Flag.CUSUM_HIGH
            if h > 0 and lo > h:
                cusum_found |= Flag.CUSUM_LOW
            z_out[i] = z
            cusum_out[i] = max(hi, lo)
            cap = p["cusum_cap"][s]
            limit = max(cap, 1.0) * h if cap > 0 and h > 0 and math.isfinite(max(cap, 1.0) * h) else math.inf
            st["cusum_hi"][s], st["cusum_lo"][s] = min(hi, limit), min(lo, limit)
            # A sum that was above h and no longer is: released, in control again, start afresh.
            if h > 0 and old_hi > h >= hi:
                st["cusum_hi"][s] = 0.0
            if h > 0 and old_lo > h >= lo:
                st["cusum_lo"][s] = 0.0

        flags[i] = int(flags[i]) | (int(found) & int(p["rules"][s])) | int(cusum_found)

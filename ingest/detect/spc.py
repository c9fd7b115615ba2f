"""SPC rule family: Nelson's eight run rules and a two-sided tabular CUSUM, per sensor.

Readings are judged per sensor in arrival order; ``ts`` plays no part, so a late or duplicated
reading simply counts as that sensor's next one. ``SKIP`` rows (Bad quality, NaN, ±inf) are ignored
entirely: they are not judged, get NaN scores and move no state (they neither extend nor break a run).

Centre line and sigma
    ``centre``/``sigma`` configured (not NaN) are used from the first reading. If either is NaN,
    phase I estimates it: the first ``max(phase1_n, 2)`` valid readings are accumulated (Welford
    ``n``/``mean``/``m2``), flagged by nothing and scored NaN; the last of them freezes ``c0 = mean``
    and ``s0`` = the sample standard deviation (n - 1), which stand in for whichever parameter is NaN
    from the next reading on. ``c0`` stays NaN until then, which is how a sensor knows it is in phase I.
    Sigma guard: the rules that need sigma (1, 5, 6, 7, 8 and the CUSUM) are evaluated only when
    ``sigma > 1e-12 * max(1, |centre|)``. A constant phase-I signal (sigma 0), or a configured sigma
    of 0 or less, would otherwise turn rounding noise into 3σ alarms, and make a flat line "hug the
    centre" (rule 7) forever; such a sensor gets NaN scores, leaves that state untouched, and keeps
    only rules 2–4, which need no scale. The detector's rebaseline re-learns it.

Zones, with z = (x - centre) / sigma: beyond 3σ is |z| > 3, beyond 2σ above is z > 2 (below z < -2),
beyond 1σ above z > 1, within 1σ |z| < 1; all strict, so a reading exactly on a zone edge is in
neither zone (z == 1 breaks both the rule-7 and the rule-8 run). The side of the centre is the sign
of x - centre; a reading exactly on the centre line is on neither side and ends the rule-2 run.
A step is the sign of x minus the sensor's previous judged reading: increasing means strictly
greater, decreasing strictly smaller; an equal value is no step and ends both the rule-3 and the
rule-4 run; the first judged reading after phase I or a rebaseline has no step.

Each rule flags the reading that completes its pattern and each further reading while the pattern
still holds in the window ending at that reading:

1. |z| > 3.
2. Nine readings in a row on the same side (``side``: signed run length).
3. Six readings in a row steadily increasing or decreasing: five steps the same way (``trend``,
   ``direction`` and ``prev``).
4. Fourteen readings in a row alternating up and down: thirteen steps, each the reverse of the one
   before (``alt``).
5. Two of the last three beyond 2σ on the same side, the flagged reading being one of them
   (``above2``/``below2``: 3-bit histories, bit 0 the latest reading).
6. Four of the last five beyond 1σ on the same side, the flagged reading being one of them
   (``above1``/``below1``: 5-bit histories).
7. Fifteen in a row within 1σ (``inner``).
8. Eight in a row beyond 1σ, either side, not necessarily both (``outer``), as Minitab reads Nelson.

``rules`` masks which ``NELSON_*`` bits may be set (all eight by default); the state behind a
disabled rule is still kept, so enabling it later judges from a full history.

CUSUM (Montgomery's tabular form, in sigma units): ``cusum_hi = max(0, cusum_hi + z - k)``,
``cusum_lo = max(0, cusum_lo - z - k)``; ``CUSUM_HIGH`` when ``cusum_hi > h``, ``CUSUM_LOW`` when
``cusum_lo > h``. The sums are not reset after a signal, so the flag stays on while the shift lasts;
the detector's rebaseline zeroes them. ``cusum_h = inf`` disables the alarms (and so does 0,
a negative value or NaN, rather than alarming on every reading); the sums and the ``cusum`` score
still run.

Capped CUSUM (``cusum_cap``, in units of h, default 2): after a reading has been judged, each sum
carries at most ``cusum_cap * h`` into the next one. Why: an uncapped sum remembers the whole size of
a fault, not only that there was one. During a two-minute 3σ shift ``cusum_hi`` climbs to ~300; once
the process is back it falls by only about k = 0.5 a reading, so the alarm outlived every fault by
~10 minutes at 1 Hz and swallowed the next one. Capped, the sum is at most ``cusum_cap * h`` when the
shift ends and the flag clears within about ``(cusum_cap - 1) * h / k`` in-control readings (20 with
h = 10, k = 0.5, cap 2). This is the upper-barrier ("capped" or "winsorised sum") form of the CUSUM,
a cousin of reset-on-signal schemes: ``cusum_cap = 1`` holds the sum at h after each signal, so
the flag stays on only while readings keep exceeding k. A cap between 0 and 1 counts as 1: a limit
below h would clip the sums on their way up and delay or suppress the signal. So the cap never
bites before a sum has passed h, and the sums are judged against h *before* it: it never delays a
signal. The ``cusum`` score is the same uncapped value the alarm was judged on (``cusum > h``
exactly when flagged, where alarms are on); the state holds the capped sums. No cap unless
``cusum_cap`` and h are positive and their product finite: 0, NaN, ±inf or a negative cap mean
"uncapped", and with the alarms off (h = inf, 0, NaN) there is nothing to cap against.

Release (with the alarms on): a sum that was above h and is at or below h after a reading restarts
at 0; the flag has just cleared, the process is taken as in control again. Why: left where it was,
the sum sits just under h, a head start of h (Lucas and Crosier's "fast initial response", which is
meant for a process suspected *out* of control), so in-control noise pushes it back over within a
few readings: on simulated 3σ faults of 120 readings about 30% of the alarms came back within 100
readings of clearing, a chatter of short false episodes after each fault. Restarting at 0 is the
classic restart-after-signal of Page's scheme, applied when the evidence is gone rather than when
it first appears: it cannot delay a first signal (no sum was above h before it), and during a
sustained shift the sum rides near the cap, far from h. With a cap of exactly 1 the sum sits at h,
not above it, so it is never released this way.

Scores: ``spc_z`` = z and ``cusum`` = max(cusum_hi, cusum_lo) of the reading (before the cap).

Three implementations agree exactly on flags (``tests/ingest/test_spc.py``): the Numba ``kernel``,
``spc_reference.reference`` (plain Python) and ``vectorised`` (NumPy, in rounds across sensors).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from ingest.detect.family import SKIP, Field, RuleFamily
from ingest.detect.spc_reference import SIGMA_FLOOR, reference
from qctrace.schema import Flag

NELSON = [int(Flag.NELSON_1), int(Flag.NELSON_2), int(Flag.NELSON_3), int(Flag.NELSON_4), int(Flag.NELSON_5),
          int(Flag.NELSON_6), int(Flag.NELSON_7), int(Flag.NELSON_8)]
N1, N2, N3, N4, N5, N6, N7, N8 = NELSON
NELSON_ALL = N1 | N2 | N3 | N4 | N5 | N6 | N7 | N8
CUSUM_HIGH = int(Flag.CUSUM_HIGH)
CUSUM_LOW = int(Flag.CUSUM_LOW)
_SKIP = int(SKIP)

PARAMS = (
    Field("centre", np.float64, math.nan),  # NaN: estimate in phase I
    Field("sigma", np.float64, math.nan),  # NaN: estimate in phase I
    Field("phase1_n", np.int64, 100),  # readings in phase I (at least 2)
    Field("rules", np.uint32, NELSON_ALL),  # which NELSON_* bits may be set
    Field("cusum_k", np.float64, 0.5),  # allowance, in sigmas (half the shift to detect)
    Field("cusum_h", np.float64, 5.0),  # decision interval, in sigmas; inf disables
    Field("cusum_cap", np.float64, 2.0),  # sums carried at most cusum_cap * cusum_h; 0, NaN or inf: no cap
)
STATE = (
    Field("n", np.int64, 0),  # phase-I readings seen
    Field("mean", np.float64, 0.0),  # phase-I Welford mean
    Field("m2", np.float64, 0.0),  # phase-I Welford sum of squared deviations
    Field("c0", np.float64, math.nan),  # estimated centre, NaN while in phase I
    Field("s0", np.float64, math.nan),  # estimated sigma, NaN while in phase I
    Field("prev", np.float64, math.nan),  # previous judged reading
    Field("direction", np.int64, 0),  # sign of the previous step: -1, 0, 1
    Field("trend", np.int64, 0),  # steps in a row the same way (rule 3)
    Field("alt", np.int64, 0),  # steps in a row, each reversing the last (rule 4)
    Field("side", np.int64, 0),  # readings in a row on one side, signed (rule 2)
    Field("above2", np.int64, 0),  # last 3 readings beyond 2σ above, bit 0 latest (rule 5)
    Field("below2", np.int64, 0),
    Field("above1", np.int64, 0),  # last 5 readings beyond 1σ above (rule 6)
    Field("below1", np.int64, 0),
    Field("inner", np.int64, 0),  # readings in a row within 1σ (rule 7)
    Field("outer", np.int64, 0),  # readings in a row beyond 1σ (rule 8)
    Field("cusum_hi", np.float64, 0.0),
    Field("cusum_lo", np.float64, 0.0),
)
SCORES = ("spc_z", "cusum")


@njit(cache=True, nogil=True)
def _ones5(m):
    return (m & 1) + ((m >> 1) & 1) + ((m >> 2) & 1) + ((m >> 3) & 1) + ((m >> 4) & 1)


@njit(cache=True, nogil=True)
def _cap_limit(cap, h):
    """The most a sum may carry into the next reading: ``max(cap, 1) * h``, or inf where there is no cap.

    No cap unless both factors are positive and the product finite: 0 and NaN mean "off", an
    infinite ``h`` (alarms off) leaves nothing to cap against, and a zero or negative limit would
    clamp the sums to nothing. ``vectorised`` and ``spc_reference`` spell out the same test and the
    same single multiplication, so the capped sums agree bit for bit.
    """
    lim = max(cap, 1.0) * h
    return lim if cap > 0.0 and h > 0.0 and lim < math.inf else math.inf


@njit(cache=True, nogil=True)
def kernel(idx, ts, values, flags, spc_z, cusum, centre, sigma, phase1_n, rules, cusum_k, cusum_h, cusum_cap,
           n, mean, m2, c0, s0, prev, direction, trend, alt, side, above2, below2, above1, below1, inner, outer,
           cusum_hi, cusum_lo):
    """Nelson rules 1–8 and the tabular CUSUM over one batch, updating the state in place.

    Phase II is written as arithmetic on 0/1 values rather than ``if`` chains: on noisy data the
    zone and direction tests are coin flips the CPU cannot predict, and the branch-free form runs
    about twice as fast.
    """
    for i in range(idx.shape[0]):
        spc_z[i] = np.nan
        cusum[i] = np.nan
        if flags[i] & _SKIP:
            continue
        s = idx[i]
        x = values[i]
        c = centre[s]
        sg = sigma[s]
        if (math.isnan(c) or math.isnan(sg)) and math.isnan(c0[s]):
            k = n[s] + 1
            delta = x - mean[s]
            mean[s] = mean[s] + delta / k
            m2[s] = m2[s] + delta * (x - mean[s])
            n[s] = k
            if k >= max(phase1_n[s], 2):
                c0[s] = mean[s]
                s0[s] = math.sqrt(m2[s] / (k - 1))
            continue
        if math.isnan(c):
            c = c0[s]
        if math.isnan(sg):
            sg = s0[s]

        found = 0
        d = x - c
        # Rules 2-4 need no sigma.
        up = np.int64(d > 0.0)
        down = np.int64(d < 0.0)
        run = side[s]
        run = up * (max(run, 0) + 1) - down * (max(-run, 0) + 1)
        side[s] = run
        found |= np.int64(abs(run) >= 9) * N2
        p = prev[s]
        last = direction[s]
        step = np.int64(x > p) - np.int64(x < p)
        moved = np.int64(step != 0)
        tr = (trend[s] * np.int64(step == last) + 1) * moved
        al = (alt[s] * np.int64(step == -last) + 1) * moved
        prev[s] = x
        direction[s] = step
        trend[s] = tr
        alt[s] = al
        found |= np.int64(tr >= 5) * N3 | np.int64(al >= 13) * N4

        cfound = 0
        if sg > SIGMA_FLOOR * max(1.0, abs(c)):
            z = d / sg
            az = abs(z)
            hi2 = np.int64(z > 2.0)
            lo2 = np.int64(z < -2.0)
            hi1 = np.int64(z > 1.0)
            lo1 = np.int64(z < -1.0)
            a2 = ((above2[s] << 1) | hi2) & 7
            b2 = ((below2[s] << 1) | lo2) & 7
            a1 = ((above1[s] << 1) | hi1) & 31
            b1 = ((below1[s] << 1) | lo1) & 31
            above2[s] = a2
            below2[s] = b2
            above1[s] = a1
            below1[s] = b1
            inn = (inner[s] + 1) * np.int64(az < 1.0)
            out = (outer[s] + 1) * np.int64(az > 1.0)
            inner[s] = inn
            outer[s] = out
            found |= (np.int64(az > 3.0) * N1
                      | (hi2 & np.int64((a2 & 6) != 0) | lo2 & np.int64((b2 & 6) != 0)) * N5
                      | (hi1 & np.int64(_ones5(a1) >= 4) | lo1 & np.int64(_ones5(b1) >= 4)) * N6
                      | np.int64(inn >= 15) * N7 | np.int64(out >= 8) * N8)
            kk = cusum_k[s]
            h = cusum_h[s]
            old_hi = cusum_hi[s]
            old_lo = cusum_lo[s]
            v = old_hi + z - kk
            hi = v if v > 0.0 else 0.0
            v = old_lo - z - kk
            lo = v if v > 0.0 else 0.0
            on = np.int64(h > 0.0)
            cfound = (on & np.int64(hi > h)) * CUSUM_HIGH | (on & np.int64(lo > h)) * CUSUM_LOW
            spc_z[i] = z
            cusum[i] = max(hi, lo)
            # Judged above, capped now: the cap shortens the memory of a fault, never the signal.
            lim = _cap_limit(cusum_cap[s], h)
            hi_next = hi if hi <= lim else lim
            lo_next = lo if lo <= lim else lim
            # Released (was above h, is not now): in control again, the sum restarts from nothing.
            cusum_hi[s] = 0.0 if h > 0.0 and old_hi > h and hi <= h else hi_next
            cusum_lo[s] = 0.0 if h > 0.0 and old_lo > h and lo <= h else lo_next
        flags[i] = flags[i] | np.uint32((found & rules[s]) | cfound)


_POP = np.array([bin(m).count("1") for m in range(32)], dtype=np.int64)


def _layout(idx: np.ndarray, flags: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Reorder the valid rows into rounds: round k holds the k-th valid reading of every sensor.

    Sensors are numbered by descending reading count ("columns"), so the sensors present in round k
    are always columns ``0 .. m_k - 1``: per-sensor state lives in compact arrays and every round
    works on contiguous prefix slices, with no scatter or gather. Returns the rows in round-major
    order, the round offsets, and the sensor of each column.
    """
    rows = np.flatnonzero((flags & SKIP) == 0)
    sens = idx[rows]
    # A stable sort groups rows by sensor and keeps arrival order; NumPy radix-sorts 16-bit keys.
    key = sens.astype(np.uint16) if sens.size and 0 <= sens.min() and sens.max() < 1 << 16 else sens
    order = np.argsort(key, kind="stable")
    rows, sens = rows[order], sens[order]
    starts = np.flatnonzero(np.r_[True, sens[1:] != sens[:-1]])
    counts = np.diff(np.r_[starts, sens.size])
    by_count = np.argsort(-counts, kind="stable")
    col_of_group = np.empty(counts.size, np.int64)
    col_of_group[by_count] = np.arange(counts.size)
    rank = np.arange(sens.size) - np.repeat(starts, counts)
    col = np.repeat(col_of_group, counts)
    rounds = int(counts.max())
    per_round = counts.size - np.cumsum(np.bincount(counts, minlength=rounds + 1))[:rounds]
    offsets = np.r_[0, np.cumsum(per_round)]
    flat = np.empty(sens.size, np.int64)
    flat[offsets[rank] + col] = rows
    return flat, offsets, sens[starts][by_count], counts[by_count]


def vectorised(idx: np.ndarray, ts: np.ndarray, values: np.ndarray, flags: np.ndarray,
               scores: dict[str, np.ndarray], params: dict[str, np.ndarray], state: dict[str, np.ndarray]) -> None:
    """The same rules in NumPy, processing the batch in rounds vectorised across sensors.

    Round k takes the k-th valid reading of every sensor that has one, so a round touches each
    sensor at most once and the per-sensor recursions (Welford, runs, CUSUM) become a few whole-array
    operations per round. Cost: about 60 NumPy calls per round, and as many rounds as the busiest
    sensor has readings in the batch, so it does well with many sensors per batch and badly when one
    sensor dominates it (where the Numba kernel's single pass is the answer).
    """
    z_out, cusum_out = scores["spc_z"], scores["cusum"]
    z_out[:] = np.nan
    cusum_out[:] = np.nan
    if idx.size == 0 or not ((flags & SKIP) == 0).any():
        return
    flat, offsets, sensors, _ = _layout(idx, flags)
    xs = values[flat]
    zf = np.full(flat.size, np.nan)
    cf = np.full(flat.size, np.nan)
    ff = np.zeros(flat.size, np.uint32)

    p = {f.name: params[f.name][sensors] for f in PARAMS}
    st = {f.name: state[f.name][sensors] for f in STATE}
    centre, sigma = p["centre"], p["sigma"]
    need = np.isnan(centre) | np.isnan(sigma)
    p1 = np.maximum(p["phase1_n"], 2)
    rules = p["rules"].astype(np.int64)
    kk, h = p["cusum_k"], p["cusum_h"]
    alarms = h > 0.0
    with np.errstate(invalid="ignore"):  # 0 * inf and NaN caps: no cap, as in _cap_limit
        cap = np.maximum(p["cusum_cap"], 1.0) * h
        cap = np.where((p["cusum_cap"] > 0.0) & alarms & (cap < np.inf), cap, np.inf)
    n, mean, m2, c0, s0 = st["n"], st["mean"], st["m2"], st["c0"], st["s0"]
    prev, direction, trend, alt, side = st["prev"], st["direction"], st["trend"], st["alt"], st["side"]
    above2, below2, above1, below1 = st["above2"], st["below2"], st["above1"], st["below1"]
    inner, outer, hi, lo = st["inner"], st["outer"], st["cusum_hi"], st["cusum_lo"]

    def effective() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ce = np.where(np.isnan(centre), c0, centre)
        se = np.where(np.isnan(sigma), s0, sigma)
        with np.errstate(invalid="ignore"):
            ok = se > SIGMA_FLOOR * np.maximum(1.0, np.abs(ce))
        return ce, se, ok

    ce, se, ok = effective()
    learning = need & np.isnan(c0)
    for r in range(offsets.size - 1):
        a, b = offsets[r], offsets[r + 1]
        m = b - a
        x = xs[a:b]
        judged: slice | np.ndarray = slice(0, m)
        if learning[:m].any():
            was_learning = learning[:m].copy()
            ph = np.flatnonzero(was_learning)
            k = n[ph] + 1
            xp = x[ph]
            delta = xp - mean[ph]
            mp = mean[ph] + delta / k
            m2[ph] = m2[ph] + delta * (xp - mp)
            mean[ph] = mp
            n[ph] = k
            done = ph[k >= p1[ph]]
            if done.size:
                c0[done] = mean[done]
                s0[done] = np.sqrt(m2[done] / (n[done] - 1))
                learning[done] = False
                ce, se, ok = effective()
            judged = np.flatnonzero(~was_learning)
            if judged.size == 0:
                continue
        # Rules 2-4 need no sigma.
        xj = x[judged]
        d = xj - ce[judged]
        run = side[judged]
        up, down = d > 0.0, d < 0.0
        run = up * (np.maximum(run, 0) + 1) - down * (np.maximum(-run, 0) + 1)
        side[judged] = run
        found = ((run >= 9) | (run <= -9)) * np.int64(N2)
        pv = prev[judged]
        step = (xj > pv).astype(np.int64) - (xj < pv)
        last = direction[judged]
        moved = step != 0
        tr = np.where(step == last, trend[judged] + 1, 1) * moved
        al = np.where((step == -last) & (last != 0), alt[judged] + 1, moved)
        prev[judged] = xj
        direction[judged] = step
        trend[judged] = tr
        alt[judged] = al
        found |= (tr >= 5) * np.int64(N3)
        found |= (al >= 13) * np.int64(N4)
        cfound = np.zeros(found.size, np.int64)
        # Rules 1, 5-8 and the CUSUM, where sigma is usable.
        okj = ok[judged]
        if okj.all():
            sel, zs = judged, slice(None)
        else:
            zs = np.flatnonzero(okj)
            sel = np.arange(m)[judged][zs]
        if isinstance(sel, slice) or sel.size:
            z = d[zs] / se[sel]
            hi2, lo2, hi1, lo1 = z > 2.0, z < -2.0, z > 1.0, z < -1.0
            az = np.abs(z)
            f = (az > 3.0) * np.int64(N1)
            a2 = ((above2[sel] << 1) | hi2) & 7
            b2 = ((below2[sel] << 1) | lo2) & 7
            above2[sel], below2[sel] = a2, b2
            f |= ((hi2 & ((a2 & 6) != 0)) | (lo2 & ((b2 & 6) != 0))) * np.int64(N5)
            a1 = ((above1[sel] << 1) | hi1) & 31
            b1 = ((below1[sel] << 1) | lo1) & 31
            above1[sel], below1[sel] = a1, b1
            f |= ((hi1 & (_POP[a1] >= 4)) | (lo1 & (_POP[b1] >= 4))) * np.int64(N6)
            inn = (inner[sel] + 1) * (az < 1.0)
            out = (outer[sel] + 1) * (az > 1.0)
            inner[sel], outer[sel] = inn, out
            f |= (inn >= 15) * np.int64(N7)
            f |= (out >= 8) * np.int64(N8)
            ksel = kk[sel]
            old_hi, old_lo = hi[sel], lo[sel]
            v = old_hi + z - ksel
            hs = np.where(v > 0.0, v, 0.0)
            v = old_lo - z - ksel
            ls = np.where(v > 0.0, v, 0.0)
            hsel, al_on = h[sel], alarms[sel]
            cf_ = ((al_on & (hs > hsel)) * np.int64(CUSUM_HIGH)) | ((al_on & (ls > hsel)) * np.int64(CUSUM_LOW))
            lim = cap[sel]
            hi[sel] = np.where(al_on & (old_hi > hsel) & (hs <= hsel), 0.0, np.minimum(hs, lim))
            lo[sel] = np.where(al_on & (old_lo > hsel) & (ls <= hsel), 0.0, np.minimum(ls, lim))
            found[zs] |= f
            cfound[zs] = cf_
            zf[a:b][sel] = z
            cf[a:b][sel] = np.maximum(hs, ls)
        ff[a:b][judged] = ((found & rules[judged]) | cfound).astype(np.uint32)

    z_out[flat] = zf
    cusum_out[flat] = cf
    flags[flat] |= ff
    for f in STATE:
        state[f.name][sensors] = st[f.name]


FAMILY = RuleFamily(
    name="spc",
    bits=NELSON_ALL | CUSUM_HIGH | CUSUM_LOW,
    params=PARAMS,
    state=STATE,
    scores=SCORES,
    kernel=kernel,
    reference=reference,
    vectorised=vectorised,
    rebaseline={f.name: f.default for f in STATE},
)

"""The robust rule family: rate of change, robust spikes, stuck values and gaps, per sensor.

These rules need no model of the process, only of the sensor, so they run on every sensor from
the first reading: ``RATE`` (faster than the physics allows), ``SPIKE`` (far from a running
median in running-MAD units), ``STUCK`` (a frozen value) and ``GAP`` (a reading after a silence).
``stale`` is the timer twin of ``GAP``: it names sensors that have gone silent without waiting
for their next reading (it sets no bit here; the detector raises ``Flag.STALE``).

Semantics, per sensor, readings in arrival order; rows with ``SKIP`` bits are ignored entirely:

* ``RATE``: ``|x - prev_x| / dt > max_rate`` (value units per second), ``dt`` from ``prev_ts``
  in seconds. When ``dt <= 0`` (a duplicate or late reading) the rate is not judged, and
  ``(prev_x, prev_ts)`` still move to this reading *together*, so ``prev_ts`` may move backwards:
  the pair always belongs to one reading and the next rate is measured over the true source-time
  distance between two values.
* ``STUCK``: ``stuck_run`` counts consecutive readings equal to the previous one (``x == prev_x``
  exactly, whatever the timestamps); the reading that makes ``stuck_n`` identical values in a row
  and every further identical one is flagged. Sensors that report quantised values (a counter, a
  door switch, a setpoint echo) legitimately repeat: give them ``stuck_n = 0`` (off) or a large
  ``stuck_n``; per-type defaults are configuration, not this module. (``stuck_n = 1`` flags
  every reading; meaningful values start at 2.)
* ``SPIKE``: streaming median/MAD by stochastic approximation, O(1) per reading, no window.
  With ``e = x - m`` and ``a = |e|`` against the state before the reading:

  - a *repeat* (``x == prev_x``, the comparison STUCK makes) is judged like any reading but never
    learnt, in warm-up or after: a frozen signal says nothing about the spread, and each sign step
    would shrink ``d`` by ``1 - eta`` (300 s stuck took ``d`` to its floor, and ordinary noise was
    then flagged for hours). Quantised sensors repeat often and lose nothing by it: a repeat carries
    no new information about where the median or the MAD is;
  - warm-up (first ``spike_warmup`` learnt readings; not judged, ``robust_z`` NaN): ``m`` is the
    running mean (``m += e / (n + 1)``) and ``d`` the running mean of ``a`` (``d += (a - d) / n``),
    a quick, conservative start (mean absolute deviation ≈ 0.80 σ against MAD ≈ 0.67 σ for normal
    noise, so ``d`` starts high and early flags are fewer, not more). Repeats do not count towards
    it, so a sensor frozen from its first reading does not finish warm-up with ``d`` at the floor;
  - after warm-up: ``robust_z = e / (1.4826 d)``; SPIKE when ``a > spike_k · 1.4826 d``;
  - an unflagged reading moves both by Robbins–Monro sign steps of size ``step = spike_eta · d``:
    ``m ± step`` towards ``x`` (the fixed point of E[sign(x - m)] = 0 is the median) and
    ``d ± step``, up when ``a > d`` (the fixed point of P(|x - m| > d) = ½ is the MAD). The steps
    scale with ``d``, so the estimate is unit-free; ``d`` changes by a factor ``1 ± eta`` and can
    never go negative;
  - a flagged reading moves neither (a spike does not shift the baseline) and opens an
    *excursion* on its side of ``m`` (``spike_side``). While it is open, unflagged readings on the
    same side are not learnt either (otherwise a level change just under the limit would inflate
    ``d`` by ``1 + eta`` per reading and hide itself); the first reading on the other side (or at
    ``m``) closes it and is learnt as usual. The excursion counts its flags (``spike_run``), its
    readings flagged or not (``spike_len``) and their sum (``spike_sum``). It is a level change,
    accepted, when it reaches ``spike_accept`` flags or ``2 · spike_accept`` readings: ``m``
    becomes the mean of its readings (``spike_sum / spike_len``) and ``d`` is kept (a level change
    is not a noise change). A clean step is thus flagged exactly ``spike_accept`` times. The
    length limit is for a step just under the limit, flagged only now and then (typically the
    return after a drift, which inflated ``d``): counting flags alone held learning back, and let
    in-control noise be flagged, for minutes; ``2 · spike_accept`` readings in a row on one side
    are themselves the evidence (chance ``2^(1 - 2 · spike_accept)`` after an isolated spike).
    ``spike_accept = 0`` never accepts;
  - after every update ``d >= max(spike_min_mad, spike_q, 1e-9 |m| + 1e-12)``, so a constant
    signal keeps a positive scale and ``robust_z`` is always finite-defined. ``spike_q`` is the
    sensor's resolution as seen: the smallest positive ``|x - prev_x|`` so far (``inf``, no floor,
    until a step was seen; it only shrinks, so a ``d`` stored earlier obeys the later floor too).
    A signal quantised to steps ``q`` thus never calls a one-step change a spike, without
    configuration (``spike_min_mad`` still sets a floor by hand). On a continuous signal the
    smallest step soon falls far below the noise and the floor does nothing.

  The three implementations do these floating-point operations in the same order, so they agree
  bit for bit, not only to a tolerance.
* ``GAP``: ``dt = ts - last_ts`` where ``last_ts`` is the newest source time heard (it never moves
  backwards, so a late reading cannot fake a silence). The expected interval is
  ``max_interval_ns`` when set, else ``gap_interval_ns``, an average of unflagged positive ``dt``
  (running mean for the first ``1 / gap_alpha`` intervals, then an EWMA of weight ``gap_alpha``)
  trusted once ``gap_n >= gap_warmup`` intervals were learnt. GAP when ``dt > gap_factor ·
  expected`` (with ``max_interval_ns`` set, the allowed silence is ``gap_factor ·
  max_interval_ns``: use ``gap_factor = 1`` for a hard limit). A flagged interval is not learnt;
  ``gap_accept`` consecutive GAP readings mean the sensor now reports more slowly, and the learnt
  interval restarts from the last ``dt`` (0 = never). ``dt <= 0`` is not judged (``gap_s`` NaN).

``rebaseline`` restarts the spike warm-up (a new lot or setpoint moves the level, not the sensor);
rate, stuck and gap state and the resolution ``spike_q`` describe the sensor and are kept.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from ingest.detect.family import SKIP, Field, RuleFamily
from ingest.detect.robust_reference import robust_reference
from qctrace.schema import Flag

__all__ = ["FAMILY", "NEVER", "expected_interval_ns", "robust_kernel", "robust_vectorised", "stale"]

RATE = np.uint32(Flag.RATE)
SPIKE = np.uint32(Flag.SPIKE)
STUCK = np.uint32(Flag.STUCK)
GAP = np.uint32(Flag.GAP)
NEVER = np.iinfo(np.int64).min  # prev_ts / last_ts of a sensor not heard from yet
MAD_SCALE = 1.4826  # MAD → σ for normal noise
MAD_REL_FLOOR = 1e-9  # d never falls below 1e-9 |m| + 1e-12 (and spike_min_mad)
MAD_ABS_FLOOR = 1e-12
NS = 1e9

PARAMS = (
    Field("max_rate", np.float64, math.inf),  # value units per second; inf = off
    Field("spike_k", np.float64, 6.0),  # scaled MADs; inf = off
    Field("spike_warmup", np.int64, 30),  # readings learnt before SPIKE may fire
    Field("spike_eta", np.float64, 0.05),  # step of the median/MAD updates, in MADs
    Field("spike_accept", np.int64, 10),  # consecutive spikes that make a new level; 0 = never
    Field("spike_min_mad", np.float64, 0.0),  # floor of the MAD in value units (≈ the resolution)
    Field("stuck_n", np.int64, 0),  # identical readings in a row that are STUCK; 0 = off
    Field("max_interval_ns", np.int64, 0),  # expected reporting interval; 0 = learn it
    Field("gap_factor", np.float64, 5.0),  # GAP when dt > gap_factor × expected interval
    Field("gap_warmup", np.int64, 5),  # intervals learnt before a learnt interval is trusted
    Field("gap_alpha", np.float64, 0.1),  # EWMA weight of the learnt interval
    Field("gap_accept", np.int64, 3),  # consecutive GAPs that make a new interval; 0 = never
)
STATE = (
    Field("prev_x", np.float64, math.nan),  # previous value in arrival order (RATE, STUCK)
    Field("prev_ts", np.int64, NEVER),  # its source time; may move backwards with prev_x
    Field("stuck_run", np.int64, 0),  # identical values in a row, this one included
    Field("spike_m", np.float64, 0.0),  # running median estimate
    Field("spike_d", np.float64, 0.0),  # running MAD estimate (unscaled)
    Field("spike_n", np.int64, 0),  # readings learnt; < spike_warmup = warming up
    Field("spike_run", np.int64, 0),  # SPIKE readings in the open excursion
    Field("spike_len", np.int64, 0),  # readings in the open excursion, flagged or not
    Field("spike_sum", np.float64, 0.0),  # sum of their values (the new level if accepted)
    Field("spike_side", np.int64, 0),  # side of the open excursion: +1 above m, -1 below, 0 none
    Field("spike_q", np.float64, math.inf),  # smallest positive |x - prev_x| seen: the resolution; inf = none yet
    Field("last_ts", np.int64, NEVER),  # newest source time heard; read by stale()
    Field("gap_interval_ns", np.float64, 0.0),  # learnt reporting interval; read via expected_interval_ns()
    Field("gap_n", np.int64, 0),  # intervals learnt
    Field("gap_run", np.int64, 0),  # consecutive GAP readings
)
SCORES = ("robust_z", "gap_s")


@njit(cache=True, nogil=True)
def robust_kernel(idx, ts, values, flags, robust_z, gap_s,
                  max_rate, spike_k, spike_warmup, spike_eta, spike_accept, spike_min_mad, stuck_n,
                  max_interval_ns, gap_factor, gap_warmup, gap_alpha, gap_accept,
                  prev_x, prev_ts, stuck_run, spike_m, spike_d, spike_n, spike_run, spike_len, spike_sum,
                  spike_side, spike_q, last_ts, gap_interval_ns, gap_n, gap_run):
    """RATE, SPIKE, STUCK and GAP for one batch in arrival order (semantics: module docstring)."""
    for i in range(idx.shape[0]):
        robust_z[i] = np.nan
        gap_s[i] = np.nan
        if flags[i] & SKIP:
            continue
        s = idx[i]
        t = ts[i]
        x = values[i]
        f = np.uint32(0)

        # RATE and STUCK: against the previous reading in arrival order.
        if prev_ts[s] != NEVER:
            dt = t - prev_ts[s]
            if dt > 0 and abs(x - prev_x[s]) / (float(dt) / NS) > max_rate[s]:
                f |= RATE
        repeat = x == prev_x[s]
        if repeat:
            stuck_run[s] += 1
        else:
            stuck_run[s] = 1
        step_x = abs(x - prev_x[s])  # NaN before the first reading: never below spike_q
        if step_x > 0.0 and step_x < spike_q[s]:
            spike_q[s] = step_x
        if stuck_n[s] > 0 and stuck_run[s] >= stuck_n[s]:
            f |= STUCK
        prev_x[s] = x
        prev_ts[s] = t

        # SPIKE: streaming median / MAD.
        n = spike_n[s]
        m = spike_m[s]
        d = spike_d[s]
        learnt = True
        if n == 0:
            m = x
            d = 0.0
            spike_n[s] = 1
        else:
            e = x - m
            a = abs(e)
            if n < spike_warmup[s]:
                if repeat:
                    learnt = False
                else:
                    m = m + e / (n + 1)
                    d = d + (a - d) / n
                    spike_n[s] = n + 1
            else:
                sc = MAD_SCALE * d
                robust_z[i] = e / sc
                side = 1 if e > 0.0 else (-1 if e < 0.0 else 0)
                acc = spike_accept[s]
                if a > spike_k[s] * sc:
                    f |= SPIKE
                    learnt = False
                    if side == spike_side[s]:
                        r = spike_run[s] + 1
                        ln = spike_len[s] + 1
                        tot = spike_sum[s] + x
                    else:
                        r = 1
                        ln = 1
                        tot = x
                    if acc > 0 and (r >= acc or ln >= 2 * acc):
                        m = tot / ln
                        learnt = True
                        r = 0
                        ln = 0
                        tot = 0.0
                        side = 0
                    spike_run[s] = r
                    spike_len[s] = ln
                    spike_sum[s] = tot
                    spike_side[s] = side
                elif spike_side[s] != 0 and side == spike_side[s]:
                    learnt = False
                    ln = spike_len[s] + 1
                    tot = spike_sum[s] + x
                    if acc > 0 and ln >= 2 * acc:
                        m = tot / ln
                        learnt = True
                        spike_run[s] = 0
                        spike_len[s] = 0
                        spike_sum[s] = 0.0
                        spike_side[s] = 0
                    else:
                        spike_len[s] = ln
                        spike_sum[s] = tot
                else:
                    spike_run[s] = 0
                    spike_len[s] = 0
                    spike_sum[s] = 0.0
                    spike_side[s] = 0
                    if repeat:
                        learnt = False
                    else:
                        step = spike_eta[s] * d
                        if e > 0.0:
                            m = m + step
                        elif e < 0.0:
                            m = m - step
                        if a > d:
                            d = d + step
                        else:
                            d = d - step
                        spike_n[s] = n + 1
        if learnt:
            q = spike_q[s] if spike_q[s] < math.inf else 0.0
            spike_m[s] = m
            spike_d[s] = max(d, max(max(spike_min_mad[s], q), MAD_REL_FLOOR * abs(m) + MAD_ABS_FLOOR))

        # GAP: silence since the newest source time heard.
        if last_ts[s] == NEVER:
            last_ts[s] = t
        else:
            dt = t - last_ts[s]
            if dt > 0:
                dtf = float(dt)
                if max_interval_ns[s] > 0:
                    expected = float(max_interval_ns[s])
                elif gap_n[s] >= gap_warmup[s]:
                    expected = gap_interval_ns[s]
                else:
                    expected = 0.0
                if expected > 0.0:
                    gap_s[i] = dtf / NS
                if expected > 0.0 and dtf > gap_factor[s] * expected:
                    f |= GAP
                    r = gap_run[s] + 1
                    if gap_accept[s] > 0 and r >= gap_accept[s]:
                        gap_interval_ns[s] = dtf
                        r = 0
                    gap_run[s] = r
                else:
                    gap_run[s] = 0
                    g = max(gap_alpha[s], 1.0 / (gap_n[s] + 1))
                    gap_interval_ns[s] = gap_interval_ns[s] + g * (dtf - gap_interval_ns[s])
                    gap_n[s] += 1
                last_ts[s] = t
        flags[i] |= f


def robust_vectorised(idx: np.ndarray, ts: np.ndarray, values: np.ndarray, flags: np.ndarray,
                      scores: dict[str, np.ndarray], params: dict[str, np.ndarray],
                      state: dict[str, np.ndarray], tail: int = 48) -> None:
    """The same rules in NumPy, the baseline the Numba kernel is measured against.

    RATE and STUCK depend only on the previous reading, so they are computed for the whole batch
    at once on the readings sorted stably by sensor (previous value by a shift, run lengths by a
    running maximum of the last reset position). SPIKE and GAP feed their own flags back into
    their state, so they go in *rounds*: round k holds the k-th reading of every sensor that has
    one. Sensors are ordered by their number of readings, most first, so the sensors active in a
    round are always a prefix: state is sliced (views, no gathers) and each round's readings are
    one contiguous block of a single up-front permutation. Cost: one pass of a few dozen array
    operations per round, i.e. per reading of the busiest sensor. Once fewer than ``tail``
    sensors are left (a skewed batch: a few chatty sensors), their remaining readings go through
    a scalar loop, which is faster than NumPy on arrays that small (``tail=0``: rounds only).
    """
    robust_z, gap_s = scores["robust_z"], scores["gap_s"]
    robust_z[:] = np.nan
    gap_s[:] = np.nan
    rows = np.flatnonzero((flags & SKIP) == 0)
    if rows.size == 0:
        return
    rows = rows[np.argsort(idx[rows], kind="stable")]  # sensor-major, arrival order within a sensor
    s = idx[rows]
    t = ts[rows]
    x = values[rows]
    n_rows = rows.size
    pos = np.arange(n_rows)
    first = np.ones(n_rows, np.bool_)
    first[1:] = s[1:] != s[:-1]
    last = np.ones(n_rows, np.bool_)
    last[:-1] = first[1:]
    out = np.zeros(n_rows, np.uint32)

    # RATE and STUCK, whole batch.
    px = np.empty(n_rows)
    px[1:] = x[:-1]
    px[first] = state["prev_x"][s[first]]
    pt = np.empty(n_rows, np.int64)
    pt[1:] = t[:-1]
    pt[first] = state["prev_ts"][s[first]]
    seen = pt != NEVER
    dt = t - np.where(seen, pt, t)
    j = np.flatnonzero(dt > 0)
    rate = np.abs(x[j] - px[j]) / (dt[j].astype(np.float64) / NS)
    out[j[rate > params["max_rate"][s[j]]]] |= RATE
    seg_start = np.maximum.accumulate(np.where(first, pos, 0))
    reset = np.maximum.accumulate(np.where(x == px, -1, pos))
    run = np.where(reset >= seg_start, pos - reset + 1, pos - seg_start + state["stuck_run"][s] + 1)
    stuck_n = params["stuck_n"][s]
    out[(stuck_n > 0) & (run >= stuck_n)] |= STUCK
    s_last = s[last]
    state["prev_x"][s_last] = x[last]
    state["prev_ts"][s_last] = t[last]
    state["stuck_run"][s_last] = run[last]

    # SPIKE and GAP, in rounds. Segments (sensors) ranked by reading count, most first.
    seg = np.cumsum(first) - 1
    count = np.bincount(seg)
    seg_order = np.argsort(-count, kind="stable")
    rank = np.empty_like(seg_order)
    rank[seg_order] = np.arange(seg_order.size)
    active = count.size - np.cumsum(np.bincount(count)[:-1])  # active[k]: sensors with more than k readings
    offset = np.concatenate(([0], np.cumsum(active)))
    k = pos - seg_start
    where_ = offset[k] + rank[seg]  # row → position in round-major order
    xr = np.empty(n_rows)
    xr[where_] = x
    pxr = np.empty(n_rows)  # the previous value of each reading: repeats and the resolution for SPIKE
    pxr[where_] = px
    tr = np.empty(n_rows, np.int64)
    tr[where_] = t
    zr = np.full(n_rows, np.nan)
    gr = np.full(n_rows, np.nan)
    fr = np.zeros(n_rows, np.uint32)
    sens = s[first][seg_order]
    p = {f.name: params[f.name][sens] for f in PARAMS}
    st = {f.name: state[f.name][sens] for f in STATE if f.name not in ("prev_x", "prev_ts", "stuck_run")}
    max_iv = p["max_interval_ns"]
    max_ivf = max_iv.astype(np.float64)
    m_, d_, n_, run_, len_, sum_, side_, q_ = (st[f"spike_{v}"]
                                               for v in ("m", "d", "n", "run", "len", "sum", "side", "q"))
    lt_, gi_, gn_, grun_ = st["last_ts"], st["gap_interval_ns"], st["gap_n"], st["gap_run"]
    r = 0
    with np.errstate(divide="ignore", invalid="ignore"):
        while r < active.size and active[r] >= tail:
            a_ = int(active[r])
            sl = slice(int(offset[r]), int(offset[r]) + a_)
            xs, tsr, fo = xr[sl], tr[sl], fr[sl]
            _spike_round(xs, pxr[sl], fo, zr[sl], m_[:a_], d_[:a_], n_[:a_], run_[:a_], len_[:a_], sum_[:a_],
                         side_[:a_], q_[:a_], p["spike_k"][:a_], p["spike_warmup"][:a_], p["spike_eta"][:a_],
                         p["spike_accept"][:a_], p["spike_min_mad"][:a_])
            _gap_round(tsr, fo, gr[sl], lt_[:a_], gi_[:a_], gn_[:a_], grun_[:a_], max_iv[:a_], max_ivf[:a_],
                       p["gap_factor"][:a_], p["gap_warmup"][:a_], p["gap_alpha"][:a_], p["gap_accept"][:a_])
            r += 1
    if r < active.size:  # the few busiest sensors' remaining readings: scalar Python beats tiny arrays
        a_ = int(active[r])
        jr = np.empty(n_rows, np.int64)
        jr[where_] = rank[seg]
        sl = slice(int(offset[r]), n_rows)
        _spike_gap_tail(jr[sl], tr[sl], xr[sl], pxr[sl][:a_], fr[sl], zr[sl], gr[sl],
                        {n: v[:a_] for n, v in p.items()}, {n: v[:a_] for n, v in st.items()})
    for name, arr in st.items():
        state[name][sens] = arr
    out |= fr[where_]
    flags[rows] |= out
    robust_z[rows] = zr[where_]
    gap_s[rows] = gr[where_]


def _spike_gap_tail(j, t, x, px0, fo, z, gs, p, st) -> None:
    """SPIKE and GAP for the rows left when fewer than ``tail`` sensors are still active.

    Below a few dozen sensors a round costs more in NumPy call overhead than a plain loop over
    its readings, so the rest goes through the reference (the same arithmetic), with RATE and
    STUCK turned off there because they were already judged for the whole batch. ``px0`` is each
    remaining sensor's value before its first remaining row (ranks in order): SPIKE needs it for
    repeats and the resolution ``spike_q``.
    """
    n = len(j)
    flags = [0] * n
    scores = {"robust_z": [math.nan] * n, "gap_s": [math.nan] * n}
    params = {name: v.tolist() for name, v in p.items()}
    params["max_rate"] = [math.inf] * len(params["max_rate"])
    params["stuck_n"] = [0] * len(params["stuck_n"])
    state = {name: v.tolist() for name, v in st.items()}
    a = len(params["max_rate"])
    state.update(prev_x=px0.tolist(), prev_ts=[int(NEVER)] * a, stuck_run=[0] * a)
    robust_reference(j.tolist(), t.tolist(), x.tolist(), flags, scores, params, state)
    fo |= np.array(flags, np.uint32)
    z[:] = scores["robust_z"]
    gs[:] = scores["gap_s"]
    for name, v in st.items():
        v[:] = state[name]


def _spike_round(x, px, fo, z, m, d, n, run, ln, tot, side_now, q, k, warm_n, eta, accept, min_mad) -> None:
    """One round of SPIKE for a prefix of sensors (``px``: each reading's previous value); state slices
    are updated in place."""
    rep = x == px
    step_x = np.abs(x - px)
    q[:] = np.where((step_x > 0.0) & (step_x < q), step_x, q)
    e = x - m
    a = np.abs(e)
    init = n == 0
    judged = (n >= warm_n) & ~init
    warm = ~init & ~judged & ~rep
    sc = MAD_SCALE * d
    z[:] = np.where(judged, e / sc, np.nan)
    spike = judged & (a > k * sc)
    side = np.sign(e).astype(np.int64)
    same = side == side_now
    wait = judged & ~spike & (side_now != 0) & same
    close = judged & ~spike & ~wait  # ends any excursion
    learn = close & ~rep
    run_new = np.where(same, run + 1, 1)
    len_new = np.where(same, ln + 1, 1)
    tot_new = np.where(same, tot + x, x)
    long_ = (accept > 0) & (len_new >= 2 * accept)
    acc = (spike & (accept > 0) & (run_new >= accept)) | ((spike | wait) & long_)
    held = spike & ~acc
    hold = wait & ~acc
    step = eta * d
    m_new = np.where(learn, m + step * np.sign(e), m)
    d_new = np.where(learn, d + np.where(a > d, step, -step), d)
    if warm.any():
        w = np.flatnonzero(warm)
        m_new[w] = m[w] + e[w] / (n[w] + 1)
        d_new[w] = d[w] + (a[w] - d[w]) / n[w]
    if init.any():
        m_new[init] = x[init]
        d_new[init] = 0.0
    if acc.any():
        m_new[acc] = tot_new[acc] / len_new[acc]
    upd = init | warm | learn | acc
    lo = np.maximum(np.maximum(min_mad, np.where(q < math.inf, q, 0.0)), MAD_REL_FLOOR * np.abs(m_new) + MAD_ABS_FLOOR)
    m[:] = np.where(upd, m_new, m)
    d[:] = np.where(upd, np.maximum(d_new, lo), d)
    n += init | warm | learn
    run[:] = np.where(held, run_new, np.where(hold, run, 0))
    ln[:] = np.where(held | hold, len_new, 0)
    tot[:] = np.where(held | hold, tot_new, 0.0)
    side_now[:] = np.where(held, side, np.where(hold, side_now, 0))
    fo |= np.where(spike, SPIKE, np.uint32(0))


def _gap_round(t, fo, gs, lt, gi, gn, grun, max_iv, max_ivf, factor, warm_n, alpha, accept) -> None:
    """One round of GAP for a prefix of sensors; state slices are updated in place."""
    seen = lt != NEVER
    dt = t - np.where(seen, lt, t)
    pos = dt > 0
    dtf = dt.astype(np.float64)
    expected = np.where(max_iv > 0, max_ivf, np.where(gn >= warm_n, gi, 0.0))
    judged = pos & (expected > 0.0)
    gs[:] = np.where(judged, dtf / NS, np.nan)
    gap = judged & (dtf > factor * expected)
    run_new = grun + 1
    acc = gap & (accept > 0) & (run_new >= accept)
    learn = pos & ~gap
    g = np.maximum(alpha, 1.0 / (gn + 1))
    gi[:] = np.where(learn, gi + g * (dtf - gi), np.where(acc, dtf, gi))
    gn += learn
    grun[:] = np.where(gap & ~acc, run_new, np.where(pos, 0, grun))
    np.maximum(lt, t, out=lt)
    fo |= np.where(gap, GAP, np.uint32(0))


def expected_interval_ns(params: dict[str, np.ndarray], state: dict[str, np.ndarray]) -> np.ndarray:
    """The interval GAP and ``stale`` judge against, per sensor (float ns; 0 = not known yet).

    ``max_interval_ns`` where configured, else the learnt ``gap_interval_ns`` once ``gap_n``
    reached ``gap_warmup``, exactly as the kernel chooses it.
    """
    mi = params["max_interval_ns"]
    learnt = np.where(state["gap_n"] >= params["gap_warmup"], state["gap_interval_ns"], 0.0)
    return np.where(mi > 0, mi.astype(np.float64), learnt)


def stale(now_ns: int | np.ndarray, last_ts: np.ndarray, expected_ns: np.ndarray, gap_factor: np.ndarray,
          n_sensors: int) -> np.ndarray:
    """Indices of sensors silent for longer than ``gap_factor × expected`` at ``now_ns``.

    For a timer, so a dead sensor is reported without waiting for a reading that may never come:
    ``stale(now, state["last_ts"], expected_interval_ns(params, state), params["gap_factor"], n)``.
    ``last_ts`` is the family's state field (newest source time heard, ``NEVER`` if none); a
    sensor never heard from, or whose interval is not known yet (``expected_ns <= 0``), is not
    judged. The threshold is GAP's, so the reading that ends a STALE silence is flagged GAP.
    """
    lt = np.asarray(last_ts[:n_sensors], np.int64)
    exp = np.asarray(expected_ns[:n_sensors], np.float64)
    seen = lt != NEVER
    now = np.asarray(now_ns, np.int64)
    if now.ndim:  # one clock per sensor
        now = now[:n_sensors]
    silent = (now - np.where(seen, lt, now)).astype(np.float64)
    return np.flatnonzero(seen & (exp > 0.0) & (silent > np.asarray(gap_factor[:n_sensors]) * exp))


FAMILY = RuleFamily(
    name="robust",
    bits=int(Flag.RATE | Flag.SPIKE | Flag.STUCK | Flag.GAP),
    params=PARAMS,
    state=STATE,
    scores=SCORES,
    kernel=robust_kernel,
    reference=robust_reference,
    vectorised=robust_vectorised,
    rebaseline={"spike_n": 0, "spike_run": 0, "spike_len": 0, "spike_sum": 0.0, "spike_side": 0},
)

"""Plain-Python twin of the robust rule family (``robust.py``), written for clarity, not speed.

One reading at a time, one rule after another, over lists and dicts of lists. The semantics are
documented in ``robust.py``; the arithmetic here is written in the same order on purpose, so
``check_family`` can demand agreement to the last bit. The constants are spelt out again rather
than imported (``robust.py`` imports this module), and a drift between the two shows up as a
disagreement in the tests.

The reference also serves ``robust_vectorised``'s scalar tail, which turns RATE and STUCK off and
passes each sensor's previous value in ``prev_x``: SPIKE reads it for repeats and ``spike_q``.
"""

from __future__ import annotations

import math

from qctrace.schema import Flag

_SKIP = int(Flag.BAD_QUALITY | Flag.NOT_FINITE)
_NEVER = -(2**63)
_MAD_SCALE = 1.4826
_MAD_REL_FLOOR = 1e-9
_MAD_ABS_FLOOR = 1e-12
_NS = 1e9


def robust_reference(idx: list[int], ts: list[int], values: list[float], flags: list[int],
                     scores: dict[str, list[float]], params: dict[str, list], state: dict[str, list]) -> None:
    """RATE, SPIKE, STUCK and GAP, updating ``flags``, ``scores`` and ``state`` in place."""
    p, st = params, state
    for i, (s, t, x) in enumerate(zip(idx, ts, values, strict=True)):
        scores["robust_z"][i] = math.nan
        scores["gap_s"][i] = math.nan
        if flags[i] & _SKIP:
            continue  # Bad or non-finite: neither judged nor learnt
        f = 0

        # RATE: only over a positive interval; the (value, time) pair moves on regardless.
        if st["prev_ts"][s] != _NEVER:
            dt = t - st["prev_ts"][s]
            if dt > 0 and abs(x - st["prev_x"][s]) / (float(dt) / _NS) > p["max_rate"][s]:
                f |= Flag.RATE

        # STUCK: the run of identical values, this one included. The same comparison keeps a frozen
        # value out of the spike median/MAD, and the smallest step seen is the sensor's resolution.
        repeat = x == st["prev_x"][s]
        st["stuck_run"][s] = st["stuck_run"][s] + 1 if repeat else 1
        step_x = abs(x - st["prev_x"][s])  # NaN before the first reading: never below spike_q
        if step_x > 0.0 and step_x < st["spike_q"][s]:
            st["spike_q"][s] = step_x
        if p["stuck_n"][s] > 0 and st["stuck_run"][s] >= p["stuck_n"][s]:
            f |= Flag.STUCK
        st["prev_x"][s] = x
        st["prev_ts"][s] = t

        # SPIKE: running median m and MAD d.
        n, m, d = st["spike_n"][s], st["spike_m"][s], st["spike_d"][s]
        learnt = True
        if n == 0:  # first reading: the median is the reading itself
            m, d = x, 0.0
            st["spike_n"][s] = 1
        else:
            e = x - m
            a = abs(e)
            if n < p["spike_warmup"][s]:  # warm-up: running mean and mean absolute deviation
                if repeat:
                    learnt = False  # a repeated value says nothing about the spread
                else:
                    m = m + e / (n + 1)
                    d = d + (a - d) / n
                    st["spike_n"][s] = n + 1
            else:
                sc = _MAD_SCALE * d
                scores["robust_z"][i] = e / sc
                side = 1 if e > 0.0 else (-1 if e < 0.0 else 0)
                accept = p["spike_accept"][s]
                if a > p["spike_k"][s] * sc:
                    f |= Flag.SPIKE
                    learnt = False  # a spike does not move the baseline ...
                    if side == st["spike_side"][s]:  # the excursion goes on
                        run, length = st["spike_run"][s] + 1, st["spike_len"][s] + 1
                        total = st["spike_sum"][s] + x
                    else:  # a new excursion, on this side
                        run, length, total = 1, 1, x
                    if accept > 0 and (run >= accept or length >= 2 * accept):
                        m = total / length  # ... unless it lasts: the mean of its readings is the new level
                        learnt = True
                        run, length, total, side = 0, 0, 0.0, 0
                    st["spike_run"][s], st["spike_len"][s] = run, length
                    st["spike_sum"][s], st["spike_side"][s] = total, side
                elif st["spike_side"][s] != 0 and side == st["spike_side"][s]:
                    learnt = False  # an excursion is open on this side: a level change may be under way
                    length, total = st["spike_len"][s] + 1, st["spike_sum"][s] + x
                    if accept > 0 and length >= 2 * accept:  # so long on one side: it is one, just under the limit
                        m = total / length
                        learnt = True
                        st["spike_run"][s], st["spike_len"][s], st["spike_sum"][s], st["spike_side"][s] = 0, 0, 0.0, 0
                    else:
                        st["spike_len"][s], st["spike_sum"][s] = length, total
                else:  # any excursion is over; sign steps towards the median and the MAD
                    st["spike_run"][s], st["spike_len"][s], st["spike_sum"][s], st["spike_side"][s] = 0, 0, 0.0, 0
                    if repeat:
                        learnt = False  # a frozen value would only shrink d, step after step
                    else:
                        step = p["spike_eta"][s] * d
                        if e > 0.0:
                            m = m + step
                        elif e < 0.0:
                            m = m - step
                        d = d + step if a > d else d - step
                        st["spike_n"][s] = n + 1
        if learnt:
            st["spike_m"][s] = m
            q = st["spike_q"][s] if st["spike_q"][s] < math.inf else 0.0  # resolution, once a step was seen
            st["spike_d"][s] = max(d, max(max(p["spike_min_mad"][s], q), _MAD_REL_FLOOR * abs(m) + _MAD_ABS_FLOOR))

        # GAP: silence since the newest source time heard (never moves backwards).
        if st["last_ts"][s] == _NEVER:
            st["last_ts"][s] = t
        else:
            dt = t - st["last_ts"][s]
            if dt > 0:
                dtf = float(dt)
                if p["max_interval_ns"][s] > 0:
                    expected = float(p["max_interval_ns"][s])
                elif st["gap_n"][s] >= p["gap_warmup"][s]:
                    expected = st["gap_interval_ns"][s]
                else:
                    expected = 0.0  # not learnt yet: not judged
                if expected > 0.0:
                    scores["gap_s"][i] = dtf / _NS
                if expected > 0.0 and dtf > p["gap_factor"][s] * expected:
                    f |= Flag.GAP
                    run = st["gap_run"][s] + 1
                    if p["gap_accept"][s] > 0 and run >= p["gap_accept"][s]:
                        st["gap_interval_ns"][s] = dtf  # the sensor now reports this slowly
                        run = 0
                    st["gap_run"][s] = run
                else:
                    st["gap_run"][s] = 0
                    g = max(p["gap_alpha"][s], 1.0 / (st["gap_n"][s] + 1))
                    st["gap_interval_ns"][s] = st["gap_interval_ns"][s] + g * (dtf - st["gap_interval_ns"][s])
                    st["gap_n"][s] += 1
                st["last_ts"][s] = t
        flags[i] |= int(f)

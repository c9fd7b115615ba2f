"""Shared checks every rule family must pass (see ``ingest/detect/family.py``).

A family's own test module builds a hypothesis strategy of batches for its rules and calls
``check_family(family, batch, params)``: the Numba kernel, the Python reference and the NumPy
version must agree exactly on flags, to 1e-9 on scores and state; and ``check_split`` shows that a
batch cut in two gives the same flags, scores and final state as the whole.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st

from ingest.detect.family import SKIP, RuleFamily
from qctrace.schema import Flag


@dataclass
class Batch:
    idx: np.ndarray  # int64
    ts: np.ndarray  # int64 ns
    values: np.ndarray  # float64
    flags: np.ndarray  # uint32: SKIP bits pre-set where quality was Bad or the value not finite
    n_sensors: int

    def cut(self, a: int, b: int) -> Batch:
        return Batch(self.idx[a:b].copy(), self.ts[a:b].copy(), self.values[a:b].copy(), self.flags[a:b].copy(),
                     self.n_sensors)


_SENSORS = st.integers(1, 4)
_SIZE = st.integers(0, 120)
_VALUE = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)
_DT = st.sampled_from([0, 1, 10**9, 10**9, 10**9, 2 * 10**9, 60 * 10**9, -(10**9)])


@st.composite
def batches(draw, n_sensors=_SENSORS, size=_SIZE, value=None, dt_ns=None, repeat_prob: float = 0.2) -> Batch:
    """Random batches: NaN, ±inf, Bad quality, repeated values, out-of-order and duplicate times."""
    m = draw(n_sensors)
    n = draw(size)
    value = _VALUE if value is None else value
    dt_ns = _DT if dt_ns is None else dt_ns
    idx, ts, vals, flags = [], [], [], []
    t = 1_793_599_200 * 10**9
    last: dict[int, float] = {}
    for _ in range(n):
        s = draw(st.integers(0, m - 1))
        t += draw(dt_ns)
        kind = draw(st.integers(0, 99))
        if kind < 3:
            x, f = math.nan, int(Flag.NOT_FINITE)
        elif kind < 5:
            x, f = draw(st.sampled_from([math.inf, -math.inf])), int(Flag.NOT_FINITE)
        elif kind < 8:
            x, f = draw(value), int(Flag.BAD_QUALITY)
        elif kind < 8 + int(repeat_prob * 100) and s in last:
            x, f = last[s], 0
        else:
            x, f = draw(value), 0
        if f == 0:
            last[s] = x
        idx.append(s)
        ts.append(t)
        vals.append(x)
        flags.append(f)
    return Batch(np.array(idx, np.int64), np.array(ts, np.int64), np.array(vals, np.float64),
                 np.array(flags, np.uint32), m)


def _lists(arrays: dict[str, np.ndarray]) -> dict[str, list]:
    return {k: v.tolist() for k, v in arrays.items()}


def run_kernel(fam: RuleFamily, b: Batch, params: dict[str, np.ndarray], state: dict[str, np.ndarray]):
    flags = b.flags.copy()
    scores = fam.run(b.idx, b.ts, b.values, flags, params, state)
    return flags, scores


def run_reference(fam: RuleFamily, b: Batch, params: dict[str, np.ndarray], state: dict[str, list]):
    flags = b.flags.tolist()
    scores = {s: [math.nan] * len(flags) for s in fam.scores}
    fam.reference(b.idx.tolist(), b.ts.tolist(), b.values.tolist(), flags, scores, _lists(params), state)
    return np.array(flags, np.uint32), {k: np.array(v, np.float64) for k, v in scores.items()}


def run_vectorised(fam: RuleFamily, b: Batch, params: dict[str, np.ndarray], state: dict[str, np.ndarray]):
    flags = b.flags.copy()
    scores = {s: np.full(len(flags), np.nan) for s in fam.scores}
    fam.vectorised(b.idx, b.ts, b.values, flags, scores, params, state)
    return flags, scores


def _close(a, b, what: str) -> None:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, what
    same_nan = np.isnan(a) == np.isnan(b)
    assert same_nan.all(), f"{what}: NaN in different places"
    ok = np.isclose(a, b, rtol=1e-9, atol=1e-9, equal_nan=True) | (a == b)
    assert ok.all(), f"{what}: {a[~ok][:5]} != {b[~ok][:5]}"


def check_family(fam: RuleFamily, b: Batch, params: dict[str, np.ndarray]) -> None:
    """Kernel, reference and vectorised agree; untouched SKIP rows keep exactly their bits."""
    _, st_k = fam.alloc(b.n_sensors)
    _, st_v = fam.alloc(b.n_sensors)
    st_r = _lists(fam.alloc(b.n_sensors)[1])
    fk, sk = run_kernel(fam, b, params, st_k)
    fr, sr = run_reference(fam, b, params, st_r)
    fv, sv = run_vectorised(fam, b, params, st_v)
    assert (fk == fr).all(), f"kernel vs reference flags differ at rows {np.nonzero(fk != fr)[0][:10]}"
    assert (fv == fr).all(), f"vectorised vs reference flags differ at rows {np.nonzero(fv != fr)[0][:10]}"
    skipped = (b.flags & SKIP) != 0
    assert (fk[skipped] == b.flags[skipped]).all(), "a family judged a Bad or non-finite reading"
    assert not (fk & ~np.uint32(fam.bits) & ~b.flags).any(), "a family set bits it does not own"
    for s in fam.scores:
        _close(sk[s], sr[s], f"score {s} kernel vs reference")
        _close(sv[s], sr[s], f"score {s} vectorised vs reference")
        assert np.isnan(sk[s][skipped]).all(), f"score {s} given for a Bad or non-finite reading"
    for f in fam.state:
        _close(st_k[f.name], st_r[f.name], f"state {f.name} kernel vs reference")
        _close(st_v[f.name], st_r[f.name], f"state {f.name} vectorised vs reference")


def check_split(fam: RuleFamily, b: Batch, params: dict[str, np.ndarray], cut: int) -> None:
    """One batch gives the same flags, scores and final state as the same batch in two parts."""
    cut = min(cut, len(b.idx))
    _, whole = fam.alloc(b.n_sensors)
    fw, sw = run_kernel(fam, b, params, whole)
    _, parts = fam.alloc(b.n_sensors)
    f1, s1 = run_kernel(fam, b.cut(0, cut), params, parts)
    f2, s2 = run_kernel(fam, b.cut(cut, len(b.idx)), params, parts)
    assert (np.concatenate([f1, f2]) == fw).all()
    for s in fam.scores:
        _close(np.concatenate([s1[s], s2[s]]), sw[s], f"score {s} split")
    for f in fam.state:
        _close(parts[f.name], whole[f.name], f"state {f.name} split")

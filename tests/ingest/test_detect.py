"""The Numba kernels agree with their plain-Python references, and batching changes nothing."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingest.detect import kernels
from ingest.detect.reference import (
    EpisodeState,
    EwmaState,
    SensorParams,
    episodes_reference,
    spec_ewma_reference,
)
from qctrace.schema import Flag

N_SENSORS = 4
PARAMS = {0: SensorParams(-1.0, 1.0, 0.2, 3.0, 3, 4), 1: SensorParams(-math.inf, math.inf, 0.05, 2.0, 1, 2),
          2: SensorParams(0.0, 10.0, 1.0, 0.5, 5, 0), 3: SensorParams(-5.0, 5.0, 0.5, 4.0, 2, 1)}

value = st.one_of(st.floats(-20, 20, allow_nan=False), st.just(math.nan), st.just(math.inf), st.just(-math.inf),
                  st.sampled_from([0.0, 1.0, 1.0, 1.0]))
rows = st.lists(st.tuples(st.integers(0, N_SENSORS - 1), value, st.sampled_from([0, 0, 0, 1, 2]),
                          st.integers(0, 50)), max_size=120)


class KernelState:
    def __init__(self) -> None:
        p = [PARAMS[i] for i in range(N_SENSORS)]
        self.lsl = np.array([x.lsl for x in p])
        self.usl = np.array([x.usl for x in p])
        self.lam = np.array([x.lam for x in p])
        self.zlim = np.array([x.zlim for x in p])
        self.warmup = np.array([x.warmup for x in p], dtype=np.int64)
        self.rebase = np.array([x.rebase for x in p], dtype=np.int64)
        self.mean = np.zeros(N_SENSORS)
        self.var = np.zeros(N_SENSORS)
        self.count = np.zeros(N_SENSORS, dtype=np.int64)
        self.run_ = np.zeros(N_SENSORS, dtype=np.int64)
        self.last = np.full(N_SENSORS, np.nan)

    def run(self, batch):
        idx = np.array([r[0] for r in batch], dtype=np.int64)
        vals = kernels.readonly(np.array([r[1] for r in batch], dtype=np.float64))
        q = kernels.readonly(np.array([r[2] for r in batch], dtype=np.uint8))
        flags = np.zeros(len(batch), dtype=np.uint32)
        z = np.zeros(len(batch))
        kernels.spec_ewma(idx, vals, q, self.lsl, self.usl, self.lam, self.zlim, self.warmup, self.rebase, self.mean,
                          self.var, self.count, self.run_, self.last, flags, z)
        return flags.tolist(), z.tolist()


def _close(a: list[float], b: list[float]) -> bool:
    return all((math.isnan(x) and math.isnan(y)) or abs(x - y) <= 1e-9 * max(1.0, abs(x)) for x, y in
               zip(a, b, strict=True))


@given(rows)
def test_spec_ewma_kernel_equals_reference(batch):
    kf, kz = KernelState().run(batch)
    rf, rz = spec_ewma_reference([r[0] for r in batch], [r[1] for r in batch], [r[2] for r in batch], PARAMS, {})
    assert kf == rf
    assert _close(kz, rz)


@given(rows)
def test_spec_ewma_numpy_baseline_equals_kernel_bit_for_bit(batch):
    from ingest.detect.vectorised import spec_ewma_vectorised

    k, v = KernelState(), KernelState()
    kf, kz = k.run(batch)
    idx = np.array([r[0] for r in batch], dtype=np.int64)
    vals = np.array([r[1] for r in batch], dtype=np.float64)
    q = np.array([r[2] for r in batch], dtype=np.uint8)
    flags, z = np.zeros(len(batch), dtype=np.uint32), np.zeros(len(batch))
    spec_ewma_vectorised(idx, vals, q, v.lsl, v.usl, v.lam, v.zlim, v.warmup, v.rebase, v.mean, v.var, v.count,
                         v.run_, v.last, flags, z)
    assert flags.tolist() == kf
    assert np.array_equal(z, np.array(kz), equal_nan=True)
    for name in ("mean", "var", "count", "run_", "last"):
        assert np.array_equal(getattr(k, name), getattr(v, name), equal_nan=name == "last"), name


@given(rows, st.integers(0, 120))
def test_spec_ewma_split_into_two_batches_equals_one(batch, cut):
    whole = KernelState().run(batch)
    ks = KernelState()
    a = ks.run(batch[:cut])
    b = ks.run(batch[cut:])
    assert whole[0] == a[0] + b[0]
    assert _close(whole[1], a[1] + b[1])


def test_reference_state_matches_kernel_state_after_a_stream():
    rng = np.random.default_rng(0)
    batch = [(int(rng.integers(0, N_SENSORS)), float(rng.normal()), 0, 0) for _ in range(500)]
    ks = KernelState()
    ks.run(batch)
    state: dict[int, EwmaState] = {}
    spec_ewma_reference([r[0] for r in batch], [r[1] for r in batch], [0] * 500, PARAMS, state)
    for s, st_ in state.items():
        assert ks.count[s] == st_.count
        assert ks.mean[s] == pytest.approx(st_.mean, abs=1e-9)
        assert ks.var[s] == pytest.approx(st_.var, abs=1e-9)


def test_a_frozen_value_does_not_shrink_the_variance_so_noise_after_it_raises_no_alarm():
    ks = KernelState()
    ks.lam[3], ks.zlim[3], ks.warmup[3], ks.rebase[3] = 0.05, 6.0, 60, 0  # the shipped defaults
    rng = np.random.default_rng(3)
    ks.run([(3, float(x), 0, 0) for x in rng.normal(0, 1, 200)])
    var_before = ks.var[3]
    ks.run([(3, 0.25, 0, 0)] * 300)  # a stuck register: judged, not learnt
    assert ks.var[3] == pytest.approx(var_before, rel=0.5)
    flags, _ = ks.run([(3, float(x), 0, 0) for x in rng.normal(0, 1, 200)])
    assert sum(1 for f in flags if f & Flag.EWMA_Z) == 0


def test_a_spike_after_warmup_is_flagged_and_does_not_move_the_baseline():
    ks = KernelState()
    rng = np.random.default_rng(1)
    base = [(1, float(x), 0, 0) for x in rng.normal(0, 0.1, 50)]
    ks.run(base)
    mean_before = ks.mean[1]
    flags, z = ks.run([(1, 5.0, 0, 0)])
    assert flags[0] & Flag.EWMA_Z and z[0] > 10
    assert ks.mean[1] == mean_before


def test_a_permanent_step_raises_one_bounded_alarm_then_becomes_the_new_normal():
    ks = KernelState()
    ks.zlim[2], ks.warmup[2], ks.rebase[2], ks.lam[2] = 4.0, 10, 20, 0.2
    rng = np.random.default_rng(2)
    ks.run([(2, float(x), 0, 0) for x in rng.normal(5, 0.1, 100)])
    flags, _ = ks.run([(2, float(x), 0, 0) for x in rng.normal(7, 0.1, 200)])  # still inside 0-10 spec
    flagged = [i for i, f in enumerate(flags) if f & Flag.EWMA_Z]
    assert flagged[:20] == list(range(20))  # the step is flagged at once, 20 readings in a row ...
    assert sum(1 for f in flags[40:] if f) <= 4  # ... then it is the new normal, not an endless alarm


def test_bad_quality_and_non_finite_are_flagged_without_judging_the_value():
    flags, _ = KernelState().run([(0, 100.0, 2, 0), (0, math.nan, 0, 0), (0, 0.5, 0, 0)])
    assert flags == [int(Flag.BAD_QUALITY), int(Flag.NOT_FINITE), 0]


ep_rows = st.lists(st.tuples(st.integers(0, N_SENSORS - 1), st.sampled_from([0, 0, 1, 2, 4]),
                             st.floats(-5, 5, allow_nan=False)), max_size=150)


class EpisodeKernel:
    def __init__(self) -> None:
        n = N_SENSORS
        self.state = (np.zeros(n, np.bool_), np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n, np.uint32),
                      np.zeros(n), np.zeros(n), np.zeros(n, np.int64))
        self.t = 0

    def run(self, batch):
        n = len(batch)
        idx = np.array([r[0] for r in batch], dtype=np.int64)
        ts = kernels.readonly(np.arange(self.t, self.t + n, dtype=np.int64))
        flags = kernels.readonly(np.array([r[1] for r in batch], dtype=np.uint32))
        vals = kernels.readonly(np.array([r[2] for r in batch], dtype=np.float64))
        out = [np.zeros(n, t) for t in (np.int64, np.int64, np.int64, np.uint32, np.float64, np.float64, np.int64,
                                        np.int64)]
        opened = np.zeros(n, np.uint8)
        k = kernels.episodes(idx, ts, flags, vals, *self.state, *out, opened)
        closed = [(*row[:7], row[7] + self.t) for row in zip(*(a[:k].tolist() for a in out), strict=True)]
        op = (np.flatnonzero(opened) + self.t).tolist()
        self.t += n
        return closed, op


@given(ep_rows, st.integers(0, 150))
def test_episode_kernel_equals_reference_and_is_split_invariant(batch, cut):
    ref_closed, ref_opened = episodes_reference([r[0] for r in batch], list(range(len(batch))),
                                                [r[1] for r in batch], [r[2] for r in batch], EpisodeState())
    k = EpisodeKernel()
    c1, o1 = k.run(batch[:cut])
    c2, o2 = k.run(batch[cut:])
    assert c1 + c2 == ref_closed
    assert o1 + o2 == ref_opened

"""The robust rule family: the three implementations agree, and each rule does what it says."""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingest.detect.robust import FAMILY, NEVER, expected_interval_ns, robust_vectorised, stale
from qctrace.schema import Flag
from tests.ingest.family_contract import (
    Batch,
    batches,
    check_family,
    check_split,
    run_kernel,
    run_reference,
    run_vectorised,
)

SEC = 10**9
T0 = 1_793_599_200 * SEC


# The NumPy version hands the last few busy sensors to a scalar loop; test it with rounds only, with the
# hand-over after two sensors, and as configured (with <= 4 sensors, mostly the scalar loop).
VARIANTS = {tail: dataclasses.replace(FAMILY, vectorised=functools.partial(robust_vectorised, tail=tail))
            for tail in (0, 2)}
VARIANTS[None] = FAMILY


def _params(n: int, **overrides: float | int | list) -> dict[str, np.ndarray]:
    params, _ = FAMILY.alloc(n)
    for name, v in overrides.items():
        params[name][:] = v
    return params


# Defaults; everything on and quick to fire; a configured interval and a resolution floor; mixed per sensor.
SETTINGS = {
    "defaults": {},
    "eager": dict(max_rate=5.0, spike_k=2.0, spike_warmup=3, spike_eta=0.3, spike_accept=2, stuck_n=2,
                  gap_factor=1.5, gap_warmup=1, gap_alpha=0.5, gap_accept=2),
    "configured": dict(max_rate=100.0, spike_k=3.0, spike_warmup=0, spike_accept=0, spike_min_mad=0.5, stuck_n=3,
                       max_interval_ns=SEC, gap_factor=1.0, gap_accept=0),
    "mixed": dict(max_rate=[0.5, math.inf, 50.0, 1e-3], spike_k=[1.0, 4.0, math.inf, 2.5], spike_warmup=[1, 5, 0, 2],
                  spike_accept=[1, 3, 0, 10], stuck_n=[0, 1, 2, 4], max_interval_ns=[0, SEC, 0, 60 * SEC],
                  gap_warmup=[0, 2, 1, 3], gap_factor=[2.0, 0.5, 3.0, 1.0]),
}


def _settings(name: str, n: int) -> dict[str, np.ndarray]:
    over = {k: (v[:n] if isinstance(v, list) else v) for k, v in SETTINGS[name].items()}
    return _params(n, **over)


@pytest.mark.parametrize("setting", sorted(SETTINGS))
@given(b=batches(), cut=st.integers(0, 120), tail=st.sampled_from([0, 2, None]))
def test_kernel_reference_and_vectorised_agree_and_splits_change_nothing(setting: str, b: Batch, cut: int,
                                                                          tail: int | None) -> None:
    params = _settings(setting, b.n_sensors)
    check_family(VARIANTS[tail], b, params)
    check_split(FAMILY, b, params, cut)


@given(b=batches(n_sensors=st.integers(1, 3), size=st.integers(50, 300)))
def test_agreement_on_long_streams_past_warm_up(b: Batch) -> None:
    params = _params(b.n_sensors, spike_warmup=10, spike_k=3.0, spike_accept=4, stuck_n=3, gap_warmup=3)
    check_family(VARIANTS[0], b, params)


@given(b=batches(n_sensors=st.integers(1, 3), size=st.integers(50, 200)), tail=st.sampled_from([0, 2]))
def test_the_three_versions_agree_to_the_last_bit(b: Batch, tail: int) -> None:
    params = _settings("eager", b.n_sensors)
    _, st_k = FAMILY.alloc(b.n_sensors)
    _, st_v = FAMILY.alloc(b.n_sensors)
    st_r = {k: v.tolist() for k, v in FAMILY.alloc(b.n_sensors)[1].items()}
    _, sk = run_kernel(FAMILY, b, params, st_k)
    _, sr = run_reference(FAMILY, b, params, st_r)
    _, sv = run_vectorised(VARIANTS[tail], b, params, st_v)
    for got in (sk, sv):
        for name in FAMILY.scores:
            np.testing.assert_array_equal(got[name], sr[name])
    for got in (st_k, st_v):
        for f in FAMILY.state:
            np.testing.assert_array_equal(got[f.name], np.array(st_r[f.name], f.dtype))


@pytest.mark.parametrize("setting", ["eager", "mixed"])
@given(b=batches(), cut=st.integers(0, 120), tail=st.sampled_from([0, 2]))
def test_vectorised_carries_state_across_batches(setting: str, b: Batch, cut: int, tail: int) -> None:
    """check_split covers the kernel; this covers the NumPy version's state hand-over."""
    params = _settings(setting, b.n_sensors)
    cut = min(cut, len(b.idx))
    st_r = {k: v.tolist() for k, v in FAMILY.alloc(b.n_sensors)[1].items()}
    fr, sr = run_reference(FAMILY, b, params, st_r)
    _, st_v = FAMILY.alloc(b.n_sensors)
    f1, s1 = run_vectorised(VARIANTS[tail], b.cut(0, cut), params, st_v)
    f2, s2 = run_vectorised(VARIANTS[tail], b.cut(cut, len(b.idx)), params, st_v)
    np.testing.assert_array_equal(np.concatenate([f1, f2]), fr)
    for name in FAMILY.scores:
        np.testing.assert_array_equal(np.concatenate([s1[name], s2[name]]), sr[name])
    for f in FAMILY.state:
        np.testing.assert_array_equal(st_v[f.name], np.array(st_r[f.name], f.dtype))


def _stream(values: np.ndarray, dt_ns: np.ndarray | int = SEC, sensor: int = 0) -> Batch:
    n = len(values)
    ts = T0 + np.cumsum(np.broadcast_to(np.asarray(dt_ns, np.int64), (n,)))
    return Batch(np.full(n, sensor, np.int64), ts.astype(np.int64), np.asarray(values, np.float64),
                 np.zeros(n, np.uint32), 1)


def _run(b: Batch, **overrides: float | int) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    params, state = FAMILY.alloc(b.n_sensors)
    for name, v in overrides.items():
        params[name][:] = v
    flags = b.flags.copy()
    scores = FAMILY.run(b.idx, b.ts, b.values, flags, params, state)
    return flags, scores, state


def _has(flags: np.ndarray, bit: Flag) -> np.ndarray:
    return (flags & np.uint32(bit)) != 0


def test_single_8_sigma_spike_is_flagged_and_does_not_move_the_median() -> None:
    x = np.random.default_rng(1).normal(20.0, 0.5, 400)
    x[300] = 20.0 + 8 * 0.5
    flags, scores, _ = _run(_stream(x))
    spikes = np.flatnonzero(_has(flags, Flag.SPIKE))
    assert spikes.tolist() == [300]
    assert scores["robust_z"][300] > 6.0
    assert abs(scores["robust_z"][301]) < 3.0  # the baseline did not follow the spike


def test_gaussian_noise_raises_no_spike_with_defaults() -> None:
    x = np.random.default_rng(7).normal(-4.0, 2.0, 20_000)
    flags, _, state = _run(_stream(x))
    assert not _has(flags, Flag.SPIKE).any()
    assert abs(state["spike_m"][0] + 4.0) < 0.5
    assert 0.8 < 1.4826 * state["spike_d"][0] / 2.0 < 1.2  # the MAD estimate tracks sigma


@pytest.mark.parametrize("sigmas,k", [(5.0, 4.0), (10.0, 6.0)])
def test_level_step_is_flagged_for_spike_accept_readings_then_accepted(sigmas: float, k: float) -> None:
    sd = 0.3
    x = np.random.default_rng(3).normal(10.0, sd, 600)
    x[300:] += sigmas * sd
    flags, _, state = _run(_stream(x), spike_k=k)
    spikes = np.flatnonzero(_has(flags, Flag.SPIKE))
    assert len(spikes) == 10  # spike_accept flags, then the new level is normal
    assert spikes[0] == 300 and spikes[-1] < 320  # a step near the limit takes a few more readings
    if sigmas >= 10.0:
        assert spikes.tolist() == list(range(300, 310))
    assert abs(state["spike_m"][0] - (10.0 + sigmas * sd)) < 2 * sd


def test_noise_after_a_stuck_stretch_raises_no_spike() -> None:
    """300 s frozen at one value teach nothing about the spread, so ordinary noise afterwards is no spike."""
    rng = np.random.default_rng(11)
    x = np.concatenate([rng.normal(50.0, 0.4, 600), np.full(300, 50.1), rng.normal(50.0, 0.4, 3000)])
    flags, _, state = _run(_stream(x))
    assert not _has(flags, Flag.SPIKE).any()
    assert 0.8 < 1.4826 * state["spike_d"][0] / 0.4 < 1.25


def test_stuck_from_the_first_reading_then_noise_raises_no_spike() -> None:
    """A sensor frozen through its warm-up does not end it with a zero spread either."""
    rng = np.random.default_rng(12)
    x = np.concatenate([np.full(300, 7.0), rng.normal(7.0, 0.2, 3000)])
    flags, _, _ = _run(_stream(x))
    assert not _has(flags, Flag.SPIKE).any()


def test_quantised_signal_raises_no_spike_and_learns_its_resolution() -> None:
    """Steps of 0.1 with sd 0.05: most readings repeat and a one-step change is the noise, not a spike."""
    x = np.round(np.random.default_rng(13).normal(20.0, 0.05, 20_000), 1)
    flags, _, state = _run(_stream(x))
    assert not _has(flags, Flag.SPIKE).any()
    assert state["spike_q"][0] == pytest.approx(0.1)
    assert state["spike_d"][0] >= state["spike_q"][0]


def test_10_sigma_spike_on_a_quantised_signal_is_still_flagged() -> None:
    sd = 0.5
    x = np.round(np.random.default_rng(14).normal(100.0, sd, 1000), 1)
    x[700] = 100.0 + 10 * sd
    flags, scores, _ = _run(_stream(x))
    assert np.flatnonzero(_has(flags, Flag.SPIKE)).tolist() == [700]
    assert abs(scores["robust_z"][701]) < 3.0  # the baseline did not follow the spike


def test_10_sigma_spike_right_after_a_stuck_stretch_is_flagged() -> None:
    sd = 0.3
    rng = np.random.default_rng(15)
    x = np.concatenate([rng.normal(10.0, sd, 500), np.full(300, 10.0), rng.normal(10.0, sd, 200)])
    x[805] = 10.0 - 10 * sd
    flags, _, _ = _run(_stream(x))
    assert np.flatnonzero(_has(flags, Flag.SPIKE)).tolist() == [805]


def test_repeated_value_is_judged_but_not_learnt() -> None:
    x = np.random.default_rng(16).normal(0.0, 1.0, 200)
    _, _, before = _run(_stream(x))
    _, scores, after = _run(_stream(np.append(x, [x[-1]] * 50)))
    for name in ("spike_m", "spike_d", "spike_n"):
        assert after[name][0] == before[name][0]
    assert np.isfinite(scores["robust_z"][200:]).all()  # still judged


def test_step_just_under_the_limit_is_accepted_after_2_spike_accept_readings() -> None:
    """A level change flagged only now and then must not hold learning back until spike_accept flags."""
    sd = 0.5
    x = np.random.default_rng(17).normal(0.0, sd, 1000)
    _, _, st0 = _run(_stream(x[:400]))
    limit = 6.0 * 1.4826 * st0["spike_d"][0]
    x[400] = -1.2 * limit  # one flag opens the excursion on the low side
    x[401:] -= 0.9 * limit  # ... and the new level is just under the limit
    flags, _, state = _run(_stream(x))
    spikes = np.flatnonzero(_has(flags, Flag.SPIKE))
    assert spikes[0] == 400 and spikes[-1] < 420 and len(spikes) < 10
    assert abs(state["spike_m"][0] + 0.9 * limit) < 2 * sd  # the new level was learnt
    assert state["spike_side"][0] == 0


@given(b=batches(n_sensors=st.integers(1, 3), size=st.integers(50, 300),
                 value=st.integers(-4, 4).map(lambda v: 0.25 * v)), tail=st.sampled_from([0, 2]))
def test_agreement_on_quantised_streams(b: Batch, tail: int) -> None:
    """Few distinct values: repeats, the resolution floor and excursions on both sides at every turn."""
    params = _params(b.n_sensors, spike_warmup=5, spike_k=2.0, spike_accept=3, stuck_n=3)
    check_family(VARIANTS[tail], b, params)


def test_stuck_fires_at_exactly_the_nth_identical_reading() -> None:
    x = np.array([1.0, 2.0, 3.0, 3.0, 3.0, 3.0, 3.0, 4.0, 4.0, 4.0])
    flags, _, state = _run(_stream(x), stuck_n=4)
    assert np.flatnonzero(_has(flags, Flag.STUCK)).tolist() == [5, 6]
    assert state["stuck_run"][0] == 3
    off, _, _ = _run(_stream(x))  # stuck_n = 0: off
    assert not _has(off, Flag.STUCK).any()


def test_gap_fires_after_10_intervals_of_silence_and_not_for_jitter() -> None:
    rng = np.random.default_rng(5)
    dt = (SEC * rng.uniform(0.8, 1.2, 200)).astype(np.int64)
    dt[150] = 10 * SEC
    flags, scores, state = _run(_stream(np.zeros(200), dt))
    assert np.flatnonzero(_has(flags, Flag.GAP)).tolist() == [150]
    assert scores["gap_s"][150] == 10.0
    assert 0.9 * SEC < state["gap_interval_ns"][0] < 1.1 * SEC  # the silence was not learnt as an interval


def test_rate_is_judged_only_over_positive_intervals() -> None:
    b = _stream(np.array([0.0, 1.0, 50.0, 51.0, 52.0]), np.array([SEC, SEC, 0, SEC, -SEC]))
    flags, _, state = _run(b, max_rate=2.0)
    assert np.flatnonzero(_has(flags, Flag.RATE)).tolist() == []  # the jump came at the same instant
    assert state["prev_x"][0] == 52.0 and state["prev_ts"][0] == b.ts[-1]  # the pair moved back in time
    assert state["last_ts"][0] == b.ts.max()  # the gap clock did not


def test_stale_names_the_silent_sensor_and_not_the_others() -> None:
    n = 4
    idx = np.tile(np.arange(n, dtype=np.int64), 50)
    ts = T0 + np.repeat(np.arange(50, dtype=np.int64) * SEC, n)
    keep = ~((idx == 2) & (ts > T0 + 20 * SEC))  # sensor 2 dies after 20 s; sensor 3 is never heard
    keep &= idx != 3
    b = Batch(idx[keep], ts[keep], np.ones(keep.sum()), np.zeros(keep.sum(), np.uint32), n)
    params, state = FAMILY.alloc(n)
    FAMILY.run(b.idx, b.ts, b.values, b.flags.copy(), params, state)
    now = int(b.ts.max()) + SEC
    expected = expected_interval_ns(params, state)
    assert stale(now, state["last_ts"], expected, params["gap_factor"], n).tolist() == [2]
    assert state["last_ts"][3] == NEVER
    assert stale(now + 10 * SEC, state["last_ts"], expected, params["gap_factor"], n).tolist() == [0, 1, 2]


def test_rebaseline_restarts_the_spike_warm_up_only() -> None:
    assert set(FAMILY.rebaseline) <= {f.name for f in FAMILY.state}
    assert FAMILY.rebaseline["spike_n"] == 0
    assert not any(name.startswith(("gap", "last", "prev", "stuck")) for name in FAMILY.rebaseline)

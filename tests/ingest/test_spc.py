"""The SPC family: kernel, reference and NumPy rounds agree; each rule fires on its pattern and not just short of it."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.detect.family import SKIP
from ingest.detect.spc import FAMILY, NELSON_ALL
from qctrace.schema import Flag
from tests.ingest.family_contract import Batch, batches, check_family, check_split, run_reference, run_vectorised

# family_contract.batches() tests ``value or default``, which makes hypothesis warn for any strategy passed in.
pytestmark = pytest.mark.filterwarnings("ignore:bool.*is always True")

# Small integer noise around a level: ties, centre-line hits, exact zone edges and long runs are common.
LEVEL = 100.0
small_ints = st.integers(-3, 3).map(lambda v: LEVEL + v)
noisy_batches = batches(value=small_ints, size=st.integers(0, 200), repeat_prob=0.3)
any_batches = st.one_of(batches(), noisy_batches)


def make_params(n: int, **overrides) -> dict[str, np.ndarray]:
    params, _ = FAMILY.alloc(n)
    for name, v in overrides.items():
        params[name][:] = v
    return params


SETTINGS = {
    "phase1_default": {},
    "phase1_short": {"phase1_n": 5},
    "phase1_min": {"phase1_n": 1},
    "configured": {"centre": LEVEL, "sigma": 1.0},
    "configured_fractional_sigma": {"centre": LEVEL + 0.5, "sigma": 0.7, "cusum_k": 0.25, "cusum_h": 2.0},
    "centre_only": {"centre": LEVEL, "phase1_n": 4},
    "sigma_only": {"sigma": 1.5, "phase1_n": 3},
    "some_rules_off": {"centre": LEVEL, "sigma": 1.0, "rules": int(Flag.NELSON_2 | Flag.NELSON_5 | Flag.NELSON_7)},
    "no_rules_cusum_off": {"phase1_n": 6, "rules": 0, "cusum_h": math.inf},
    "h_zero": {"centre": LEVEL, "sigma": 2.0, "cusum_h": 0.0},
    "sigma_zero": {"centre": LEVEL, "sigma": 0.0},
    # The CUSUM cap, on tight settings so the small-integer noise keeps hitting it (and off, every way).
    "cap_tight": {"centre": LEVEL, "sigma": 1.0, "cusum_k": 0.25, "cusum_h": 2.0, "cusum_cap": 1.5},
    "cap_one": {"centre": LEVEL + 0.5, "sigma": 0.7, "cusum_k": 0.0, "cusum_h": 1.0, "cusum_cap": 1.0},
    "cap_below_one": {"centre": LEVEL, "sigma": 1.0, "cusum_h": 3.0, "cusum_cap": 0.3},  # counts as 1
    "cap_phase1": {"phase1_n": 5, "cusum_k": 0.1, "cusum_h": 1.0, "cusum_cap": 2.0},
    "cap_off": {"centre": LEVEL, "sigma": 1.0, "cusum_h": 2.0, "cusum_cap": 0.0},
    "cap_nan": {"centre": LEVEL, "sigma": 0.7, "cusum_h": 2.0, "cusum_cap": math.nan},
    "cap_inf": {"phase1_n": 5, "cusum_h": 2.0, "cusum_cap": math.inf},
    "cap_negative": {"centre": LEVEL, "sigma": 1.0, "cusum_h": 2.0, "cusum_cap": -1.0},
}


@st.composite
def per_sensor_params(draw, n: int) -> dict[str, np.ndarray]:
    """Each sensor its own settings, so one batch mixes phase I, configured and degenerate sensors."""
    params = make_params(n)
    for s in range(n):
        params["centre"][s] = draw(st.sampled_from([math.nan, LEVEL, 0.0]))
        params["sigma"][s] = draw(st.sampled_from([math.nan, 1.0, 0.7, 0.0]))
        params["phase1_n"][s] = draw(st.sampled_from([0, 2, 5, 100]))
        params["rules"][s] = draw(st.sampled_from([NELSON_ALL, 0, int(Flag.NELSON_1 | Flag.NELSON_4)]))
        params["cusum_k"][s] = draw(st.sampled_from([0.5, 0.0, 1.0]))
        params["cusum_h"][s] = draw(st.sampled_from([5.0, 1.0, 0.0, math.inf]))
        params["cusum_cap"][s] = draw(st.sampled_from([2.0, 1.0, 1.5, 0.5, 0.0, math.nan, math.inf]))
    return params


@pytest.mark.parametrize("name", sorted(SETTINGS))
@settings(max_examples=40, deadline=None)
@given(b=any_batches, cut=st.integers(0, 200))
def test_implementations_agree_and_batches_split_cleanly(name, b, cut):
    params = make_params(b.n_sensors, **SETTINGS[name])
    check_family(FAMILY, b, params)
    check_split(FAMILY, b, params, cut)


@settings(max_examples=150, deadline=None)
@given(data=st.data(), b=any_batches, cut=st.integers(0, 200))
def test_mixed_per_sensor_settings_agree(data, b, cut):
    params = data.draw(per_sensor_params(b.n_sensors))
    check_family(FAMILY, b, params)
    check_split(FAMILY, b, params, cut)


@settings(max_examples=30, deadline=None)
@given(b=noisy_batches, cut=st.integers(0, 200))
def test_vectorised_and_reference_split_cleanly_too(b, cut):
    params = make_params(b.n_sensors, phase1_n=4)
    cut = min(cut, len(b.idx))
    for run in (run_vectorised, run_reference):
        _, whole = FAMILY.alloc(b.n_sensors)
        _, parts = FAMILY.alloc(b.n_sensors)
        if run is run_reference:
            whole = {k: v.tolist() for k, v in whole.items()}
            parts = {k: v.tolist() for k, v in parts.items()}
        fw, _ = run(FAMILY, b, params, whole)
        f1, _ = run(FAMILY, b.cut(0, cut), params, parts)
        f2, _ = run(FAMILY, b.cut(cut, len(b.idx)), params, parts)
        assert (np.concatenate([f1, f2]) == fw).all()
        for name in whole:
            assert np.allclose(np.asarray(parts[name], float), np.asarray(whole[name], float), equal_nan=True)


# -- behaviour, on hand-made sequences (centre 0, sigma 1 unless said) -----------------------------------


def run_one(values, **params) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """One sensor's readings through the kernel; returns flags, scores and the final state."""
    x = np.asarray(values, np.float64)
    n = x.size
    flags = np.where(np.isfinite(x), 0, int(Flag.NOT_FINITE)).astype(np.uint32)
    p = make_params(1, **({"centre": 0.0, "sigma": 1.0} | params))
    _, state = FAMILY.alloc(1)
    scores = FAMILY.run(np.zeros(n, np.int64), np.arange(n, dtype=np.int64) * 10**9, x, flags, p, state)
    # Every behaviour test also holds for the other two implementations.
    b = Batch(np.zeros(n, np.int64), np.arange(n, dtype=np.int64) * 10**9, x, flags & SKIP, 1)
    check_family(FAMILY, b, p)
    return flags, scores, state


def fired(values, bit: Flag, **params) -> list[int]:
    flags, _, _ = run_one(values, **params)
    return np.flatnonzero(flags & np.uint32(bit)).tolist()


def test_rule1_one_point_beyond_3_sigma():
    assert fired([0.0, 3.0, -3.0, 0.0], Flag.NELSON_1) == []  # exactly 3σ is not beyond it
    assert fired([0.0, 3.01, -3.5, 0.0], Flag.NELSON_1) == [1, 2]


def test_rule2_nine_in_a_row_on_one_side():
    assert fired([0.5] * 8, Flag.NELSON_2) == []
    assert fired([0.5] * 8 + [0.2, 0.3], Flag.NELSON_2) == [8, 9]
    assert fired([-0.5] * 9, Flag.NELSON_2) == [8]
    assert fired([0.5] * 4 + [0.0] + [0.5] * 8, Flag.NELSON_2) == []  # on the centre line: the run restarts
    assert fired([0.5] * 4 + [-0.5] + [0.5] * 8, Flag.NELSON_2) == []


def test_rule3_six_in_a_row_increasing_or_decreasing():
    up = [0.0, 0.1, 0.2, 0.3, 0.4]
    assert fired(up, Flag.NELSON_3) == []
    assert fired([*up, 0.5, 0.6], Flag.NELSON_3) == [5, 6]
    assert fired([-v for v in up] + [-0.5], Flag.NELSON_3) == [5]
    assert fired([0.0, 0.1, 0.2, 0.2, 0.3, 0.4, 0.5], Flag.NELSON_3) == []  # a tie is not an increase


def test_rule4_fourteen_in_a_row_alternating():
    zigzag = [0.1 if i % 2 else -0.1 for i in range(15)]
    assert fired(zigzag[:13], Flag.NELSON_4) == []
    assert fired(zigzag, Flag.NELSON_4) == [13, 14]
    broken = [*zigzag[:7], zigzag[6], *zigzag[7:]]  # a repeated value breaks the alternation
    assert fired(broken, Flag.NELSON_4) == []


def test_rule5_two_of_three_beyond_2_sigma_same_side():
    assert fired([2.5, 0.0, 2.5], Flag.NELSON_5) == [2]
    assert fired([2.5, 2.5, 0.0], Flag.NELSON_5) == [1]  # the in-control third reading is not flagged
    assert fired([2.5, 0.0, 0.0, 2.5], Flag.NELSON_5) == []  # two of four
    assert fired([2.5, -2.5, 2.0], Flag.NELSON_5) == []  # opposite sides; exactly 2σ is not beyond
    assert fired([-2.1, -2.2], Flag.NELSON_5) == [1]


def test_rule6_four_of_five_beyond_1_sigma_same_side():
    assert fired([1.5, 1.5, 0.0, 1.5, 1.5], Flag.NELSON_6) == [4]
    assert fired([1.5, 1.5, 0.0, 0.0, 1.5, 1.5], Flag.NELSON_6) == []
    assert fired([-1.5, -1.5, -1.5, 1.5, -1.5], Flag.NELSON_6) == [4]
    assert fired([1.5, 1.5, 1.5, 1.0], Flag.NELSON_6) == []  # exactly 1σ is not beyond


def test_rule7_fifteen_in_a_row_within_1_sigma():
    hugging = [0.3, -0.2, 0.5, -0.6, 0.1] * 3 + [0.2]
    assert fired(hugging[:14], Flag.NELSON_7) == []
    assert fired(hugging, Flag.NELSON_7) == [14, 15]
    assert fired([*hugging[:7], 1.0, *hugging[:14]], Flag.NELSON_7) == []  # exactly 1σ ends the run


def test_rule8_eight_in_a_row_beyond_1_sigma_either_side():
    wide = [1.5, -1.5, 1.2, 1.8, -2.5, -1.1, 1.3, -1.4, 1.6]
    assert fired(wide[:7], Flag.NELSON_8) == []
    assert fired(wide, Flag.NELSON_8) == [7, 8]
    assert fired([1.5] * 4 + [0.5] + [1.5] * 7, Flag.NELSON_8) == []


def test_disabled_rules_stay_silent_but_keep_their_state():
    values = [0.5] * 12
    flags, _, state = run_one(values, rules=int(Flag.NELSON_1))
    assert not (flags & np.uint32(Flag.NELSON_2)).any()
    assert state["side"][0] == 12


def test_skipped_readings_neither_extend_nor_break_a_run():
    values = [0.5] * 4 + [math.nan, math.inf] + [0.5] * 5
    flags, scores, _ = run_one(values)
    assert np.flatnonzero(flags & np.uint32(Flag.NELSON_2)).tolist() == [10]
    assert np.isnan(scores["spc_z"][4:6]).all() and np.isnan(scores["cusum"][4:6]).all()


def test_phase1_learns_centre_and_sigma_and_judges_nothing():
    rng = np.random.default_rng(7)
    x = np.r_[rng.normal(20.0, 2.0, 50), [20.0 + 10 * 2.0]]
    flags, scores, state = run_one(x, centre=math.nan, sigma=math.nan, phase1_n=50)
    assert not flags[:50].any() and np.isnan(scores["spc_z"][:50]).all()
    assert state["c0"][0] == pytest.approx(x[:50].mean())
    assert state["s0"][0] == pytest.approx(x[:50].std(ddof=1))
    assert flags[50] & np.uint32(Flag.NELSON_1)
    assert scores["spc_z"][50] == pytest.approx((x[50] - x[:50].mean()) / x[:50].std(ddof=1))


def test_constant_signal_with_zero_sigma_raises_nothing():
    for params in ({"centre": math.nan, "sigma": math.nan, "phase1_n": 10}, {"centre": 4.2, "sigma": 0.0}):
        flags, scores, _ = run_one([4.2] * 500, **params)
        assert not flags.any()
        assert np.isnan(scores["spc_z"]).all() and np.isnan(scores["cusum"]).all()


def test_cusum_detects_a_one_sigma_shift_within_about_ten_readings():
    flags, scores, _ = run_one([0.0] * 20 + [1.0] * 15)
    high = np.flatnonzero(flags & np.uint32(Flag.CUSUM_HIGH))
    assert high.tolist() == list(range(30, 35))  # C+ grows 0.5 a reading: 5.5 > h = 5 at the 11th
    assert scores["cusum"][29] == 5.0 and scores["cusum"][34] == 7.5  # not reset after a signal
    delays = []
    for seed in range(20):
        x = np.random.default_rng(seed).normal(0.0, 1.0, 400)
        x[200:] += 1.0
        flags, _, _ = run_one(x)
        first = np.flatnonzero(flags[200:] & np.uint32(Flag.CUSUM_HIGH))
        assert first.size
        delays.append(first[0] + 1)
    assert np.median(delays) <= 12  # Montgomery: ARL1 ≈ 10.4 for k = 0.5, h = 5


def test_cusum_low_detects_a_downward_shift_and_inf_h_disables_it():
    x = [0.0] * 5 + [-2.0] * 10
    assert fired(x, Flag.CUSUM_LOW)[0] == 8  # 1.5 a reading: 6.0 > 5 at the 4th
    assert fired(x, Flag.CUSUM_LOW, cusum_h=math.inf) == []
    assert fired(x, Flag.CUSUM_HIGH) == []


def test_cusum_raises_no_alarm_on_10000_in_control_readings():
    # Montgomery's k = 0.5, h = 5 has an in-control ARL of about 465 readings, so 10,000 readings carry
    # ~20 false signals by design; a plant that wants none over that horizon uses a larger h.
    x = np.random.default_rng(20240601).normal(0.0, 1.0, 10_000)
    flags, _, _ = run_one(x, cusum_h=12.0)
    assert not (flags & np.uint32(Flag.CUSUM_HIGH | Flag.CUSUM_LOW)).any()
    flags, _, _ = run_one(x)
    episodes = np.count_nonzero(np.diff((flags & np.uint32(Flag.CUSUM_HIGH | Flag.CUSUM_LOW)) != 0, prepend=0) > 0)
    assert 5 <= episodes <= 60


def test_cusum_cap_lets_go_soon_after_a_shift_ends():
    # 120 readings 3σ up: C+ climbs 2.5 a reading. Uncapped it reaches 300 and, falling 0.5 a reading,
    # keeps CUSUM_HIGH on for ~580 readings after the shift; capped at 2h = 20 it is down to h after 20.
    x = [0.0] * 50 + [3.0] * 120 + [0.0] * 700
    end = 170
    high = fired(x, Flag.CUSUM_HIGH, cusum_h=10.0, cusum_k=0.5, cusum_cap=2.0)
    assert high[0] == 54 and high[-1] == end + 18  # C+ = 20 - 0.5 j after j in-control readings: 10.5 at j = 19
    assert high == list(range(54, end + 19))
    uncapped = fired(x, Flag.CUSUM_HIGH, cusum_h=10.0, cusum_k=0.5, cusum_cap=0.0)
    assert uncapped[-1] == end + 578
    _, scores, state = run_one(x[:end], cusum_h=10.0, cusum_k=0.5)  # default cap: 2
    assert state["cusum_hi"][0] == 20.0 and scores["cusum"][end - 1] == 22.5  # the score is the judged sum
    # With noise the fall from the cap to h is a random walk of drift -k: about 20 readings, give or take 9.
    releases = []
    for seed in range(20):
        rng = np.random.default_rng(seed)
        x = rng.normal(0.0, 1.0, 800)
        x[200:320] += 3.0
        for sign, bit in ((1.0, Flag.CUSUM_HIGH), (-1.0, Flag.CUSUM_LOW)):
            flags, _, _ = run_one(sign * x, cusum_h=10.0, cusum_k=0.5, cusum_cap=2.0)
            on = (flags & np.uint32(bit)) != 0
            assert on[200:210].any() and on[210:320].all(), seed
            release = int(np.argmin(on[320:]))  # in-control readings until the flag is off
            releases.append(release)
            assert not on[320 + release:].any(), (seed, "the alarm came back after the fault")
    assert np.median(releases) <= 25 and max(releases) <= 60


def test_cusum_restarts_from_zero_when_released():
    # The flag clears when the sum falls back to h; left there, in-control noise would push it over
    # again within a few readings (chatter after every fault). Released, it starts afresh.
    x = [0.0] * 5 + [3.0] * 10 + [0.0] * 30 + [0.8] * 30
    flags, scores, state = run_one(x, cusum_h=5.0, cusum_k=0.5, cusum_cap=2.0)
    high = np.flatnonzero(flags & np.uint32(Flag.CUSUM_HIGH)).tolist()
    # C+ capped at 10 at the shift's end, then 9.5, 9.0, ... 5.5 (flagged), 5.0: released, restarts at 0;
    # 0.3 a reading then needs 17 readings of 0.8 to pass h = 5 again.
    assert high == list(range(7, 24)) + list(range(61, 75))
    assert scores["cusum"][24] == 5.0 and scores["cusum"][25] == 0.0 and state["cusum_lo"][0] == 0.0


def test_cusum_alarm_does_not_chatter_after_a_fault():
    # Released at h instead of restarted, about 30% of these alarms came back within 100 readings.
    back = 0
    for seed in range(40):
        x = np.random.default_rng(500 + seed).normal(0.0, 1.0, 700)
        x[200:320] += 3.0
        flags, _, _ = run_one(x, cusum_h=10.0, cusum_k=0.5)
        on = (flags & np.uint32(Flag.CUSUM_HIGH)) != 0
        off = 320 + int(np.argmin(on[320:]))
        back += bool(on[off:off + 100].any())
    assert back == 0


@pytest.mark.parametrize("cap", [2.0, 1.5, 1.0, 0.5, 0.01])
def test_cusum_cap_never_delays_the_first_signal(cap):
    # Until the first signal the sums never exceeded h, and a cap is never below h (0.5 counts as 1),
    # so it cannot have bitten; the reading that passes h is judged before it is capped.
    for seed in range(30):
        rng = np.random.default_rng(100 + seed)
        shift = rng.choice([0.5, 1.0, 2.0, 5.0, 20.0]) * rng.choice([-1.0, 1.0])
        x = rng.normal(0.0, 1.0, 1000)
        x[100:] += shift
        bits = np.uint32(Flag.CUSUM_HIGH | Flag.CUSUM_LOW)
        capped, _, _ = run_one(x, cusum_h=10.0, cusum_k=0.5, cusum_cap=cap)
        free, _, _ = run_one(x, cusum_h=10.0, cusum_k=0.5, cusum_cap=0.0)
        first = np.flatnonzero(free & bits)[0]  # even a 0.5σ shift signals within 900 readings
        assert np.flatnonzero(capped & bits)[0] == first
        assert (capped[: first + 1] == free[: first + 1]).all()


def test_cusum_cap_off_values_mean_no_cap():
    x = [0.0] * 5 + [3.0] * 60
    free = fired(x, Flag.CUSUM_HIGH, cusum_cap=math.inf)
    assert free == list(range(7, 65))
    for off in (0.0, math.nan, -2.0):
        assert fired(x, Flag.CUSUM_HIGH, cusum_cap=off) == free
    _, _, state = run_one(x, cusum_cap=0.0)
    assert state["cusum_hi"][0] == 2.5 * 60
    assert fired(x, Flag.CUSUM_HIGH, cusum_cap=0.3) == fired(x, Flag.CUSUM_HIGH, cusum_cap=1.0)  # below 1: 1
    _, _, state = run_one(x, cusum_h=math.inf)  # alarms off: nothing to cap against, the sum still runs
    assert state["cusum_hi"][0] == 2.5 * 60


def test_cusum_cap_of_one_releases_as_soon_as_a_reading_is_below_k():
    # Reset-on-signal: the sum restarts at h, so the flag stays only while each reading exceeds k.
    x = [0.0] * 5 + [3.0] * 10 + [0.6, 0.7, 0.4, 3.0, 0.0]
    assert fired(x, Flag.CUSUM_HIGH, cusum_cap=1.0) == [7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 18]


def test_rebaseline_restarts_phase1_and_zeroes_runs():
    x = np.r_[[0.0, 1.0, -1.0, 0.5, -0.5], np.full(12, 2.5)]
    p = make_params(1, centre=math.nan, sigma=math.nan, phase1_n=5)
    _, state = FAMILY.alloc(1)
    flags = np.zeros(x.size, np.uint32)
    FAMILY.run(np.zeros(x.size, np.int64), np.zeros(x.size, np.int64), x, flags, p, state)
    assert state["side"][0] == 12 and state["cusum_hi"][0] > 0
    for name, v in FAMILY.rebaseline.items():
        state[name][0] = v
    fresh = FAMILY.alloc(1)[1]
    for name in state:
        assert np.array_equal(state[name], fresh[name], equal_nan=True), name

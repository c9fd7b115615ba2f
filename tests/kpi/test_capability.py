"""Capability maths against published worked examples, and its behaviour on data we know."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ingest.capability import capability, cp_ci, cpk_ci, first_pass_yield, indices, lot_yield, within_sigma


def test_nist_handbook_6_1_6_worked_example():
    # NIST/SEMATECH e-Handbook 6.1.6: USL 20, LSL 8, mean 16, sigma 2 -> Cp 1.0, Cpu 0.6667, Cpl 1.3333, Cpk 0.6667
    cp, cpk = indices(16.0, 2.0, 8.0, 20.0)
    assert cp == pytest.approx(1.0)
    assert cpk == pytest.approx(0.6667, abs=5e-5)
    assert indices(16.0, 2.0, 8.0, None) == (None, pytest.approx(1.3333, abs=5e-5))  # Cpl alone
    assert indices(16.0, 2.0, None, 20.0) == (None, pytest.approx(0.6667, abs=5e-5))  # Cpu alone


def test_montgomery_confidence_intervals():
    # Montgomery, Introduction to Statistical Quality Control, examples 8.5/8.6: n = 20,
    # Cp-hat 2.29 -> 95 % CI 1.57 .. 3.01 (chi-square); Cpk-hat 1.33 -> 0.88 .. 1.78 (Bissell)
    ci = cp_ci(2.29, 20)
    assert (round(ci.low, 2), round(ci.high, 2)) == (1.57, 3.01)
    ci = cpk_ci(1.33, 20)
    assert (round(ci.low, 2), round(ci.high, 2)) == (0.88, 1.78)


def test_within_sigma_from_moving_range_and_subgroup_ranges():
    x = np.array([1.0, 3.0, 2.0, 5.0, 4.0, 4.0])
    s, method = within_sigma(x)
    assert s == pytest.approx(np.mean([2, 1, 3, 1, 0]) / 1.128) and method == "moving range / d2"
    s, method = within_sigma(x, subgroup=3)
    assert s == pytest.approx(np.mean([2.0, 1.0]) / 1.693) and method == "R-bar / d2(3)"
    with pytest.raises(ValueError, match=r"2\.\.10"):
        within_sigma(x, subgroup=11)


def test_a_drifting_process_shows_cp_above_pp_and_intervals_cover_the_truth():
    rng = np.random.default_rng(3)
    stable = rng.normal(10.0, 0.5, 5000)
    cap = capability(stable, 7.0, 13.0)
    assert cap.cp_ci.low < 2.0 < cap.cp_ci.high and cap.pp_ci.low < 2.0 < cap.pp_ci.high
    assert cap.cpk_ci.low < 2.0 < cap.cpk_ci.high
    assert cap.sigma_within == pytest.approx(0.5, rel=0.05)
    drifting = stable + np.linspace(0, 3, 5000)
    d = capability(drifting, 7.0, 13.0)
    assert d.cp == pytest.approx(cap.cp, rel=0.01)  # the short-term spread did not change
    assert d.pp < 0.7 * d.cp  # but overall the process wandered
    assert d.ppk < d.pp


def test_bad_input_is_refused_or_left_out():
    with pytest.raises(ValueError, match="at least one specification limit"):
        capability([1.0, 2.0], None, None)
    with pytest.raises(ValueError, match="must be below"):
        capability([1.0, 2.0], 5.0, 1.0)
    cap = capability([1.0, float("nan"), 2.0, float("inf"), 1.5], 0.0, 3.0)
    assert cap.n == 3
    tiny = capability([1.0, 1.0], 0.0, 3.0)
    assert tiny.cp is None and tiny.cp_ci is None  # no spread: no index rather than infinity


def test_first_pass_yield_counts_lots_with_nothing_to_recheck():
    lots = [lot_yield("A", "p/l1", 100, 0), lot_yield("B", "p/l1", 100, 3), lot_yield("C", "p/l1", 0, 0)]
    assert [y.first_pass for y in lots] == [True, False, False]
    assert lots[1].conforming_share == pytest.approx(0.97)
    assert math.isnan(lots[2].conforming_share)
    assert first_pass_yield(lots) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="nonconforming"):
        lot_yield("D", "p/l1", 5, 6)


def test_a_line_is_as_capable_as_its_weakest_sensor():
    from ingest.capability import CapabilityRow, line_capability

    rng = np.random.default_rng(5)
    wide = capability(rng.normal(10, 0.5, 500), 7.0, 13.0)
    tight = capability(rng.normal(10, 1.0, 500), 7.0, 13.0)
    rows = [CapabilityRow("p/l1", "p/l1/a/x", None, wide), CapabilityRow("p/l1", "p/l1/a/y", None, tight),
            CapabilityRow("p/l1", "p/l1/a/y", "LOT1", wide), CapabilityRow("p/l2", "p/l2/a/x", None, wide)]
    got = {lc.line: lc for lc in line_capability(rows)}
    assert set(got) == {"p/l1", "p/l2"}
    assert (got["p/l1"].weakest_cpk_sensor, got["p/l1"].cpk, got["p/l1"].sensors) == ("p/l1/a/y", tight.cpk, 2)

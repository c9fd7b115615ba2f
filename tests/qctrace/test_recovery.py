"""How the campaign measures recovery from a fault: the latency of readings by the second they were sent."""

from __future__ import annotations

import numpy as np

from qctrace.campaign import late_by_fault, recovery


def _plant(seconds: int, slow: dict[int, float]) -> tuple[np.ndarray, np.ndarray]:
    """100 readings a second, 0.5 s latency except in the seconds of ``slow`` (second -> latency)."""
    sent = np.repeat(np.arange(seconds, dtype=float), 100) + np.tile(np.linspace(0, 0.99, 100), seconds) + 1000.0
    lat = np.full(len(sent), 0.5)
    for s, v in slow.items():
        lat[(sent >= 1000 + s) & (sent < 1001 + s)] = v
    return sent, lat


def test_a_fault_recovers_when_three_seconds_in_a_row_are_within_the_goal():
    # Worker killed at 10.4 s: readings sent in seconds 10-14 wait 3-6 s, second 16 is slow again.
    sent, lat = _plant(40, {10: 6.0, 11: 6.0, 12: 5.0, 13: 4.0, 14: 3.0, 16: 2.5})
    took, recovering = recovery(sent, lat, [1010.4])
    assert np.allclose(took, [6.6])  # back under 2 s for good from second 17
    assert recovering.sum() == 700 and recovering[(sent >= 1010) & (sent < 1017)].all()
    assert np.percentile(lat[~recovering], 99) == 0.5


def test_a_fault_that_never_showed_takes_no_time_and_marks_nothing():
    sent, lat = _plant(20, {})
    took, recovering = recovery(sent, lat, [1005.0])
    assert took == [0.0] and not recovering.any()


def test_a_fault_never_recovered_from_runs_to_the_end():
    sent, lat = _plant(20, {s: 9.0 for s in range(12, 20)})
    took, recovering = recovery(sent, lat, [1012.0])
    assert took == [8.0] and recovering.sum() == 800


def test_late_readings_are_charged_to_the_fault_before_them_or_to_the_steady_state():
    # 100 s; an edge kill at 10.5 s makes seconds 11-12 late, a broker crash at 50 s second 50,
    # and second 95 is late with no fault in the 30 s before it.
    sent, lat = _plant(100, {11: 3.0, 12: 2.5, 50: 4.0, 95: 2.1, 30: 1.9})
    faults = [(1050.0, "crash_broker"), (1010.5, "kill_edge"), (1060.0, "kill_ingest")]
    assert late_by_fault(sent, lat, faults) == {"kill_edge": 200, "crash_broker": 100, "steady": 100}
    assert late_by_fault(sent, lat, []) == {"steady": 400}
    assert late_by_fault(sent, lat, faults, goal_s=5.0) == {}
    # the first readings of second 10 were sent before the kill: the steady state's (none are late)
    early = _plant(100, {10: 3.0})
    assert late_by_fault(*early, faults) == {"steady": 50, "kill_edge": 50}

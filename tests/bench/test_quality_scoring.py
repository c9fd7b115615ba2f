"""The detection-quality scoring on hand-made labels and alarms whose figures are known by hand."""

from __future__ import annotations

import numpy as np
import pytest

from bench.quality_scoring import AlarmEpisode, Label, NormalChange, episodes, rule_families, score
from qctrace.schema import Flag

S = 1_000_000_000
FAMS = rule_families((f.name, f.value) for f in Flag)


def test_consecutive_flagged_readings_of_one_sensor_make_one_episode():
    keys = ["a", "b"]
    # arrival order interleaves the sensors; a's readings at 1..6 s, b's at 1..3 s
    sensor = np.array([0, 1, 0, 1, 0, 1, 0, 0, 0])
    ts = np.array([1, 1, 2, 2, 3, 3, 4, 5, 6]) * S
    flags = np.array([0, 4, 1, 4, 2, 0, 0, 4, 4], dtype=np.uint32)
    eps = episodes(sensor, ts, flags, keys)
    assert eps == [AlarmEpisode("a", 2 * S, 3 * S, 3), AlarmEpisode("a", 5 * S, 6 * S, 4),
                   AlarmEpisode("b", 1 * S, 2 * S, 4)]


def test_episodes_order_by_time_and_ignore_bits_outside_the_mask():
    # a STALE timer alarm appended after the batch, at an earlier time than a later reading
    sensor = np.array([0, 0, 0, 0])
    ts = np.array([1, 3, 4, 2]) * S
    flags = np.array([0, int(Flag.GAP), 0, int(Flag.STALE)], dtype=np.uint32)
    assert episodes(sensor, ts, flags, ["a"]) == [AlarmEpisode("a", 2 * S, 3 * S, int(Flag.GAP | Flag.STALE))]
    assert episodes(sensor, ts, flags, ["a"], mask=int(Flag.GAP)) == [AlarmEpisode("a", 3 * S, 3 * S, int(Flag.GAP))]
    assert episodes(np.array([], np.int64), np.array([], np.int64), np.array([], np.uint32), []) == []


def test_rule_families_group_known_prefixes_and_keep_unknown_bits_apart():
    fams = rule_families([("SPEC_LOW", 1), ("SPEC_HIGH", 2), ("NELSON_1", 32), ("BAND_LOW", 64), ("DOOR_OPEN", 128),
                          ("SOMETHING_NEW", 256), ("NONE", 0)])
    assert fams == {"spec": 3, "nelson": 32, "coldchain": 192, "something_new": 256}


def test_recall_precision_and_delay_on_a_hand_made_case():
    tol = 10 * S
    labels = [
        Label(0, "spike", "x", 100 * S, 101 * S),  # detected at 100 s: delay 0
        Label(1, "spike", "x", 500 * S, 501 * S),  # missed: the only alarm near is 20 s late (> tolerance)
        Label(2, "level_shift", "y", 200 * S, 320 * S),  # detected at 230 s (30 s), ringing after it is false
        Label(3, "door_open", "t", 1000 * S, 1300 * S),  # two sensors, one fault: first alarm on the door, 65 s
        Label(3, "door_open", "d", 1000 * S, 1300 * S),
        Label(4, "drift", "y", 600 * S, 900 * S),  # an alarm already running at the start: delay 0
    ]
    spec, ewma = int(Flag.SPEC_HIGH), int(Flag.EWMA_Z)
    eps = [
        AlarmEpisode("x", 100 * S, 100 * S, spec),  # true (spike 0)
        AlarmEpisode("x", 521 * S, 522 * S, spec),  # false: 20 s after spike 1 ended, tolerance 10 s
        AlarmEpisode("y", 230 * S, 260 * S, ewma),  # true (shift)
        AlarmEpisode("y", 325 * S, 326 * S, ewma),  # true: within tolerance after the shift's end
        AlarmEpisode("y", 400 * S, 401 * S, ewma),  # false, nearest label the shift (80 s) vs drift (199 s)
        AlarmEpisode("y", 595 * S, 620 * S, ewma),  # true (drift), began 5 s before it: delay 0
        AlarmEpisode("d", 1065 * S, 1300 * S, int(Flag.DOOR_OPEN)),  # true
        AlarmEpisode("t", 1090 * S, 1300 * S, spec),  # true, later than the door
        AlarmEpisode("z", 50 * S, 51 * S, ewma),  # false, on a sensor with no labels at all
    ]
    r = score(labels, eps, tol, FAMS, groups={"cold_chain": ("door_open", "compressor_failure")})
    k = r["per_kind"]
    assert (k["spike"]["faults"], k["spike"]["detected"], k["spike"]["recall"]) == (2, 1, 0.5)
    assert k["spike"]["delay_median_s"] == 0.0
    assert (k["spike"]["episodes_true"], k["spike"]["episodes_false"], k["spike"]["precision"]) == (1, 1, 0.5)
    assert k["level_shift"]["recall"] == 1.0 and k["level_shift"]["delay_median_s"] == 30.0
    assert (k["level_shift"]["episodes_true"], k["level_shift"]["episodes_false"]) == (2, 1)
    assert k["level_shift"]["precision"] == pytest.approx(2 / 3)
    assert k["drift"]["delay_median_s"] == 0.0 and k["drift"]["precision"] == 1.0
    assert k["door_open"]["faults"] == 1 and k["door_open"]["delay_median_s"] == 65.0
    assert k["door_open"]["episodes_true"] == 2
    assert r["per_group"]["cold_chain"]["recall"] == 1.0
    o = r["overall"]
    assert (o["faults"], o["detected"], o["recall"]) == (5, 4, 0.8)
    assert (o["episodes"], o["episodes_true"], o["false_unattributed"]) == (9, 6, 1)
    assert o["precision"] == pytest.approx(6 / 9)
    assert o["delay_median_s"] == 15.0  # delays 0, 0, 30, 65
    assert o["delay_p90_s"] == pytest.approx(54.5)  # linear, at rank 2.7: 30 + 0.7 * (65 - 30)
    # a fault counts for recall_new only if an episode starts inside it: the drift's began 5 s before
    assert o["recall_new"] == pytest.approx(3 / 5) and k["drift"]["recall_new"] == 0.0
    # durations 0+1+30+1+1+25+235+210+1; outside every label window ± 10 s: 1 s each at 521, 400 and on z
    assert (o["alarm_s"], o["false_alarm_s"]) == (504.0, 3.0)
    f = r["per_family"]
    assert f["spec"] == {"episodes": 3, "true": 2, "precision": pytest.approx(2 / 3), "alarm_s": 211.0,
                         "false_alarm_s": 1.0}
    assert f["ewma"] == {"episodes": 5, "true": 3, "precision": pytest.approx(3 / 5), "alarm_s": 58.0,
                         "false_alarm_s": 2.0}
    assert f["coldchain"] == {"episodes": 1, "true": 1, "precision": 1.0, "alarm_s": 235.0, "false_alarm_s": 0.0}
    assert "nelson" not in f  # a family that raised nothing is not reported


def test_false_alarms_after_normal_changes_are_counted_and_true_ones_are_not():
    labels = [Label(0, "spike", "x", 100 * S, 101 * S)]
    changes = [NormalChange("setpoint", 90 * S, frozenset({"x", "x_sp"})),
               NormalChange("lot", 1000 * S, frozenset({"x", "w"}))]
    eps = [
        AlarmEpisode("x", 100 * S, 100 * S, 1),  # true, though just after the setpoint change
        AlarmEpisode("x", 200 * S, 201 * S, 1),  # false, within 300 s of the setpoint change
        AlarmEpisode("w", 1299 * S, 1300 * S, 1),  # false, within 300 s of the lot change
        AlarmEpisode("w", 1301 * S, 1302 * S, 1),  # false, outside the window
        AlarmEpisode("v", 1001 * S, 1002 * S, 1),  # false, a sensor the lot change does not touch
        AlarmEpisode("x", 80 * S, 81 * S, 1),  # false, in the window before the setpoint change (control)
        AlarmEpisode("w", 699 * S, 700 * S, 1),  # false, 301 s before the lot change: in no window
    ]
    r = score(labels, eps, 5 * S, FAMS, changes, change_window_ns=300 * S)
    assert r["normal_change_false"] == {"total": 2, "lot": 1, "setpoint": 1, "before": 1}


def test_a_latched_alarm_detects_but_is_not_new_and_its_false_time_counts():
    labels = [Label(0, "level_shift", "x", 100 * S, 200 * S), Label(1, "stuck", "x", 1000 * S, 1100 * S)]
    eps = [AlarmEpisode("x", 150 * S, 5000 * S, int(Flag.CUSUM_HIGH))]  # never let go after the shift
    r = score(labels, eps, 10 * S, FAMS)
    assert r["overall"]["recall"] == 1.0 and r["overall"]["recall_new"] == 0.5
    assert r["per_kind"]["stuck"]["delay_median_s"] == 0.0
    assert r["overall"]["precision"] == 1.0  # one episode, and it overlaps labels...
    assert r["overall"]["false_alarm_s"] == 4850 - 60 - 120  # ...but most of its time is outside them


def test_no_alarms_means_zero_recall_and_undefined_precision():
    r = score([Label(0, "stuck", "x", 0, 10 * S)], [], S, FAMS)
    assert r["per_kind"]["stuck"]["recall"] == 0.0
    assert r["per_kind"]["stuck"]["precision"] is None
    assert r["per_kind"]["stuck"]["delay_median_s"] is None
    assert r["overall"]["precision"] is None and r["per_family"] == {}

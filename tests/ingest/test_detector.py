"""The detector as a whole: rule families together, re-baselining on recipe and lot changes, state
carried across a restart, per-type defaults, and the public API (Arrow batch in, flags and scores out)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from ingest import Ingest
from ingest.detect import Detector
from qctrace.config import DetectConfig, SensorRule, load_config
from qctrace.schema import Flag, batch_from_columns

T0 = 1_793_599_200 * 10**9
S = 10**9


def _batch(rows: list[tuple[str, int, float]], lot: str | None = "LOT-1", seq0: int = 0) -> pa.RecordBatch:
    """rows: (sensor name on plant1/line1/plc1, second, value)."""
    n = len(rows)
    return batch_from_columns({
        "ts": [T0 + t * S for _, t, _ in rows], "recv_ts": [T0] * n, "site": ["plant1"] * n, "line": ["line1"] * n,
        "device": ["plc1"] * n, "sensor": [s for s, _, _ in rows], "value": [v for _, _, v in rows],
        "quality": [0] * n, "seq": list(range(seq0, seq0 + n)), "lot": [lot] * n,
    })


def _noise(n: int, level: float, sd: float, seed: int) -> np.ndarray:
    return np.round(level + sd * np.random.default_rng(seed).standard_normal(n), 3)


def test_scores_come_back_for_every_rule_family():
    det = Detector(DetectConfig())
    sc = det.score(_batch([("weight", t, v) for t, v in enumerate(_noise(50, 500.0, 1.0, 1))]))
    assert sc.flags.dtype == np.uint32 and len(sc.flags) == 50
    assert {"ewma_z", "cusum", "spc_z", "robust_z", "gap_s", "excursion_s", "mkt_c"} <= set(sc.scores)
    assert all(len(v) == 50 for v in sc.scores.values())


def test_a_recipe_setpoint_change_raises_no_alarm_but_the_same_step_without_one_does():
    pv = np.concatenate([_noise(400, 175.0, 0.4, 2), _noise(400, 182.0, 0.4, 3)])
    with_sp = [("seal_temp", t, v) for t, v in enumerate(pv)] + [("seal_temp_sp", t, 175.0 if t < 400 else 182.0)
                                                                  for t in range(800)]
    with_sp.sort(key=lambda r: (r[1], r[0] != "seal_temp_sp"))  # the PLC publishes both every second
    det = Detector(DetectConfig())
    flags = det.score(_batch(with_sp)).flags
    pv_rows = np.array([r[0] == "seal_temp" for r in with_sp])
    assert int(np.count_nonzero(flags[pv_rows])) == 0
    alone = Detector(DetectConfig()).score(_batch([("seal_temp", t, v) for t, v in enumerate(pv)])).flags
    assert np.count_nonzero(alone[400:]) > 0  # a step nobody announced is an anomaly


def test_the_setpoint_may_arrive_after_the_process_value_in_the_batch():
    pv = np.concatenate([_noise(300, 175.0, 0.4, 4), _noise(300, 182.0, 0.4, 5)])
    rows = [("seal_temp", t, v) for t, v in enumerate(pv)] + [("seal_temp_sp", t, 175.0 if t < 300 else 182.0)
                                                               for t in range(600)]
    rows.sort(key=lambda r: (r[1], r[0] == "seal_temp_sp"))  # PV first within each second
    flags = Detector(DetectConfig()).score(_batch(rows)).flags
    assert int(np.count_nonzero(flags[np.array([r[0] == "seal_temp" for r in rows])])) == 0


def test_a_lot_changeover_rebaselines_only_where_configured():
    first, second = _noise(300, 2.40, 0.02, 6), _noise(300, 2.55, 0.02, 7)  # another product, another torque
    b1 = _batch([("torque", t, v) for t, v in enumerate(first)], lot="LOT-A")
    b2 = _batch([("torque", 300 + t, v) for t, v in enumerate(second)], lot="LOT-B", seq0=300)
    plain = Detector(DetectConfig())
    plain.score(b1)
    assert np.count_nonzero(plain.score(b2).flags) > 0
    cfg = DetectConfig(sensors=(SensorRule(match="*/torque", rebaseline_on_lot=True),))
    det = Detector(cfg)
    assert np.count_nonzero(det.score(b1).flags) == 0
    assert np.count_nonzero(det.score(b2).flags) == 0


def test_saved_state_continues_exactly_like_an_uninterrupted_detector(tmp_path):
    rng = np.random.default_rng(8)
    rows = [(f"s{k}", t, float(v)) for t in range(600) for k, v in enumerate(rng.normal(10, 1, 5))]
    rows[2501] = ("s1", 500, 40.0)  # a spike in the second half
    whole = Detector(DetectConfig()).score(_batch(rows)).flags
    first = Detector(DetectConfig())
    first.score(_batch(rows[:1500]))
    first.save(tmp_path / "det.npz")
    second = Detector(DetectConfig())
    second.load(tmp_path / "det.npz")
    rest = second.score(_batch(rows[1500:], seq0=1500)).flags
    assert (rest == whole[1500:]).all() and np.count_nonzero(rest) > 0


def test_ingest_restarts_with_the_detector_state_of_its_last_commit(tmp_path):
    cfg = load_config(None)
    noisy = _noise(200, 500.0, 0.8, 9)
    ingest = Ingest(tmp_path, cfg.detect, cfg.sink, lambda facts: None)
    ingest.process(_batch([("filler_weight", t, v) for t, v in enumerate(noisy)]))
    ingest.flush()
    mean = ingest.detector.core["mean"][0]
    restarted = Ingest(tmp_path, cfg.detect, cfg.sink, lambda facts: None)
    assert restarted.detector.keys == ["plant1/line1/plc1/filler_weight"]
    assert restarted.detector.core["mean"][0] == mean and restarted.detector.core["count"][0] > 0
    assert len(list((tmp_path / "ingest").glob("detector-*.npz"))) == 1


def test_per_type_defaults_keep_switches_and_setpoints_quiet():
    det = Detector(DetectConfig())
    door = [("door_open", t, 1.0 if 100 <= t < 130 else 0.0) for t in range(400)]
    flags = det.score(_batch(door)).flags
    assert np.count_nonzero(flags) == 0  # a 30 s opening is normal loading
    long_open = [("door_open", 400 + t, 1.0 if t < 120 else 0.0) for t in range(200)]
    flags = det.score(_batch(long_open, seq0=400)).flags
    assert np.count_nonzero(flags & np.uint32(Flag.DOOR_OPEN)) > 0
    assert not (flags & ~np.uint32(Flag.DOOR_OPEN)).any()


def test_every_rule_has_an_explanation_with_its_numbers():
    from ingest.detect.explain import explain

    every = 0
    for bit in Flag:
        every |= int(bit)
    lines = explain(every, {"ewma_z": 6.2, "spc_z": 3.4, "cusum": 9.0, "robust_z": -12.0, "gap_s": 30.0,
                            "excursion_s": 1500.0})
    assert len(lines) == len([b for b in Flag if b])
    assert "EWMA_Z: far from its recent level (EWMA z-score +6.2)" in lines
    assert any(line.startswith("NELSON_2:") and "rule 2" in line for line in lines)
    assert explain(0) == []
    assert explain(int(Flag.SPIKE)) == ["SPIKE: an isolated spike (robust z +nan against the running median)"]


def test_a_silent_sensor_is_reported_once_by_the_timer_without_waiting_for_its_next_reading(tmp_path):
    cfg = load_config(None)
    facts: list = []
    ingest = Ingest(tmp_path, cfg.detect, cfg.sink, facts.extend)
    both = [(name, t, 1.0 + 0.01 * (t % 7)) for t in range(60) for name in ("a", "b")]
    ingest.process(_batch(both))
    assert ingest.check_stale() == []
    ingest.process(_batch([("a", 60 + t, 1.0 + 0.01 * (t % 7)) for t in range(30)], seq0=200))
    silent = ingest.check_stale()
    assert [e.sensor for e in silent] == ["plant1/line1/plc1/b"] and silent[0].flags == int(Flag.STALE)
    assert silent[0].start_ns == T0 + 59 * S and silent[0].end_ns == T0 + 89 * S
    assert ingest.check_stale() == []  # one report per silence
    assert any(getattr(f, "flags", 0) == int(Flag.STALE) for f in facts)


def _device_batch(device: str, rows: list[tuple[str, int, float]], seq0: int) -> pa.RecordBatch:
    n = len(rows)
    return batch_from_columns({
        "ts": [T0 + t * S for _, t, _ in rows], "recv_ts": [T0] * n, "site": ["plant1"] * n, "line": ["line1"] * n,
        "device": [device] * n, "sensor": [s for s, _, _ in rows], "value": [1.0 + 0.01 * (t % 7) for _, t, _ in rows],
        "quality": [0] * n, "seq": list(range(seq0, seq0 + n)), "lot": ["LOT-1"] * n,
    })


def test_a_device_whose_readings_come_late_is_not_silent_and_a_late_silence_is_reported_once(tmp_path):
    """The one-hour soak: an edge back from a kill replayed minutes of spool through a window of 64
    unacknowledged records, and on the loaded machine one PLC server lagged its neighbours by
    minutes. Judged by the worker's newest reading, every sensor of the late device was silent
    again at every check as its readings moved on: 1.4 M STALE episodes, 89 % of the ledger, and
    the load of writing and anchoring them slowed the worker until the edge could not drain."""
    cfg = load_config(None)
    facts: list = []
    ingest = Ingest(tmp_path, cfg.detect, cfg.sink, facts.extend)
    live = [("a", t, 0.0) for t in range(60)]
    ingest.process(_device_batch("plc1", live, 0), "edge1")
    for node in ("edge1", "edge2"):  # the late device on the same edge node as the live one, or another
        ingest.process(_device_batch(f"plc2-{node}", [("b", t, 0.0) for t in range(30)], 0), node)
    assert ingest.check_stale() == []  # 30 s behind plc1, but nothing of them is silent
    for k in range(10):  # and their readings move on, still far behind
        for node in ("edge1", "edge2"):
            ingest.process(_device_batch(f"plc2-{node}", [("b", 30 + 3 * k + t, 0.0) for t in range(3)], 30 + 3 * k),
                           node)
        assert ingest.check_stale() == []
    # Within one node, a sensor whose late readings trickle in is one silence, not one per check.
    ingest.process(_device_batch("plc1", [("c", t, 0.0) for t in range(60)], 60), "edge1")
    ingest.process(_device_batch("plc1", [("a", 60 + t, 0.0) for t in range(60)], 120), "edge1")
    first = ingest.check_stale()
    assert [e.sensor for e in first] == ["plant1/line1/plc1/c"] and first[0].end_ns == T0 + 119 * S
    for k in range(5):
        ingest.process(_device_batch("plc1", [("c", 60 + k, 0.0)], 180 + k), "edge1")
        assert ingest.check_stale() == []
    ingest.process(_device_batch("plc1", [("c", 65 + t, 0.0) for t in range(55)], 190), "edge1")
    assert ingest.check_stale() == []  # caught up: the silence is over
    ingest.process(_device_batch("plc1", [("a", 120 + t, 0.0) for t in range(60)], 250), "edge1")
    again = ingest.check_stale()
    assert [e.sensor for e in again] == ["plant1/line1/plc1/c"] and again[0].start_ns == T0 + 119 * S
    assert sum(getattr(f, "flags", 0) == int(Flag.STALE) for f in facts) == 2


def test_a_lots_mean_kinetic_temperature_comes_from_its_readings(tmp_path):
    from ingest.detect.coldchain import mean_kinetic_temperature
    from ingest.query import lot_mkt

    cfg = load_config(None)
    temps = [4.0] * 120 + [12.0] * 60 + [4.0] * 120  # an excursion of a minute in five
    ingest = Ingest(tmp_path, cfg.detect, cfg.sink, lambda facts: None)
    ingest.process(_batch([("temperature", t, v) for t, v in enumerate(temps)], lot="LOT-CC"))
    ingest.flush()
    mkt = lot_mkt(tmp_path / "readings", "LOT-CC")
    assert list(mkt) == ["plant1/line1/plc1/temperature"]
    expected = mean_kinetic_temperature(np.array(temps))  # one-second readings: equal weights
    assert abs(mkt["plant1/line1/plc1/temperature"] - expected) < 1e-6
    assert float(np.mean(temps)) < expected < 12.0

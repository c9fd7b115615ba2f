"""Scenarios are deterministic, their labels match the signal, and frames follow PROTOCOL.md."""

from __future__ import annotations

import numpy as np
import pytest

from edge.frames import parse_frame
from firmware_sim.scenario import PlantGenerator, load_scenario
from firmware_sim.serial_logger import encode_frame
from qctrace.errors import ConfigError


def test_same_seed_gives_identical_values_however_ticks_are_chunked():
    sc = load_scenario("demo")
    one = PlantGenerator(sc, 7).generate(300)
    g = PlantGenerator(sc, 7)
    chunks = np.vstack([g.generate(n) for n in (1, 7, 92, 200)])
    assert one.tobytes() == chunks.tobytes()


def test_another_seed_gives_other_values():
    sc = load_scenario("demo")
    assert not np.array_equal(PlantGenerator(sc, 7).generate(50), PlantGenerator(sc, 8).generate(50))


def test_each_label_is_visible_in_the_raw_signal():
    sc = load_scenario("demo")
    g = PlantGenerator(sc, 7)
    values = g.generate(400)
    by_key = {(s.line, s.sensor): s for s in g.streams}
    for lab in g.labels():
        s = by_key[(lab["line"], lab["sensor"])]
        col = values[:, s.index]
        t0 = (lab["start_ns"] - g.start_ns) // g.tick_ns
        t1 = (lab["end_ns"] - g.start_ns) // g.tick_ns
        inside = col[t0:t1].mean()
        before = col[max(0, t0 - 30):t0].mean()
        assert abs(inside - before) > 0.5 * abs(lab["magnitude"]), lab


def test_lot_changes_on_schedule():
    sc = load_scenario("demo")
    g = PlantGenerator(sc, 7)
    line = sc.lines[0]
    assert g.lot_of(line, 0) == g.lot_of(line, 119) != g.lot_of(line, 120)


def test_frames_the_simulator_writes_parse_under_the_protocol():
    frame = encode_frame("logger-01", 42, 1793599200000, 4.52, 60.3, 0, 3.6)
    assert frame.startswith(b"$QC1,logger-01,42,") and frame.endswith(b"\r\n")
    f = parse_frame(frame, "logger-01")
    assert (f.seq, f.ts_ms, f.temperature, f.humidity, f.door_open, f.battery) == (42, 1793599200000, 4.52, 60.3,
                                                                                   0, 3.6)


def test_a_fault_aimed_at_an_unknown_tag_is_a_config_error(tmp_path):
    p = tmp_path / "s.toml"
    p.write_text("""
[plant]
site = "p"
start = "2026-01-01T00:00:00Z"
[[lines]]
name = "l"
device = "d"
[[lines.tags]]
name = "t"
nominal = 1.0
[[faults]]
kind = "spike"
target = "l/nope"
at_s = 1
duration_s = 1
""")
    with pytest.raises(ConfigError, match=r"faults\.0\.target: 'l/nope'"):
        load_scenario(p)


def test_unknown_scenario_name_is_a_clear_error():
    with pytest.raises(ConfigError, match="no such shipped scenario"):
        load_scenario("does-not-exist")

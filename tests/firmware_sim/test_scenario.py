"""Scenarios are deterministic, their labels match the signal, and frames follow PROTOCOL.md."""

from __future__ import annotations

import numpy as np
import pytest

from edge.frames import parse_frame
from firmware_sim.generator import PlantGenerator
from firmware_sim.scenario import load_scenario
from firmware_sim.serial_logger import encode_frame
from qctrace.errors import ConfigError


def test_same_seed_gives_identical_values_however_ticks_are_chunked():
    sc = load_scenario("demo")
    one = PlantGenerator(sc, 7).generate(300)
    g = PlantGenerator(sc, 7)
    parts = [g.generate(n) for n in (1, 7, 92, 200)]
    for field in ("values", "status", "emit", "ts"):
        assert getattr(one, field).tobytes() == np.vstack([getattr(p, field) for p in parts]).tobytes()


def test_another_seed_gives_other_values():
    sc = load_scenario("demo")
    assert not np.array_equal(PlantGenerator(sc, 7).generate(50).values, PlantGenerator(sc, 8).generate(50).values)


def test_every_label_of_the_fault_heavy_plant_shows_in_the_raw_signal():
    sc = load_scenario("faults")
    g = PlantGenerator(sc, 11)
    ch = g.generate(2000)
    col = {(s.site, s.line, s.device, s.sensor): c for c, s in enumerate(g.streams)}
    kinds = set()
    for lab in g.labels():
        c = col[(lab["site"], lab["line"], lab["device"], lab["sensor"])]
        t0 = (lab["start_ns"] - g.start_ns) // g.tick_ns
        t1 = (lab["end_ns"] - g.start_ns) // g.tick_ns
        inside, before = ch.values[t0:t1, c], ch.values[max(0, t0 - 60):t0, c]
        k, mag = lab["kind"], lab["magnitude"]
        kinds.add(k)
        if k in ("spike", "level_shift", "out_of_spec") or (k == "door_open" and lab["sensor"] == "temperature"):
            assert inside.mean() - before.mean() > 0.5 * mag, lab
        elif k == "door_open":
            assert (inside == 1).all() and (before == 0).all()
        elif k == "compressor_failure":
            assert inside[-10:].mean() - before.mean() > 0.8 * mag, lab
        elif k == "drift":
            assert inside[-30:].mean() - before.mean() > 0.8 * mag, lab
        elif k == "variance_increase":
            assert inside.std() > 0.5 * mag * before.std(), lab
        elif k == "stuck":
            assert (inside == inside[0]).all() and before.std() > 0, lab
        elif k in ("dropout", "opcua_server_restart") or (k == "device_disconnect" and lab["site"] == "coldchain"):
            assert not ch.emit[t0:t1, c].any() and ch.emit[max(0, t0 - 60):t0, c].all(), lab
        elif k == "sensor_fault":
            assert (ch.status[t0:t1, c] >= 0x80000000).all() and np.isnan(inside).all(), lab
            assert (ch.status[max(0, t0 - 60):t0, c] == 0).all()
        elif k == "device_disconnect":  # a PLC's I/O station: Uncertain (last value held), then Bad
            st = ch.status[t0:t1, c] >> 30
            assert st[0] == 1 and st[-1] == 2 and (np.diff(st) >= 0).all(), lab
            assert inside[0] == before[-1] and np.isnan(inside[st == 2]).all()
            assert (ch.status[max(0, t0 - 60):t0, c] == 0).all()
        elif k == "clock_skew":
            true_ts = g.tick_ts(ch.ticks[t0:t1])
            assert (ch.ts[t0:t1, c] - true_ts == round(mag * 1e9)).all(), lab
        else:
            assert k.endswith("_frames"), k  # act on the serial line: see the plant tests
    assert kinds >= {"spike", "level_shift", "drift", "variance_increase", "stuck", "dropout", "out_of_spec",
                     "sensor_fault", "device_disconnect", "opcua_server_restart", "clock_skew", "door_open",
                     "compressor_failure", "corrupt_frames", "partial_frames", "oversized_frames"}


def test_setpoint_changes_and_lot_changeovers_are_never_labelled():
    sc = load_scenario("faults")
    g = PlantGenerator(sc, 11)
    ch = g.generate(1200)
    c = next(i for i, s in enumerate(g.streams) if s.sensor == "seal_temp")
    assert abs(ch.values[1000:1100, c].mean() - 182.0) < 0.5  # the recipe change happened ...
    assert not [lab for lab in g.labels() if lab["sensor"] == "seal_temp"]  # ... and is not a fault
    assert all(lab["kind"] != "lot_changeover" for lab in g.labels())


def test_shipped_scenarios_load_with_their_promised_sizes():
    from firmware_sim.scenario import lines_of, shipments_of, streams_of

    stress = load_scenario("stress")
    assert len([s for s in streams_of(stress) if s.kind == "opcua"]) == 10_000 and len(lines_of(stress)) == 10
    assert len(shipments_of(load_scenario("coldchain"))) == 20
    assert load_scenario("demo") and load_scenario("faults")


def test_lot_changes_on_schedule():
    sc = load_scenario("demo")
    g = PlantGenerator(sc, 7)
    assert g.lot_of("plant1/line1", 0) == g.lot_of("plant1/line1", 119) != g.lot_of("plant1/line1", 120)


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
start = "2026-01-01T00:00:00Z"
[[sites]]
name = "p"
[[sites.lines]]
name = "l"
[[sites.lines.devices]]
name = "d"
[[sites.lines.devices.tags]]
name = "t"
nominal = 1.0
[[faults]]
kind = "spike"
target = "p/l/d/nope"
at_s = 1
duration_s = 1
""")
    with pytest.raises(ConfigError, match=r"faults\.0\.target: 'p/l/d/nope'"):
        load_scenario(p)


def test_unknown_scenario_name_is_a_clear_error():
    with pytest.raises(ConfigError, match="no such shipped scenario"):
        load_scenario("does-not-exist")

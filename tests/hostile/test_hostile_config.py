"""Malformed configuration: the user sees the file, the line and the key, and nothing is written."""

from __future__ import annotations

import hashlib

import pytest
from click.testing import CliRunner

from qctrace.cli import cli
from qctrace.config import load_config
from qctrace.errors import ConfigError
from qctrace.toml_lines import key_lines


def _error(tmp_path, text: str | bytes) -> str:
    p = tmp_path / "plant.toml"
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    return str(exc.value)


def test_a_wrong_type_names_file_line_and_key(tmp_path):
    msg = _error(tmp_path, "data_dir = 'x'\n\n# the plant\n[plant]\nseed = 3\nspeed = 'fast'\n")
    assert msg.startswith(f"{tmp_path / 'plant.toml'}: invalid configuration: plant.speed (line 6):")
    assert "valid number" in msg


def test_an_error_in_the_third_array_entry_points_at_its_line(tmp_path):
    text = """[detect]
warmup = 10

[[detect.sensors]]
match = "a/*"
lsl = 1.0

[[detect.sensors]]
match = "b/*"

[[detect.sensors]]
match = "c/*"
usl = "high"
"""
    msg = _error(tmp_path, text)
    assert "detect.sensors.2.usl (line 13):" in msg


def test_a_misspelt_key_is_refused_at_its_line(tmp_path):
    msg = _error(tmp_path, "[sink]\nflush_rows = 10\nflush_agee_s = 2\n")
    assert "sink.flush_agee_s (line 3): Extra inputs are not permitted" in msg


def test_a_cross_field_rule_points_at_the_table_that_breaks_it(tmp_path):
    text = "[edge]\nbatch_max_rows = 10\n\n[[detect.sensors]]\nmatch = '*'\nlsl = 5.0\nusl = 1.0\n"
    msg = _error(tmp_path, text)
    assert "detect.sensors.0 (line 4):" in msg and "lsl (5.0) must be below usl (1.0)" in msg


def test_nested_arrays_of_tables_in_the_serial_section_are_located(tmp_path):
    text = """[[edge.serial.devices]]
port = "/dev/serial/by-id/logger-a"
site = "coldchain"
line = "SHP-1"
device = "logger-a"

[[edge.serial.devices]]
port = "/dev/serial/by-id/rs485"
protocol = "modbus"
site = "plant1"
line = "coldroom"

[[edge.serial.devices.units]]
unit_id = 1
device = "room-1"
registers = [{sensor = "t", address = 0, type = "float32"}]

[[edge.serial.devices.units]]
unit_id = 900
device = "room-2"
registers = [{sensor = "t", address = 0}]
"""
    msg = _error(tmp_path, text)
    assert "edge.serial.devices.1.units.1.unit_id (line 19):" in msg and "less than or equal to 247" in msg


def test_several_problems_are_all_reported(tmp_path):
    msg = _error(tmp_path, "[plant]\nspeed = -1\n[sink]\nflush_rows = 0\n")
    assert "plant.speed (line 2)" in msg and "sink.flush_rows (line 4)" in msg


def test_a_binary_file_is_named_as_not_text(tmp_path):
    msg = _error(tmp_path, b"[plant]\nseed = 1\n\xff\xfe\x00garbage")
    assert "plant.toml: not a UTF-8 text file (byte 17, line 3)" in msg


def test_toml_syntax_errors_keep_their_line(tmp_path):
    assert "line 2" in _error(tmp_path, "[plant]\nseed = = 1\n")


def test_dotted_and_quoted_keys_are_located():
    lines = key_lines('a.b = 1\n[x."y.z"]\nk = 2\n[[t]]\n[[t]]\n"q" = 3\n'
                      's = """\nfake = 1\n"""\nm = [\n  1,\n]\nn = 4\n')
    assert lines[("a", "b")] == 1 and lines[("x", "y.z", "k")] == 3
    assert lines[("t", 1, "q")] == 6
    assert ("t", 1, "fake") not in lines  # inside a multi-line string
    assert lines[("t", 1, "n")] == 13


def test_the_cli_shows_the_line_exits_2_and_writes_nothing(tmp_path):
    cfg = tmp_path / "qctrace.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "data"}"\n[ledger]\ncheckpoint_every = "often"\n')
    before = hashlib.sha256(cfg.read_bytes()).hexdigest()
    res = CliRunner().invoke(cli, ["readings", "--lot", "L1", "--config", str(cfg)])
    assert res.exit_code == 2
    assert f"error: {cfg}: invalid configuration: ledger.checkpoint_every (line 3):" in res.output
    assert "Traceback" not in res.output
    assert hashlib.sha256(cfg.read_bytes()).hexdigest() == before
    assert not (tmp_path / "data").exists()  # nothing created from a configuration that did not load


def test_overlapping_modbus_registers_are_refused_with_both_names_and_the_unit_line(tmp_path):
    text = """[[edge.serial.devices]]
port = "/dev/ttyUSB0"
protocol = "modbus"
site = "p"
line = "l"

[[edge.serial.devices.units]]
unit_id = 7
device = "chiller"
registers = [{sensor = "temp", address = 0, type = "float32"}, {sensor = "flow", address = 1}]
"""
    msg = _error(tmp_path, text)
    assert "edge.serial.devices.0.units.0 (line 7):" in msg
    assert "unit 7: flow and temp both use holding register 1" in msg


def test_a_modbus_line_without_units_and_a_logger_without_its_id_are_refused(tmp_path):
    text = """[[edge.serial.devices]]
port = "/dev/ttyUSB0"
protocol = "modbus"
site = "p"
line = "l"

[[edge.serial.devices]]
port = "/dev/ttyUSB1"
site = "coldchain"
line = "SHP-1"
"""
    msg = _error(tmp_path, text)
    assert "edge.serial.devices.0 (line 1):" in msg and "needs at least one [[...units]] entry" in msg
    assert "edge.serial.devices.1 (line 7):" in msg and "needs device = its logger id" in msg

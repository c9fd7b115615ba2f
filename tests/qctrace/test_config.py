"""Bad configuration gets a message that names the file, the key (or line) and the problem."""

from __future__ import annotations

import math

import pytest

from qctrace.config import load_config
from qctrace.errors import ConfigError


def test_shipped_demo_configuration_loads_with_spec_limits():
    cfg = load_config(None)
    lsl, usl, *_ = cfg.detect.for_sensor("plant1/line1/plc1/filler_weight")
    assert (lsl, usl) == (495.0, 505.0)
    assert cfg.detect.for_sensor("x/y/z/unknown")[:2] == (-math.inf, math.inf)


def test_toml_syntax_error_names_file_and_line(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("data_dir = 'x'\n[plant\nseed = 1\n")
    with pytest.raises(ConfigError, match=r"bad\.toml: not valid TOML.*line 2"):
        load_config(p)


def test_wrong_type_names_the_key(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[plant]\nspeed = 'fast'\n")
    with pytest.raises(ConfigError, match=r"c\.toml: invalid configuration: plant\.speed"):
        load_config(p)


def test_unknown_key_is_an_error_not_silently_ignored(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[edge]\nbatch_max_row = 5\n")
    with pytest.raises(ConfigError, match=r"edge\.batch_max_row"):
        load_config(p)


def test_inverted_spec_limits_are_refused(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[[detect.sensors]]\nmatch='*'\nlsl=5\nusl=1\n")
    with pytest.raises(ConfigError, match=r"lsl .* must be below usl"):
        load_config(p)


def test_missing_file_says_so(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")


def test_overrides_are_validated_too():
    with pytest.raises(ConfigError, match=r"plant\.speed"):
        load_config(None).with_overrides(**{"plant.speed": -1})


def test_an_mqtt_reconnect_cap_below_its_first_wait_is_refused(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[mqtt]\nreconnect_min_s = 5\nreconnect_max_s = 1\n")
    with pytest.raises(ConfigError, match=r"c\.toml: .*reconnect_max_s must be at least reconnect_min_s"):
        load_config(p)

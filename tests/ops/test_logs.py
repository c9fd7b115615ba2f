"""`--log-format json`: one JSON object per line with the event and key=value fields lifted."""

from __future__ import annotations

import json
import subprocess
import sys

from qctrace.logs import fields_of


def test_cli_json_logs_one_object_per_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "qctrace", "--log-format", "json", "-v", "init", "--data-dir",
                        str(tmp_path / "d")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert lines
    objs = [json.loads(ln) for ln in lines]  # every line parses
    init = next(o for o in objs if o.get("event") == "keys.init")
    assert {"ts", "level", "logger", "message"} <= init.keys()
    assert init["level"] == "info" and init["logger"] == "ledger.keys"
    assert init["dir"] == str(tmp_path / "d" / "keys")


def test_text_stays_the_default(tmp_path):
    r = subprocess.run([sys.executable, "-m", "qctrace", "-v", "init", "--data-dir", str(tmp_path / "d")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and " INFO ledger.keys keys.init dir=" in r.stderr


def test_fields_with_spaces_and_reserved_names():
    f = fields_of("mqtt.disconnected broker=h:1883 reason=Unspecified error level=3")
    assert f == {"event": "mqtt.disconnected", "broker": "h:1883", "reason": "Unspecified error", "field_level": "3"}
    assert fields_of("plain words, no fields") == {}

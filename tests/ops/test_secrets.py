"""No secret is ever logged or written: real processes run with every secret set, then their output
and data directory are searched for the secret values.

Secrets: MQTT password (transport and alarm channel), webhook HMAC key, SMTP password, OPC UA
password, the anchoring account's private key. All come from environment variables or 0600 files.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from qctrace.broker import LocalBroker, free_port
from qctrace.certs import throwaway_pki
from qctrace.config import load_config

SECRETS = {
    "QCTRACE_MQTT_PASSWORD": "mqtt-S3cret-ingest-7781",
    "QCT_TEST_ALARM_MQTT_PW": "alarm-mqtt-S3cret-4411",
    "QCT_TEST_WEBHOOK_HMAC": "hmac-K3y-webhook-9902",
    "QCT_TEST_SMTP_PW": "smtp-S3cret-pw-5150",
    "QCT_TEST_OPCUA_PW": "opcua-S3cret-pw-6006",
    "QCTRACE_ANCHOR_KEY": "0x" + "ab12" * 16,
}


def config(tmp_path: Path, broker: LocalBroker, pki, user: str, opcua_port: int) -> Path:
    p = tmp_path / f"{user}.toml"
    p.write_text(f"""
data_dir = "{tmp_path / 'data'}"
[edge]
node = "{user}"
opcua_endpoints = ["opc.tcp://127.0.0.1:{opcua_port}"]
[edge.opcua]
security_policy = "None"
security_mode = "None"
username = "operator"
password_env = "QCT_TEST_OPCUA_PW"
timeout_s = 1.0
[mqtt]
port = {broker.port}
username = "{user}"
password_env = "QCTRACE_MQTT_PASSWORD"
tls = true
ca_file = "{pki.ca.cert}"
[metrics]
demo_port = 0
edge_port = 0
ingest_port = {free_port()}
sim_port = 0
[alarms.mqtt]
enabled = true
port = {broker.port}
username = "alarms"
password_env = "QCT_TEST_ALARM_MQTT_PW"
[[alarms.webhooks]]
url = "http://127.0.0.1:{free_port()}/hook"
secret_env = "QCT_TEST_WEBHOOK_HMAC"
[alarms.email]
host = "127.0.0.1"
port = {free_port()}
to = ["qa@example.com"]
username = "qctrace"
password_env = "QCT_TEST_SMTP_PW"
""")
    return p


def run(args: list[str], env: dict[str, str], seconds: float) -> str:
    proc = subprocess.Popen([sys.executable, "-m", "qctrace", "-vv", "--log-format", "json", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    try:
        out, _ = proc.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    return out


def assert_no_secret(text: str, where: str) -> None:
    for name, value in SECRETS.items():
        assert value not in text, f"{name}'s value appears in {where}"


def test_processes_never_log_or_write_secrets(tmp_path):
    pki = throwaway_pki(tmp_path / "pki")
    users = {"qctrace-ingest": SECRETS["QCTRACE_MQTT_PASSWORD"], "e1": "edge-pw-other-1234",
             "alarms": SECRETS["QCT_TEST_ALARM_MQTT_PW"]}
    env = {**os.environ, **SECRETS}
    with LocalBroker(tmp_path / "broker", tls=pki, users=users) as broker:
        ingest_cfg = config(tmp_path, broker, pki, "qctrace-ingest", free_port())
        out = run(["ingest", str(ingest_cfg)], env, 6.0)
        assert "ingest w1" in out and "mqtt.connected" in out, out[-2000:]
        assert_no_secret(out, "ingest's output")

        # The edge with the wrong MQTT password: refused, and the message names the broker, not the password.
        edge_cfg = config(tmp_path, broker, pki, "e1", free_port())
        out = run(["edge", str(edge_cfg)], env, 20.0)
        assert f"mqtt://127.0.0.1:{broker.port}" in out and "refused" in out, out[-2000:]
        assert_no_secret(out, "the refused edge's output")

        # The right password; its OPC UA server does not exist, so the OPC UA login path fails and logs.
        out = run(["edge", str(edge_cfg)], {**env, "QCTRACE_MQTT_PASSWORD": users["e1"]}, 8.0)
        assert "mqtt.connected" in out and "opc.tcp://127.0.0.1" in out, out[-2000:]
        assert users["e1"] not in out
        assert_no_secret(out, "the edge's output")

    written = [p for p in (tmp_path / "data").rglob("*") if p.is_file()]
    assert written, "the processes wrote nothing: the test proves nothing"
    for p in [*written, ingest_cfg, edge_cfg]:
        data = p.read_bytes()
        for name, value in SECRETS.items():
            assert value.encode() not in data, f"{name}'s value written to {p}"
    # the effective configuration, as any command would dump it, holds names of variables, not values
    assert_no_secret(load_config(ingest_cfg).model_dump_json(), "the configuration dump")


@pytest.mark.parametrize(("section", "key"), [
    ("[mqtt]", "password"), ("[edge.opcua]", "password"), ("[alarms.mqtt]", "password"),
    ("[alarms.email]\nhost = \"h\"\nto = [\"a@b\"]", "password"), ("[ledger.anchor]", "private_key"),
])
def test_a_secret_in_the_toml_is_refused(tmp_path, section, key):
    from qctrace.errors import ConfigError
    p = tmp_path / "c.toml"
    p.write_text(f'{section}\n{key} = "hunter2-secret"\n')
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    assert key in str(exc.value)
    assert "hunter2-secret" not in str(exc.value)


def test_redaction_masks_secret_env_values_in_any_message(monkeypatch):
    import io
    import logging

    from qctrace.logs import JsonFormatter, RedactSecrets
    monkeypatch.setenv("QCT_SOMETHING_PASSWORD", "leaky-pw-123456")
    buf = io.StringIO()
    h = logging.StreamHandler(buf)
    h.setFormatter(JsonFormatter())
    h.addFilter(RedactSecrets())
    lg = logging.getLogger("test.redact")
    lg.addHandler(h)
    try:
        lg.error("lib.failed error=%s", "auth leaky-pw-123456 refused")
    finally:
        lg.removeHandler(h)
    assert "leaky-pw-123456" not in buf.getvalue() and "auth *** refused" in buf.getvalue()

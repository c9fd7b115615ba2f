"""Notifications over real servers: a local HTTP server, aiosmtpd, and a Mosquitto the test starts."""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import os
import socket
import subprocess
import threading
import time
import typing

import paho.mqtt.client as mqtt
import pytest
from aiosmtpd.controller import Controller

from ingest.alarms import Action, Alarm, Transition
from qctrace.config import AlarmsConfig, EmailConfig, MqttAlarmConfig, WebhookConfig
from qctrace.errors import ConfigError, TransportError
from qctrace.notify import SIGNATURE_HEADER, EmailChannel, MqttChannel, Notifier, WebhookChannel, read_secret

S = 1_000_000_000
T0 = 1_762_063_200 * S


def _t(priority="critical", action=Action.RAISE, aid="abc123"):
    a = Alarm(aid, "plant1/line1/plc1/weight", "spec", priority, T0, "CRITICAL spec on plant1/line1/plc1/weight: x")
    return Transition(a, action, T0 + S, "qctrace")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def secret_file(tmp_path):
    p = tmp_path / "hmac.key"
    p.write_text("s3cret-key\n")
    p.chmod(0o600)
    return p


class _Hook(http.server.BaseHTTPRequestHandler):
    fail_first = 0
    seen: typing.ClassVar[list] = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).seen.append((dict(self.headers), body))
        if len(type(self).seen) <= type(self).fail_first:
            self.send_response(503)
        else:
            self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture()
def hook_server():
    _Hook.seen = []
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    yield srv, _Hook
    srv.shutdown()
    srv.server_close()


def test_webhook_is_signed_and_retried_with_backoff_until_it_gets_through(hook_server, secret_file):
    srv, hook = hook_server
    hook.fail_first = 2
    ch = WebhookChannel(WebhookConfig(url=f"http://127.0.0.1:{srv.server_port}/alarms", secret_file=secret_file,
                                      backoff_s=0.05, attempts=4))
    t0 = time.monotonic()
    ch.send(_t())
    assert ch.attempts == 3 and len(hook.seen) == 3
    assert time.monotonic() - t0 >= 0.05 + 0.1  # waited 0.05 then 0.1 s between attempts
    headers, body = hook.seen[-1]
    want = "sha256=" + hmac.new(b"s3cret-key", body, hashlib.sha256).hexdigest()
    assert headers[SIGNATURE_HEADER] == want
    doc = json.loads(body)
    assert (doc["kind"], doc["alarm"]["id"], doc["alarm"]["state"], doc["by"]) == (
        "alarm_raised", "abc123", "UNACK_ACTIVE", "qctrace")


def test_webhook_gives_up_after_its_attempts_with_a_clear_error(hook_server):
    srv, hook = hook_server
    hook.fail_first = 99
    ch = WebhookChannel(WebhookConfig(url=f"http://127.0.0.1:{srv.server_port}/", backoff_s=0.01, attempts=3))
    with pytest.raises(TransportError, match="gave up after 3 attempts: HTTP 503"):
        ch.send(_t())
    assert SIGNATURE_HEADER not in hook.seen[0][0]  # no secret configured: unsigned


def test_secrets_from_env_or_private_file_and_never_in_messages(tmp_path, monkeypatch):
    monkeypatch.setenv("QC_TEST_KEY", "from-env")
    assert read_secret("QC_TEST_KEY", None, "x") == "from-env"
    with pytest.raises(ConfigError, match="QC_TEST_NOPE is not set"):
        read_secret("QC_TEST_NOPE", None, "x")
    p = tmp_path / "open.key"
    p.write_text("leaky-secret")
    p.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600") as exc:
        WebhookChannel(WebhookConfig(url="http://127.0.0.1:9/", secret_file=p))
    assert "leaky-secret" not in str(exc.value)


def test_email_goes_through_a_real_smtp_server():
    got = []

    class Handler:
        async def handle_DATA(self, server, session, envelope):
            got.append(envelope)
            return "250 OK"

    port = _free_port()
    ctl = Controller(Handler(), hostname="127.0.0.1", port=port)
    ctl.start()
    try:
        ch = EmailChannel(EmailConfig(host="127.0.0.1", port=port, to=("qa@plant.example",), starttls=False))
        ch.send(_t())
    finally:
        ctl.stop()
    assert len(got) == 1 and got[0].rcpt_tos == ["qa@plant.example"]
    text = got[0].content.decode()
    assert "Subject: [qctrace CRITICAL] alarm raised: spec on plant1/line1/plc1/weight" in text
    assert "qctrace alarms ack abc123" in text


def test_email_to_a_closed_port_is_a_transport_error():
    ch = EmailChannel(EmailConfig(host="127.0.0.1", port=_free_port(), to=("a@b.c",), timeout_s=2))
    with pytest.raises(TransportError, match=r"email 127\.0\.0\.1"):
        ch.send(_t())


@pytest.fixture()
def mosquitto(tmp_path):
    port = _free_port()
    conf = tmp_path / "m.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    proc = subprocess.Popen(["/usr/sbin/mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.05)
    yield port
    proc.terminate()
    proc.wait(10)


def test_mqtt_alarm_topic_in_the_unified_namespace(mosquitto):
    ch = MqttChannel(MqttAlarmConfig(enabled=True, port=mosquitto))
    try:
        ch.send(_t())  # published before anyone subscribes: retained, so a late subscriber still sees it
    finally:
        ch.close()
    got = []
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    sub.on_message = lambda c, u, m: got.append((m.topic, m.qos, json.loads(m.payload)))
    sub.connect("127.0.0.1", mosquitto)
    sub.subscribe("qctrace/v1/+/+/alarms/#", qos=1)
    sub.loop_start()
    deadline = time.monotonic() + 5
    while not got and time.monotonic() < deadline:
        time.sleep(0.05)
    sub.loop_stop()
    sub.disconnect()
    assert got and got[0][0] == "qctrace/v1/plant1/line1/alarms/abc123"
    assert got[0][1] == 1 and got[0][2]["alarm"]["priority"] == "critical"


def test_a_dead_channel_never_blocks_and_priorities_filter(hook_server):
    srv, hook = hook_server
    hook.fail_first = 0
    dead = WebhookConfig(url=f"http://127.0.0.1:{_free_port()}/", backoff_s=0.1, attempts=3, timeout_s=1)
    live = WebhookConfig(url=f"http://127.0.0.1:{srv.server_port}/", min_priority="high")
    n = Notifier.from_config(AlarmsConfig(webhooks=(dead, live), notify_queue=3))
    t0 = time.monotonic()
    for i, prio in enumerate(["critical", "low", "high", "medium", "critical", "critical", "critical"]):
        n.submit(_t(prio, aid=f"a{i}"))
    assert time.monotonic() - t0 < 0.1  # submit only queues
    n.close(timeout_s=30)
    assert n.stats.dropped >= 1  # the dead hook's retries held the worker; the bounded queue overflowed
    ids = [json.loads(b)["alarm"]["id"] for _, b in hook.seen]
    assert "a1" not in ids and "a3" not in ids  # low and medium are below the live hook's min_priority
    assert os.environ.get("QC_TEST_KEY") is None


def test_a_sensor_name_that_cannot_be_a_topic_is_a_transport_error_not_a_crash(mosquitto):
    ch = MqttChannel(MqttAlarmConfig(enabled=True, port=mosquitto))
    bad = Alarm("x1", "plant1/line#1/plc1/w", "spec", "high", T0, "m")
    try:
        with pytest.raises(TransportError, match="mqtt"):
            ch.send(Transition(bad, Action.RAISE, T0))
    finally:
        ch.close()


def test_an_operators_acknowledgement_reaches_the_channels_too(hook_server, tmp_path):
    from ledger import Ledger
    from qctrace import alarm_ops
    from qctrace.config import Config
    from qctrace.ledger_ops import ledger_path

    srv, hook = hook_server
    hook.fail_first = 0
    cfg = Config(data_dir=tmp_path, alarms=AlarmsConfig(
        webhooks=(WebhookConfig(url=f"http://127.0.0.1:{srv.server_port}/"),)))
    with Ledger(ledger_path(tmp_path)) as led:
        led.append_many(alarm_ops.alarm_events([_t("high")]))
    alarm_ops.acknowledge(cfg, "abc123", "ann", "seen it")
    docs = [json.loads(b) for _, b in hook.seen]
    assert [(d["kind"], d["by"], d["comment"], d["alarm"]["state"]) for d in docs] == [
        ("alarm_acknowledged", "ann", "seen it", "ACK_ACTIVE")]
    alarm_ops.acknowledge(cfg, "abc123", "bob")  # changes nothing: nothing sent
    assert len(hook.seen) == 1

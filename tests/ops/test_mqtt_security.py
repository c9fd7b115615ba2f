"""MQTT over TLS with passwords and the shipped ACL, against a real Mosquitto this test starts."""

from __future__ import annotations

import asyncio
import time

import pytest

from edge.mqtt import MqttLink, MqttSource
from qctrace.broker import LocalBroker
from qctrace.certs import throwaway_pki
from qctrace.config import MqttConfig
from qctrace.errors import ConfigError, TransportError

PASSWORDS = {"e1": "pw-e1-secret", "e2": "pw-e2-secret", "qctrace-ingest": "pw-ingest-secret"}


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return throwaway_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def broker(tmp_path, pki):
    with LocalBroker(tmp_path / "broker", tls=pki, users=PASSWORDS, acl_prefix="qctrace/v1") as b:
        yield b


def cfg(broker, pki, user: str, monkeypatch, password: str | None = None, **kw) -> MqttConfig:
    env = f"QCTRACE_TEST_PW_{user.upper().replace('-', '_')}"
    monkeypatch.setenv(env, password if password is not None else PASSWORDS[user])
    return MqttConfig(port=broker.port, username=user, password_env=env, tls=True, ca_file=pki.ca.cert,
                      keepalive_s=5, **kw)


async def first_payload(source: MqttSource, timeout_s: float) -> bytes | None:
    async def first() -> bytes:
        async for p in source.receive():
            return p
        raise AssertionError("source closed")
    try:
        return await asyncio.wait_for(first(), timeout_s)
    except TimeoutError:
        return None


def test_tls_happy_path_end_to_end(broker, pki, monkeypatch):
    async def go():
        source = await MqttSource(cfg(broker, pki, "qctrace-ingest", monkeypatch), "w1").start()
        link = await MqttLink(cfg(broker, pki, "e1", monkeypatch), "e1").start()
        try:
            await link.send(b"payload-from-e1", "plant1/line1")
            assert await first_payload(source, 5.0) == b"payload-from-e1"
        finally:
            await link.close()
            await source.close()
    asyncio.run(go())


def test_edge_cannot_publish_as_another_node(broker, pki, monkeypatch):
    """e1 logs in as itself but claims to be e2: the broker drops it; e2's own message still arrives."""
    async def go():
        source = await MqttSource(cfg(broker, pki, "qctrace-ingest", monkeypatch), "w1").start()
        try:
            impostor = await MqttLink(cfg(broker, pki, "e1", monkeypatch), "e2").start()
            await impostor.send(b"forged-by-e1", "plant1/line1")
            assert await first_payload(source, 1.5) is None
            await impostor.close()
            # Its own link, a raw publish under e2's branch: dropped too.
            e1 = await MqttLink(cfg(broker, pki, "e1", monkeypatch), "e1").start()
            e1._conn.publish("qctrace/v1/plant1/line1/e2/readings", b"forged-raw")
            assert await first_payload(source, 1.5) is None
            await e1.send(b"e1-own", "plant1/line1")
            assert await first_payload(source, 5.0) == b"e1-own"
            await e1.close()
            real = await MqttLink(cfg(broker, pki, "e2", monkeypatch), "e2").start()
            await real.send(b"genuine-e2", "plant1/line1")
            assert await first_payload(source, 5.0) == b"genuine-e2"
            assert await first_payload(source, 0.5) is None
            await real.close()
        finally:
            await source.close()
    asyncio.run(go())


def test_edge_cannot_subscribe_to_readings(broker, pki, monkeypatch):
    """An edge node logged in with the ingest group's subscription reads nothing: ingest alone may."""
    async def go():
        spy = await MqttSource(cfg(broker, pki, "e2", monkeypatch), "spy").start()
        link = await MqttLink(cfg(broker, pki, "e1", monkeypatch), "e1").start()
        try:
            await link.send(b"e1-data", "plant1/line1")
            assert await first_payload(spy, 1.5) is None
        finally:
            await link.close()
            await spy.close()
    asyncio.run(go())


def test_wrong_password_is_refused_with_a_clear_error(broker, pki, monkeypatch):
    async def go():
        await MqttLink(cfg(broker, pki, "e1", monkeypatch, password="wrong"), "e1").start()
    with pytest.raises(TransportError) as exc:
        asyncio.run(go())
    msg = str(exc.value)
    assert f"mqtt://127.0.0.1:{broker.port}" in msg and "refused" in msg and "password" in msg.lower()
    assert "wrong" not in msg.replace("wrong password", "")  # the password itself is never echoed


def test_untrusted_ca_is_refused(broker, tmp_path, monkeypatch):
    other = throwaway_pki(tmp_path / "other", ca_name="someone else's CA")
    monkeypatch.setenv("QCTRACE_TEST_PW", PASSWORDS["e1"])
    bad = MqttConfig(port=broker.port, username="e1", password_env="QCTRACE_TEST_PW", tls=True,
                     ca_file=other.ca.cert, keepalive_s=5)

    async def go():
        await MqttLink(bad, "e1").start()
    with pytest.raises(TransportError) as exc:
        asyncio.run(go())
    assert "certificate verify failed" in str(exc.value).lower()
    assert f"127.0.0.1:{broker.port}" in str(exc.value)


def test_password_file_must_be_private(tmp_path):
    from edge.mqtt import mqtt_password
    f = tmp_path / "pw"
    f.write_text("s3cret\n")
    f.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        mqtt_password(MqttConfig(username="e1", password_file=f))
    f.chmod(0o600)
    assert mqtt_password(MqttConfig(username="e1", password_file=f)) == "s3cret"


def test_password_in_toml_is_refused():
    with pytest.raises(ValueError, match="never goes in the configuration file"):
        MqttConfig.model_validate({"username": "e1", "password": "x"})


def test_client_certificate_required_and_accepted(tmp_path, monkeypatch):
    pki = throwaway_pki(tmp_path / "pki", clients=("e1",))
    with LocalBroker(tmp_path / "broker", tls=pki, require_certificate=True, users=PASSWORDS) as b:
        async def go(**kw):
            link = await MqttLink(cfg(b, pki, "e1", monkeypatch, **kw), "e1").start()
            await link.close()
        asyncio.run(go(cert_file=pki.clients["e1"].cert, key_file=pki.clients["e1"].key))
        with pytest.raises(TransportError, match=f"mqtt://127.0.0.1:{b.port}: TLS .*set mqtt.cert_file"):
            asyncio.run(go())


def test_shipped_tls_configuration_starts_and_enforces_the_acl(tmp_path, pki, monkeypatch):
    """qctrace/deploy/mosquitto-tls.conf with its /etc paths pointed at test files: a real broker
    starts from it, refuses anonymous clients and applies the shipped ACL."""
    import subprocess
    from importlib import resources

    from qctrace.broker import acl_text, free_port, listening, mosquitto_binary
    port = free_port()
    (tmp_path / "acl").write_text(acl_text())
    pw = tmp_path / "passwd"
    pw.write_text("")
    for u, p in PASSWORDS.items():
        subprocess.run(["mosquitto_passwd", "-b", str(pw), u, p], check=True)
    text = resources.files("qctrace").joinpath("deploy/mosquitto-tls.conf").read_text()
    text = (text.replace("listener 8883", f"listener {port} 127.0.0.1")
            .replace("/etc/mosquitto/certs/ca.crt", str(pki.ca.cert))
            .replace("/etc/mosquitto/certs/server.crt", str(pki.server.cert))
            .replace("/etc/mosquitto/certs/server.key", str(pki.server.key))
            .replace("/etc/mosquitto/qctrace.passwd", str(pw))
            .replace("/etc/mosquitto/qctrace.acl", str(tmp_path / "acl")))
    assert "/etc/" not in text
    conf = tmp_path / "m.conf"
    conf.write_text("user root\n" + text)
    proc = subprocess.Popen([mosquitto_binary(), "-c", str(conf)], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while not listening("127.0.0.1", port, 0.2):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        broker = LocalBroker(tmp_path / "unused", port=port)

        async def go():
            source = await MqttSource(cfg(broker, pki, "qctrace-ingest", monkeypatch), "w1").start()
            link = await MqttLink(cfg(broker, pki, "e1", monkeypatch), "e1").start()
            try:
                link._conn.publish("qctrace/v1/plant1/line1/e2/readings", b"forged")
                await link.send(b"own", "plant1/line1")
                assert await first_payload(source, 5.0) == b"own"
                assert await first_payload(source, 0.5) is None
            finally:
                await link.close()
                await source.close()
        asyncio.run(go())
        with pytest.raises(TransportError, match="refused"):
            asyncio.run(MqttLink(MqttConfig(port=port, tls=True, ca_file=pki.ca.cert, keepalive_s=5), "anon").start())
    finally:
        proc.terminate()
        proc.wait(10)


def test_refused_publishes_make_the_edge_down_in_health(broker, pki, monkeypatch):
    """An edge whose username is not its node name: every publish is refused (PUBACK "Not authorized");
    its /health says so instead of looking merely idle."""
    from prometheus_client import CollectorRegistry

    from edge.forward import Forwarder
    from edge.spool import Spool
    from qctrace.metrics import EdgeMetrics, Health

    async def go():
        link = await MqttLink(cfg(broker, pki, "e1", monkeypatch), "e2").start()
        spool = Spool(broker.state_dir.parent / "spool", fsync=False)
        fwd = Forwarder("e2", spool, link)
        hl = Health("edge e2")
        EdgeMetrics(CollectorRegistry(), hl).watch(fwd, link, [])
        try:
            await link.send(b"x", "plant1/line1")
            for _ in range(100):
                if link.publish_refused >= 2:  # the birth state and the readings: both refused
                    break
                await asyncio.sleep(0.05)
            rep = hl.report()
            assert rep["status"] == "down"
            # the birth state on _edge/e2/state and the readings: both outside e1's branch
            assert "broker refused 2 publishes (Not authorized)" in " ".join(rep["components"]["broker"]["problems"])
        finally:
            await link.close()
            spool.close()
    asyncio.run(go())

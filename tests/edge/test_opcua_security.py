"""The OPC UA reader's security against the simulated PLC's real secure endpoints: trust lists,
policies, modes, client certificates, passwords, transport limits."""

from __future__ import annotations

import hashlib
import logging
import re
import shlex
import shutil
import stat

import pytest
from asyncua import ua
from pydantic import ValidationError

from edge.opcua_client import BoundedClient
from edge.opcua_pki import thumbprint
from firmware_sim.opcua_server import ServerSecurity
from firmware_sim.plant import SimulatedPlant
from firmware_sim.scenario import load_scenario
from qctrace.config import OpcUaClientConfig, load_config
from qctrace.errors import ConfigError, ReaderError
from tests.edge.opcua_support import Collected, reader, run_for


def _secure(tmp_path, users=()):
    return ServerSecurity(encrypted=True, allow_none=False, cert_dir=tmp_path / "srv", publish_dir=tmp_path / "pub",
                          users=users)


def _plant(tmp_path, **kw):
    return SimulatedPlant(load_scenario("demo"), seed=1, speed=40, processes=False, security=_secure(tmp_path, **kw))


async def test_an_unknown_server_is_refused_and_the_message_says_how_to_trust_it(tmp_path):
    async with _plant(tmp_path) as plant:
        url = plant.endpoints["opcua"][0]
        opts = OpcUaClientConfig(pki_dir=tmp_path / "pki")
        with pytest.raises(ReaderError) as err:
            async with reader(url, Collected(), opts=opts):
                pass
        msg = str(err.value)
        der = next((tmp_path / "pub").glob("*.der")).read_bytes()
        assert url in msg and "not trusted" in msg
        assert thumbprint(der) in msg and thumbprint(der).replace(":", "") == hashlib.sha256(der).hexdigest().upper()
        # The message's own command, done as the operator would: then the same reader configuration connects.
        cmd = re.search(r"&& cp (\S+) (\S+)/$", msg, re.M)
        assert cmd, msg
        src, dst = shlex.split(cmd.group(1))[0], shlex.split(cmd.group(2))[0]
        shutil.copy(src, dst)
        out = Collected()
        await run_for(reader(url, out, opts=opts), plant, ticks=10)
        assert len(out.ts()) == plant.produced()["plant1/line1/plc1"] > 0


@pytest.mark.parametrize(("policy", "mode"), [("Basic256Sha256", "SignAndEncrypt"),
                                              ("Aes128_Sha256_RsaOaep", "SignAndEncrypt"),
                                              ("Aes256_Sha256_RsaPss", "Sign")])
async def test_a_trusted_server_streams_every_reading_under_the_configured_policy(tmp_path, policy, mode):
    async with _plant(tmp_path) as plant:
        url = plant.endpoints["opcua"][0]
        opts = OpcUaClientConfig(security_policy=policy, security_mode=mode, pki_dir=tmp_path / "pki",
                                 trust_dir=tmp_path / "pub")  # the server's published certificate is the trust list
        out = Collected()
        r = reader(url, out, opts=opts)
        await run_for(r, plant, ticks=12)
        assert r._client.security_policy.URI.endswith("#" + policy)
        assert r._client.security_policy.Mode == getattr(ua.MessageSecurityMode, mode)
    assert len(out.ts()) == plant.produced()["plant1/line1/plc1"] == 12 * 4
    key = tmp_path / "pki" / "own" / "private" / "key.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700


async def test_the_client_certificate_is_made_once_and_kept(tmp_path):
    async with _plant(tmp_path) as plant:
        opts = OpcUaClientConfig(pki_dir=tmp_path / "pki", trust_dir=tmp_path / "pub")
        url = plant.endpoints["opcua"][0]
        async with reader(url, Collected(), opts=opts):
            first = (tmp_path / "pki" / "own" / "cert.der").read_bytes()
        async with reader(url, Collected(), opts=opts):
            assert (tmp_path / "pki" / "own" / "cert.der").read_bytes() == first


@pytest.mark.parametrize("policy", ["Basic128Rsa15", "Basic256"])
def test_deprecated_policies_are_refused_with_the_alternatives(policy, tmp_path):
    with pytest.raises(ValidationError, match=f"{policy}' is deprecated .* refused; use one of Basic256Sha256"):
        OpcUaClientConfig(security_policy=policy)
    cfg = tmp_path / "q.toml"
    cfg.write_text(f'[edge.opcua]\nsecurity_policy = "{policy}"\n')
    with pytest.raises(ConfigError, match="deprecated"):
        load_config(cfg)


async def test_no_security_is_never_a_fallback(tmp_path):
    # A server offering only "None": the default (secure) reader refuses rather than talking in clear.
    async with SimulatedPlant(load_scenario("demo"), seed=1, speed=40, processes=False) as plant:
        url = plant.endpoints["opcua"][0]
        with pytest.raises(ReaderError, match=r"offers no Basic256Sha256/SignAndEncrypt endpoint \(it offers"
                                              r" None/None\); the reader never falls back"):
            async with reader(url, Collected(), opts=OpcUaClientConfig(pki_dir=tmp_path / "pki")):
                pass
        # Only an explicit configuration talks in clear.
        out = Collected()
        await run_for(reader(url, out, opts=OpcUaClientConfig(security_policy="None")), plant, ticks=5)
        assert len(out.ts()) == 20
    with pytest.raises(ValidationError, match="security_mode 'None' does not go with security_policy 'Basic256Sha256'"):
        OpcUaClientConfig(security_mode="None")


async def test_a_wrong_password_is_a_clear_error_naming_the_endpoint_and_never_shows_the_password(
        tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    async with _plant(tmp_path, users=(("operator", "s3cret-pw"),)) as plant:
        url = plant.endpoints["opcua"][0]
        base = dict(pki_dir=tmp_path / "pki", trust_dir=tmp_path / "pub", username="operator")
        monkeypatch.setenv("PLC_PW", "wrong-pw-123")
        with pytest.raises(ReaderError) as err:
            async with reader(url, Collected(), opts=OpcUaClientConfig(**base, password_env="PLC_PW")):
                pass
        msg = str(err.value)
        assert msg.startswith(url) and "refused user 'operator'" in msg and "environment variable PLC_PW" in msg
        assert "wrong-pw-123" not in msg and "wrong-pw-123" not in caplog.text
        anon = OpcUaClientConfig(pki_dir=tmp_path / "pki", trust_dir=tmp_path / "pub")
        with pytest.raises(ReaderError, match=re.escape(url) + r": the server refused an anonymous login .* set"
                                              r" edge.opcua.username"):
            async with reader(url, Collected(), opts=anon):
                pass
        # The right password from a 0600 file: readings flow; the same file readable by others is refused.
        pw = tmp_path / "pw"
        pw.write_text("s3cret-pw\n")
        pw.chmod(0o644)
        with pytest.raises(ConfigError, match=r"readable by others \(mode 0644\); run: chmod 600"):
            async with reader(url, Collected(), opts=OpcUaClientConfig(**base, password_file=pw)):
                pass
        pw.chmod(0o600)
        out = Collected()
        await run_for(reader(url, out, opts=OpcUaClientConfig(**base, password_file=pw)), plant, ticks=5)
        assert len(out.ts()) == 20
    assert "s3cret-pw" not in caplog.text


def test_a_password_in_the_configuration_file_is_refused(tmp_path):
    cfg = tmp_path / "q.toml"
    cfg.write_text('[edge.opcua]\nusername = "operator"\npassword = "hunter2"\n')
    with pytest.raises(ConfigError, match="password never goes in the configuration file") as err:
        load_config(cfg)
    assert "hunter2" not in str(err.value)


async def test_a_response_above_the_message_size_limit_is_refused_not_buffered():
    async with SimulatedPlant(load_scenario("demo"), seed=1, speed=40, processes=False) as plant:
        url = plant.endpoints["opcua"][0]
        await plant._runners[0].server.write_lot("plant1/line1", "L" * 200_000, 1_793_923_200 * 10**9)  # 200 kB

        def client(**limits) -> BoundedClient:
            return BoundedClient(url, timeout_s=3, backoff=lambda: iter(()), **limits)

        small = client(max_message_size=64 * 1024, max_chunk_count=4)
        async with small:
            with pytest.raises((ConnectionError, OSError, TimeoutError, ua.UaError)):
                await small.get_node("ns=2;s=plant1/line1/Lot").read_value()
        # The reader's defaults (16 MiB, 1024 chunks) take it.
        d = OpcUaClientConfig()
        async with client(max_message_size=d.max_message_size, max_chunk_count=d.max_chunk_count) as big:
            assert len(await big.get_node("ns=2;s=plant1/line1/Lot").read_value()) == 200_000

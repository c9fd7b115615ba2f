"""The simulated PLC looks like a real one to an OPC UA client: units, ranges, status codes,
limits, an encrypted endpoint with passwords, one server process per line."""

from __future__ import annotations

import asyncio
import socket

import pytest
from asyncua import Client, ua
from asyncua.crypto.cert_gen import setup_self_signed_certificate
from cryptography.x509.oid import ExtendedKeyUsageOID

from firmware_sim.opcua_server import ServerSecurity
from firmware_sim.plant import SimulatedPlant
from firmware_sim.scenario import load_scenario


async def test_tags_carry_engineering_units_and_range_and_limits_are_advertised():
    async with SimulatedPlant(load_scenario("demo"), seed=1, speed=100, processes=False) as plant:
        async with Client(plant.endpoints["opcua"][0]) as c:
            ns = await c.get_namespace_index("urn:qctrace:sim")
            tag = await c.nodes.objects.get_child([f"{ns}:plant1", f"{ns}:line1", f"{ns}:plc1", f"{ns}:seal_temp"])
            eu = await (await tag.get_child("0:EngineeringUnits")).read_value()
            rng = await (await tag.get_child("0:EURange")).read_value()
            assert eu.DisplayName.Text == "degC" and eu.UnitId == 4408652  # UNECE "CEL"
            assert (rng.Low, rng.High) == (0.0, 250.0)
            limits = c.get_node(ua.ObjectIds.Server_ServerCapabilities_OperationLimits)
            per_read = await (await limits.get_child("0:MaxNodesPerRead")).read_value()
            assert per_read == 1000


async def test_a_failed_sensor_reads_bad_and_a_lost_io_station_reads_not_connected():
    sc = load_scenario("faults")
    async with SimulatedPlant(sc, seed=1, speed=1000, processes=False) as plant:
        await plant.run_ticks(asyncio.Event(), max_ticks=1505)  # sensor_fault on reject_count from 1500 s
        async with Client(plant.endpoints["opcua"][0]) as c:
            node = c.get_node("ns=2;s=plant2/fill/io/reject_count")
            dv = await node.read_data_value(raise_on_bad_status=False)
            assert dv.StatusCode.value == ua.StatusCodes.BadSensorFailure
            good = await c.get_node("ns=2;s=plant2/fill/plc/weight").read_data_value()
            assert good.StatusCode.is_good()


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_encrypted_endpoint_with_password(tmp_path):
    sec = ServerSecurity(encrypted=True, allow_none=False, cert_dir=tmp_path / "pki",
                         users=(("operator", "s3cret"),))
    key, cert = tmp_path / "client-key.pem", tmp_path / "client-cert.der"
    await setup_self_signed_certificate(key, cert, "urn:qctrace:test:client", socket.gethostname(),
                                        [ExtendedKeyUsageOID.CLIENT_AUTH], {"commonName": "test client"})
    async with SimulatedPlant(load_scenario("demo"), seed=1, speed=100, processes=False, security=sec,
                              opcua_port=_port()) as plant:
        url = plant.endpoints["opcua"][0]
        client = Client(url)
        client.application_uri = "urn:qctrace:test:client"
        await client.set_security_string(f"Basic256Sha256,SignAndEncrypt,{cert},{key}")
        client.set_user("operator")
        client.set_password("s3cret")
        async with client:
            eps = await client.get_endpoints()
            assert {(e.SecurityPolicyUri.rsplit("#", 1)[1], e.SecurityMode.name) for e in eps} == {
                (p, m) for p in ("Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss")
                for m in ("Sign", "SignAndEncrypt")}  # and no None endpoint: allow_none=False
            assert await client.get_node("ns=2;s=plant1/line1/Lot").read_value() is not None
        anonymous = Client(url, timeout=5)
        with pytest.raises((ua.UaError, OSError, TimeoutError, asyncio.TimeoutError)):
            async with anonymous:
                pass
        wrong = Client(url, timeout=5)
        wrong.application_uri = "urn:qctrace:test:client"
        await wrong.set_security_string(f"Basic256Sha256,SignAndEncrypt,{cert},{key}")
        wrong.set_user("operator")
        wrong.set_password("wrong")
        with pytest.raises(ua.UaError):
            async with wrong:
                pass


async def test_two_lines_run_as_two_server_processes(tmp_path):
    sc = load_scenario("faults")
    async with SimulatedPlant(sc, seed=2, speed=50, work_dir=tmp_path) as plant:
        assert plant.processes and len(plant.endpoints["opcua"]) == 2
        await plant.run_ticks(asyncio.Event(), max_ticks=10)
        truth = plant.write_truth(tmp_path / "truth")
        for url in plant.endpoints["opcua"]:
            async with Client(url) as c:
                ns = await c.get_namespace_index("urn:qctrace:sim")
                sites = await c.nodes.objects.get_children()
                names = [(await n.read_browse_name()).Name for n in sites if n.nodeid.NamespaceIndex == ns]
                assert names == ["plant2"]
    produced = plant.produced()
    # fill/plc: 4 tags and the seal temperature's setpoint tag, 10 ticks; cap/plc: 2 tags
    assert produced["plant2/fill/plc"] == 50 and produced["plant2/cap/plc"] == 20
    assert truth["readings"].exists()

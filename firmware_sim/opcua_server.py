"""A line PLC as a real asyncua OPC UA server on TCP.

Address space (ISA-95 shaped, browse names in namespace ``urn:qctrace:sim``)::

    Objects/
      <site>/                 Object
        <line>/               Object
          Lot                 String  (the lot in production; changes at changeovers)
          <device>/           Object  (the PLC or one of its I/O stations)
            <tag>             Double  with properties EngineeringUnits (EUInformation) and EURange (Range)

NodeIds are strings ``<site>/<line>/<device>/<tag>`` and ``<site>/<line>/Lot``, so a tag's NodeId
and its browse path say the same thing. Every value carries its simulated source timestamp and
the status code a real PLC would give it: ``Good``, ``Bad_SensorFailure`` (a broken sensor),
``Bad_NotConnected`` (an I/O station lost), ``Bad_WaitingForInitialData`` before the first sample.

Endpoints: no security, and with ``encrypted`` Basic256Sha256, Aes128_Sha256_RsaOaep and
Aes256_Sha256_RsaPss in Sign and SignAndEncrypt, with a self-signed certificate made on first
start (kept in ``cert_dir``; ``publish_dir`` gets a copy of the certificate alone, for a client's
trust list); optionally username/password (then anonymous logins are refused).

Like a real PLC, the server enforces what it advertises: the OperationLimits under
``Server/ServerCapabilities`` (a Read of more than MaxNodesPerRead nodes is refused with
``BadTooManyOperations``; ``read_sizes`` keeps the size of every Read it served), and it keeps
an in-memory history of each tag (``history`` samples, bounded per server), so a client can read back an outage with
HistoryRead. A restarted server starts with an empty history, as a PLC whose history lives in RAM.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from asyncua import Server, ua
from asyncua.common.callback import CallbackType
from asyncua.crypto.cert_gen import setup_self_signed_certificate
from asyncua.server.history import HistoryDict
from asyncua.server.monitored_item_service import MonitoredItemValues
from asyncua.server.user_managers import UserManager
from cryptography.x509.oid import ExtendedKeyUsageOID

from firmware_sim.scenario import Stream

log = logging.getLogger(__name__)
NAMESPACE_URI = "urn:qctrace:sim"


def _keep_datavalue_uncopied(self: MonitoredItemValues, cur_val: ua.DataValue) -> None:
    self.old_dvalue = self.current_dvalue
    self.current_dvalue = cur_val


def share_written_datavalues() -> None:
    """Let asyncua's monitored items keep the DataValue a write gave them instead of a deep copy.

    asyncua deep-copies every written value once per monitored item, in case the writer mutates
    it later. The simulator never does: each sample is a new DataValue. That copy was a third of a
    line PLC process's CPU (py-spy, 1,000 tags at 1 Hz), and the simulated PLCs share this
    machine's two cores with the pipeline they feed, where real PLCs bring CPUs of their own:
    every core-second the test rig burns is one the pipeline under test does not get. Applied
    only in the simulator's processes (``LinePlcServer.start``); the edge, a client, never has
    monitored items of its own."""
    MonitoredItemValues.set_current_datavalue = _keep_datavalue_uncopied


# The Unit of the UNECE table used by EUInformation.UnitId, for the units our scenarios use.
_UNECE = {"g": ("GRM", "gram"), "degC": ("CEL", "degree Celsius"), "N.m": ("NU", "newton metre"),
          "bar": ("BAR", "bar"), "units/min": ("C62", "one"), "%RH": ("P1", "percent"), "V": ("VLT", "volt"),
          "": ("C62", "one")}


def _unit_id(code: str) -> int:
    """EUInformation.UnitId: the UNECE common code packed into an Int32 (OPC UA Part 8, 5.6.3)."""
    v = 0
    for ch in code.ljust(3)[:3]:
        v = (v << 8) | ord(ch)
    return v


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (asyncua cannot report the port it bound to 0)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def ns_to_datetime(ns: int) -> datetime:
    return datetime.fromtimestamp(ns // 1_000_000_000, UTC).replace(microsecond=(ns % 1_000_000_000) // 1000)


@dataclass(frozen=True, slots=True)
class ServerSecurity:
    """Which endpoints to offer. ``cert_dir`` holds the server's generated key and certificate."""

    encrypted: bool = False
    allow_none: bool = True
    cert_dir: Path | None = None
    users: tuple[tuple[str, str], ...] = ()
    publish_dir: Path | None = None  # also write the certificate (never the key) here


_SECURE_POLICIES = (ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt, ua.SecurityPolicyType.Basic256Sha256_Sign,
                    ua.SecurityPolicyType.Aes128Sha256RsaOaep_SignAndEncrypt,
                    ua.SecurityPolicyType.Aes128Sha256RsaOaep_Sign,
                    ua.SecurityPolicyType.Aes256Sha256RsaPss_SignAndEncrypt,
                    ua.SecurityPolicyType.Aes256Sha256RsaPss_Sign)


class _RamHistory(HistoryDict):
    """The last ``count`` samples of each tag, kept as the PLC writes them (a bounded deque each),
    served by asyncua's HistoryRead service. asyncua's own ``historize_node_data_change`` would
    feed it through an internal subscription, one asyncio task per value: at 1,000 writes/s per
    server that is most of the history's cost, and it also stores the "no value yet" placeholder,
    which has no source time and breaks asyncua's time-range reads."""

    def __init__(self, count: int) -> None:
        super().__init__()
        self.count = count

    def track(self, node_id: ua.NodeId) -> None:
        self._datachanges[node_id] = deque(maxlen=self.count)

    def keep(self, node_id: ua.NodeId, dv: ua.DataValue) -> None:
        self._datachanges[node_id].append(dv)


class _Passwords(UserManager):
    def __init__(self, users: dict[str, str]) -> None:
        self._users = users

    def get_user(self, iserver, username=None, password=None, certificate=None):
        from asyncua.crypto.permission_rules import User, UserRole

        if username is not None and self._users.get(username) == password:
            return User(role=UserRole.User, name=username)
        return None


class LinePlcServer:
    """One asyncua server exposing the given tags; values pushed with ``write``. Restartable."""

    def __init__(self, streams: list[Stream], host: str, port: int, security: ServerSecurity | None = None,
                 max_nodes_per_call: int = 1000, history: int = 600, history_budget: int = 60_000) -> None:
        self.streams = [s for s in streams if s.kind == "opcua"]
        self.host = host
        self.port = port or free_port(host)
        self.endpoint = f"opc.tcp://{host}:{self.port}/qctrace/"
        self.security = security or ServerSecurity()
        self.max_nodes_per_call = max_nodes_per_call
        # Samples kept per tag: ``history``, but at most ``history_budget`` per server in all, as a
        # PLC's RAM bounds it (4 tags keep 10 minutes at 1 Hz, 1,000 tags one minute).
        self.history = min(history, max(10, history_budget // max(1, len(self.streams)))) if history else 0
        self.read_sizes: list[int] = []
        self._ram: _RamHistory | None = None
        self.create_sizes: list[int] = []  # monitored items per CreateMonitoredItems call
        self._server: Server | None = None
        self._tag_nodes: dict[int, ua.NodeId] = {}
        self._lot_nodes: dict[str, ua.NodeId] = {}
        self._last_lot: dict[str, tuple[str, int]] = {}
        self.running = False

    async def start(self) -> None:
        share_written_datavalues()
        sec = self.security
        users = dict(sec.users)
        srv = Server(user_manager=_Passwords(users) if users else None)
        await srv.init()
        srv.set_endpoint(self.endpoint)
        srv.set_server_name("qctrace simulated line PLC")
        await srv.set_application_uri(f"urn:qctrace:sim:plc:{self.port}")
        policies = []
        if sec.allow_none:
            policies.append(ua.SecurityPolicyType.NoSecurity)
        if sec.encrypted:
            assert sec.cert_dir is not None, "an encrypted endpoint needs cert_dir"
            sec.cert_dir.mkdir(parents=True, exist_ok=True)
            # One key per port: line servers started as parallel processes never race on one file.
            key, cert = sec.cert_dir / f"server-{self.port}-key.pem", sec.cert_dir / f"server-{self.port}-cert.der"
            await setup_self_signed_certificate(key, cert, f"urn:qctrace:sim:plc:{self.port}", socket.gethostname(),
                                                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
                                                {"commonName": "qctrace simulated PLC", "organizationName": "qctrace"})
            key.chmod(0o600)
            await srv.load_certificate(str(cert))
            await srv.load_private_key(str(key))
            policies.extend(_SECURE_POLICIES)
            if sec.publish_dir is not None:
                from qctrace.durable import atomic_write

                sec.publish_dir.mkdir(parents=True, exist_ok=True)
                atomic_write(sec.publish_dir / cert.name, cert.read_bytes())
        srv.set_security_policy(policies)
        if users:
            srv.set_security_IDs(["Username"])
        await self._advertise_limits(srv)
        srv.subscribe_server_callback(CallbackType.PreRead, self._check_read)
        self._limit_create_monitored_items(srv)
        await self._build(srv)
        await srv.start()
        self._ram = None
        if self.history:
            self._ram = _RamHistory(self.history)
            srv.iserver.history_manager.set_storage(self._ram)
            for nid in self._tag_nodes.values():
                node = srv.get_node(nid)
                await node.write_attribute(ua.AttributeIds.Historizing, ua.DataValue(True))
                await node.set_attr_bit(ua.AttributeIds.AccessLevel, ua.AccessLevel.HistoryRead)
                await node.set_attr_bit(ua.AttributeIds.UserAccessLevel, ua.AccessLevel.HistoryRead)
                self._ram.track(nid)
        self._server = srv
        self.running = True
        for line, (lot, ts) in self._last_lot.items():  # a restarted PLC still knows its lot
            await self.write_lot(line, lot, ts)
        log.info("opcua.start endpoint=%s tags=%d", self.endpoint, len(self._tag_nodes))

    def _check_read(self, event, _dispatcher) -> None:
        """Refuse a Read above MaxNodesPerRead, as the advertised limit says a server may."""
        n = len(event.request_params.NodesToRead or ())
        self.read_sizes.append(n)
        if self.max_nodes_per_call and n > self.max_nodes_per_call:
            raise ua.UaStatusCodeError(ua.StatusCodes.BadTooManyOperations)

    def _limit_create_monitored_items(self, srv: Server) -> None:
        """Refuse a CreateMonitoredItems call above MaxMonitoredItemsPerCall (asyncua has no hook for it)."""
        service = srv.iserver.subscription_service
        create = service.create_monitored_items

        async def limited(params: ua.CreateMonitoredItemsParameters) -> list[ua.MonitoredItemCreateResult]:
            n = len(params.ItemsToCreate or ())
            self.create_sizes.append(n)
            if self.max_nodes_per_call and n > self.max_nodes_per_call:
                raise ua.UaStatusCodeError(ua.StatusCodes.BadTooManyOperations)
            return await create(params)

        service.create_monitored_items = limited

    async def _advertise_limits(self, srv: Server) -> None:
        limits = srv.get_node(ua.ObjectIds.Server_ServerCapabilities_OperationLimits)
        for child in await limits.get_children():
            name = (await child.read_browse_name()).Name
            if name.startswith("MaxNodesPer") or name == "MaxMonitoredItemsPerCall":  # all of them, one number
                await child.write_value(ua.Variant(self.max_nodes_per_call, ua.VariantType.UInt32))

    async def _build(self, srv: Server) -> None:
        ns = await srv.register_namespace(NAMESPACE_URI)
        objects: dict[str, object] = {}

        async def obj(path: str, parent, name: str):
            if path not in objects:
                objects[path] = await parent.add_object(ua.NodeId(path, ns), ua.QualifiedName(name, ns))
            return objects[path]

        self._tag_nodes.clear()
        self._lot_nodes.clear()
        for s in self.streams:
            site = await obj(s.site, srv.nodes.objects, s.site)
            line = await obj(s.line_key, site, s.line)
            if s.line_key not in self._lot_nodes:
                lot = await line.add_variable(ua.NodeId(f"{s.line_key}/Lot", ns), ua.QualifiedName("Lot", ns), "",
                                              ua.VariantType.String)
                self._lot_nodes[s.line_key] = lot.nodeid
            dev = await obj(s.source, line, s.device)
            var = await dev.add_variable(ua.NodeId(s.key, ns), ua.QualifiedName(s.sensor, ns), 0.0,
                                         ua.VariantType.Double)
            code, name = _UNECE.get(s.unit, ("C62", s.unit))
            await var.add_property(ua.NodeId(f"{s.key}/EngineeringUnits", ns),
                                   ua.QualifiedName("EngineeringUnits", 0),
                                   ua.EUInformation(NamespaceUri="http://www.opcfoundation.org/UA/units/un/cefact",
                                                    UnitId=_unit_id(code), DisplayName=ua.LocalizedText(s.unit),
                                                    Description=ua.LocalizedText(name)),
                                   datatype=ua.NodeId(ua.ObjectIds.EUInformation))
            await var.add_property(ua.NodeId(f"{s.key}/EURange", ns), ua.QualifiedName("EURange", 0),
                                   ua.Range(Low=s.eu_low, High=s.eu_high), datatype=ua.NodeId(ua.ObjectIds.Range))
            # Until the first sample a real PLC reports "no value yet", not a made-up 0.0.
            await srv.write_attribute_value(var.nodeid, ua.DataValue(
                ua.Variant(0.0, ua.VariantType.Double),
                StatusCode=ua.StatusCode(ua.StatusCodes.BadWaitingForInitialData)))
            self._tag_nodes[s.index] = var.nodeid

    def current_lot(self, line_key: str) -> str | None:
        return self._last_lot.get(line_key, (None, 0))[0]

    async def write_lot(self, line_key: str, lot: str, ts_ns: int) -> None:
        self._last_lot[line_key] = (lot, ts_ns)
        if not self.running:
            return
        await self._server.write_attribute_value(
            self._lot_nodes[line_key],
            ua.DataValue(ua.Variant(lot, ua.VariantType.String), SourceTimestamp=ns_to_datetime(ts_ns),
                         ServerTimestamp=datetime.now(UTC)),
        )

    async def write(self, stream_index: int, value: float, status: int, ts_ns: int) -> None:
        code = ua.StatusCode(status)
        nid = self._tag_nodes[stream_index]
        dv = ua.DataValue(ua.Variant(0.0 if value != value else value, ua.VariantType.Double), StatusCode=code,
                          SourceTimestamp=ns_to_datetime(ts_ns), ServerTimestamp=datetime.now(UTC))
        await self._server.write_attribute_value(nid, dv)
        if self._ram is not None:
            self._ram.keep(nid, dv)

    async def stop(self) -> None:
        """Stop as a PLC powering off: the listener first, then every open connection.

        asyncua's stop closes the open connections, then the listener, then waits until no
        connection is left; a client reconnecting in between (the edge retries at once) got a
        connection nobody closed, and that wait never ended (a campaign's PLC restart hung the
        simulator). So the listener goes first, and whatever is still open after a few seconds is
        aborted."""
        if self._server is None or not self.running:
            return
        self.running = False
        listener = getattr(self._server.bserver, "_server", None)
        if listener is not None:
            listener.close()
        stopping = asyncio.ensure_future(self._server.stop())
        done, _ = await asyncio.wait({stopping}, timeout=5.0)
        if not done:
            open_ = list(self._server.iserver.asyncio_transports)
            log.warning("opcua.stop_slow endpoint=%s aborting %d connection(s)", self.endpoint, len(open_))
            for t in open_:
                t.abort()
            await stopping

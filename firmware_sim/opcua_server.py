"""A line PLC as a real asyncua OPC UA server on loopback TCP.

Address space (ISA-95 shaped, browse names in namespace ``urn:qctrace:sim``)::

    Objects/
      <site>/                 Object
        <line>/               Object
          Lot                 String  (the lot in production; changes at changeovers)
          <device>/           Object  (the PLC)
            <tag>             Double  (EngineeringUnits in the description for now)

NodeIds are strings ``<site>/<line>/<device>/<tag>`` and ``<site>/<line>/Lot`` so a tag's NodeId
and its browse path say the same thing. Every value carries its simulated source timestamp.
"""

from __future__ import annotations

import logging
import socket
from datetime import UTC, datetime

from asyncua import Server, ua

from firmware_sim.scenario import Scenario, Stream

log = logging.getLogger(__name__)
NAMESPACE_URI = "urn:qctrace:sim"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (asyncua cannot report the port it bound to 0)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def ns_to_datetime(ns: int) -> datetime:
    return datetime.fromtimestamp(ns // 1_000_000_000, UTC).replace(microsecond=(ns % 1_000_000_000) // 1000)


class LinePlcServer:
    """One asyncua server exposing the lines of a scenario; values pushed with ``write``."""

    def __init__(self, scenario: Scenario, streams: list[Stream], host: str, port: int) -> None:
        self.scenario = scenario
        self.streams = [s for s in streams if s.kind == "opcua"]
        self.port = port or free_port(host)
        self.endpoint = f"opc.tcp://{host}:{self.port}/qctrace/"
        self._server = Server()
        self._ns = 0
        self._tag_nodes: dict[int, ua.NodeId] = {}
        self._lot_nodes: dict[str, ua.NodeId] = {}

    async def start(self) -> None:
        srv = self._server
        await srv.init()
        srv.set_endpoint(self.endpoint)
        srv.set_server_name("qctrace simulated line PLC")
        # No security in the walking skeleton; Basic256Sha256 endpoints come with the secure reader.
        srv.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        self._ns = ns = await srv.register_namespace(NAMESPACE_URI)
        site_name = self.scenario.plant.site
        site = await srv.nodes.objects.add_object(ua.NodeId(site_name, ns), ua.QualifiedName(site_name, ns))
        for line in self.scenario.lines:
            lpath = f"{site_name}/{line.name}"
            lnode = await site.add_object(ua.NodeId(lpath, ns), ua.QualifiedName(line.name, ns))
            lot = await lnode.add_variable(ua.NodeId(f"{lpath}/Lot", ns), ua.QualifiedName("Lot", ns), "",
                                           ua.VariantType.String)
            self._lot_nodes[line.name] = lot.nodeid
            dnode = await lnode.add_object(ua.NodeId(f"{lpath}/{line.device}", ns),
                                           ua.QualifiedName(line.device, ns))
            for s in self.streams:
                if s.line != line.name:
                    continue
                var = await dnode.add_variable(ua.NodeId(s.key, ns), ua.QualifiedName(s.sensor, ns), 0.0,
                                               ua.VariantType.Double)
                # Until the first sample a real PLC reports "no value yet", not a made-up 0.0.
                await srv.write_attribute_value(var.nodeid, ua.DataValue(
                    ua.Variant(0.0, ua.VariantType.Double),
                    StatusCode=ua.StatusCode(ua.StatusCodes.BadWaitingForInitialData)))
                await var.write_attribute(ua.AttributeIds.Description,
                                          ua.DataValue(ua.Variant(ua.LocalizedText(f"unit={s.unit}"))))
                self._tag_nodes[s.index] = var.nodeid
        await srv.start()
        log.info("opcua.start endpoint=%s tags=%d", self.endpoint, len(self._tag_nodes))

    async def write_lot(self, line: str, lot: str, ts_ns: int) -> None:
        await self._server.write_attribute_value(
            self._lot_nodes[line],
            ua.DataValue(ua.Variant(lot, ua.VariantType.String), SourceTimestamp=ns_to_datetime(ts_ns),
                         ServerTimestamp=datetime.now(UTC)),
        )

    async def write(self, stream_index: int, value: float, ts_ns: int) -> None:
        await self._server.write_attribute_value(
            self._tag_nodes[stream_index],
            ua.DataValue(ua.Variant(value, ua.VariantType.Double), SourceTimestamp=ns_to_datetime(ts_ns),
                         ServerTimestamp=datetime.now(UTC)),
        )

    async def stop(self) -> None:
        await self._server.stop()

"""A hostile OPC UA server for the reader tests: a real asyncua PLC whose tag can turn hostile, behind
a real TCP front that lies in its handshake and can flood the connection with malformed chunks.

The patterns are those of the asyncua/python-opcua denial-of-service advisories: CVE-2022-25304
(no limit on received chunks: an endless stream of intermediate chunks, or one chunk claiming a
huge size, exhausts memory) and CVE-2023-26151 (a malformed packet, e.g. a chunk size of 0, sent
the receiver into an endless loop; the chunk guard's own tests cover that header), plus values
built to hurt the decoder (huge strings and arrays, ExtensionObjects nested thousands deep, an
array whose length prefix lies).

- ``HostilePlc`` is the simulator's ``LinePlcServer`` (one line, one tag) with ``poison(variant)``:
  the tag's next value is whatever Variant the test hands it, encoded by asyncua itself, so the
  reader receives it in a genuine publish response.
- ``HostileFront`` relays a client to that PLC and (1) rewrites the handshake both ways: the
  client's Hello asks the PLC for no limits (so it sends any size), and the PLC's Acknowledge
  announces none (MaxMessageSize 0, MaxChunkCount 0, 2 GiB buffers), so only limits the client
  keeps for itself can hold; (2) once ``arm``-ed, after the next message chunk of
  the server sends ``endless_chunks`` (intermediate 'C' chunks that never end with 'F') or
  ``absurd_chunk`` (a header claiming ~4 GiB, then junk), until the client hangs up.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from datetime import UTC, datetime

from asyncua import ua

from firmware_sim.opcua_server import LinePlcServer, free_port, ns_to_datetime
from firmware_sim.scenario import Stream

ROGUE_SOURCE = "rogue/l1/plc"
_LITERAL_OPERAND = ua.NodeId(ua.ObjectIds.LiteralOperand_Encoding_DefaultBinary)
_ATTACK_CAP_BYTES = 64 << 20  # a flood the client never cut off stops here (the test then fails)


class HostilePlc(LinePlcServer):
    """One line ``rogue/l1`` with one Double tag ``plc/t``; ``tick`` writes an honest sample."""

    def __init__(self) -> None:
        tag = Stream(index=0, site="rogue", line="l1", device="plc", sensor="t", unit="degC", nominal=20.0,
                     noise=0.1, decimals=2, kind="opcua", eu_low=-50.0, eu_high=150.0)
        super().__init__([tag], "127.0.0.1", free_port(), history=0)
        self.ticks = 0

    async def start(self) -> None:
        await super().start()
        # DataType Number: asyncua then checks a value only against the one stored before it.
        await self._server.write_attribute_value(self._tag_nodes[0], ua.DataValue(ua.NodeId(ua.ObjectIds.Number)),
                                                 ua.AttributeIds.DataType)

    async def tick(self) -> None:
        self.ticks += 1
        await self._force(ua.Variant(20.0 + (self.ticks % 10) / 10, ua.VariantType.Double))

    async def poison(self, value: ua.Variant) -> None:
        """The tag's next value is ``value``, Good and freshly stamped, whatever it holds."""
        await self._force(value)

    async def _force(self, value: ua.Variant) -> None:
        # asyncua refuses a write whose Variant type differs from the stored one, unless the stored
        # value is empty. A rogue PLC is not so polite: empty it first with "no value yet" (which
        # the reader skips, so it adds no reading of its own).
        nid, aspace = self._tag_nodes[0], self._server.iserver.aspace
        stored = self._server.read_attribute_value(nid).Value
        if stored is not None and stored.VariantType != value.VariantType:
            empty = ua.DataValue(StatusCode=ua.StatusCode(ua.StatusCodes.BadWaitingForInitialData))
            (await aspace.write_attribute_value(nid, ua.AttributeIds.Value, empty)).check()
        (await aspace.write_attribute_value(nid, ua.AttributeIds.Value, ua.DataValue(
            value, SourceTimestamp=ns_to_datetime(time.time_ns()), ServerTimestamp=datetime.now(UTC)))).check()


def huge_string(n_bytes: int) -> ua.Variant:
    return ua.Variant("x" * n_bytes, ua.VariantType.String)


def huge_array(n_doubles: int) -> ua.Variant:
    return ua.Variant([1.0] * n_doubles, ua.VariantType.Double)


def _extension_object(body: bytes) -> bytes:
    """A Variant holding an ExtensionObject (a LiteralOperand, whose one field is a Variant)."""
    return b"\x16" + b"\x01\x00" + struct.pack("<H", _LITERAL_OPERAND.Identifier) + b"\x01" + \
        struct.pack("<i", len(body)) + body


def nested_extension_objects(depth: int) -> ua.Variant:
    """``depth`` LiteralOperands each holding the next one: the decoder recurses once per level."""
    inner = b"\x00"  # the innermost Variant: Null
    for _ in range(depth - 1):
        inner = _extension_object(inner)
    return ua.Variant(ua.ExtensionObject(TypeId=_LITERAL_OPERAND, Body=inner))


def lying_array() -> ua.Variant:
    """A LiteralOperand whose Variant says 2^31-1 Doubles follow, then holds one."""
    body = b"\x8b" + struct.pack("<i", 2**31 - 1) + struct.pack("<d", 1.0)
    return ua.Variant(ua.ExtensionObject(TypeId=_LITERAL_OPERAND, Body=body))


class HostileFront:
    """A TCP front of ``target_port`` that lies in the Acknowledge and floods when armed."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._armed: str | None = None
        self._conns: set[asyncio.Task] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.acks_rewritten = 0
        self.attacks: list[tuple[str, int]] = []  # (attack, bytes sent before the client hung up)

    @property
    def url(self) -> str:
        return f"opc.tcp://127.0.0.1:{self.port}/qctrace/"

    def arm(self, attack: str) -> None:
        assert attack in ("endless_chunks", "absurd_chunk"), attack
        self._armed = attack

    async def __aenter__(self) -> HostileFront:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, reuse_address=True)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for w in list(self._writers):
            w.transport.abort()
        await asyncio.gather(*self._conns, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        try:
            sr, sw = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            cw.transport.abort()
            return
        self._writers |= {cw, sw}
        up = asyncio.create_task(self._pipe_up(cr, sw))
        try:
            await self._pipe_down(sr, cw)
        finally:
            up.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await up
            sw.transport.abort()
            cw.transport.abort()
            self._writers -= {cw, sw}
            self._conns.discard(task)

    @staticmethod
    async def _pipe_up(cr: asyncio.StreamReader, sw: asyncio.StreamWriter) -> None:
        """Client to server; the client's Hello is rewritten to ask for no limits, so the PLC sends
        whatever it is asked for however large."""
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            head = await cr.readexactly(8)
            hello = bytearray(head + await cr.readexactly(struct.unpack_from("<I", head, 4)[0] - 8))
            if hello[:3] == b"HEL":
                struct.pack_into("<II", hello, 20, 0, 0)  # MaxMessageSize, MaxChunkCount
            sw.write(hello)
            while data := await cr.read(65536):
                sw.write(data)
                await sw.drain()
        sw.transport.abort()

    async def _pipe_down(self, sr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        """Server to client, chunk by chunk (so the front knows the ids an injected chunk needs)."""
        ids = None  # channel, token, sequence number, request id of the server's last MSG chunk
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while True:
                head = await sr.readexactly(8)
                size = struct.unpack_from("<I", head, 4)[0]
                chunk = head + await sr.readexactly(size - 8)
                if chunk[:3] == b"ACK":
                    # ProtocolVersion, then "no limits": 2 GiB buffers, message size and chunk count 0.
                    chunk = chunk[:12] + struct.pack("<IIII", 0x7FFFFFFF, 0x7FFFFFFF, 0, 0)
                    self.acks_rewritten += 1
                elif chunk[:3] == b"MSG":
                    ids = struct.unpack_from("<IIII", chunk, 8)
                cw.write(chunk)
                await cw.drain()
                if self._armed and ids is not None:
                    attack, self._armed = self._armed, None
                    sent = await self._flood(cw, attack, ids)
                    self.attacks.append((attack, sent))
                    return

    @staticmethod
    async def _flood(cw: asyncio.StreamWriter, attack: str, ids: tuple[int, int, int, int]) -> int:
        channel, token, seq, request = ids
        sent = 0
        try:
            if attack == "absurd_chunk":
                header = b"MSGF" + struct.pack("<II", 0xFFFFFF00, channel)
                cw.write(header)
                sent += len(header)
            while sent < _ATTACK_CAP_BYTES and not cw.is_closing():
                if attack == "endless_chunks":
                    seq += 1
                    body = bytes(8192)
                    block = b"MSGC" + struct.pack("<IIIII", 24 + len(body), channel, token, seq, request + 1) + body
                else:
                    block = b"\xa5" * 65536
                cw.write(block)
                sent += len(block)
                await cw.drain()
                await asyncio.sleep(0)  # the reader shares this loop: let it read what was sent
        except (ConnectionError, OSError):
            pass
        return sent

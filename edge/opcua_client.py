"""The asyncua client as the reader needs it: bounded transport, jittered reconnect, a resume hook.

asyncua 2.1 keeps the limits a client announces in its Hello (max message size, max chunk count)
but does not enforce them on what it receives (its receive side is built with 0 = unlimited), and
where it does check, the server's Acknowledge can lift the limits. So every connection's received
bytes first pass ``edge.opcua_guard.ChunkGuard`` with the configured limits: a chunk or message
above them, or a malformed chunk header, closes the connection before asyncua buffers it, and a
publish or read response asyncua cannot decode (ExtensionObjects nested past the recursion limit,
an array whose length prefix lies) closes it too, instead of being dropped in silence. Either way
the reason (what the server sent, which limit) is kept for the reader (``take_refusal``), whose
outage gap then says it, and ``refusals`` and the peak bytes buffered are counted.

asyncua's reconnect supervisor is kept (it detects dead-but-open connections, re-activates the
session when the server still has it), but its fixed doubling is replaced by our capped backoff
with jitter, so readers that lost the same PLC do not retry in lockstep, and after each
successful reconnect ``on_reconnected`` runs so the reader can re-create its subscription and
backfill the outage.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import re
import struct
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from asyncua import Client, ua
from asyncua.client import client as _asyncua_client
from asyncua.client.ua_client import UASocketProtocol
from asyncua.common.connection import TransportLimits
from asyncua.common.utils import NotEnoughData
from asyncua.ua.uaerrors import (
    BadCertificateInvalid,
    BadCertificateUntrusted,
    BadSecurityChecksFailed,
    BadSecurityPolicyRejected,
    UaStructParsingError,
)

from edge.opcua_guard import ChunkGuard

log = logging.getLogger(__name__)

_PASSWORD = re.compile(r"Password=.*?, EncryptionAlgorithm", re.S)


class _RedactPasswords(logging.Filter):
    """asyncua logs every request at DEBUG, ActivateSession's user token (and its password) included."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if "Password=" in text:
            record.msg, record.args = _PASSWORD.sub("Password=<redacted>, EncryptionAlgorithm", text), ()
        return True


for _name in ("asyncua.client.ua_client.UASocketProtocol", "asyncua.client.ua_client.UaClient",
              "asyncua.client.client", "asyncua.client.ua_session"):
    logging.getLogger(_name).addFilter(_RedactPasswords())

# asyncua's receive buffer per chunk (its default); message and chunk-count limits are ours.
_CHUNK_BYTES = 65535
# What decoding a response can raise besides a status (asyncua's publish loop wraps them all in
# UaStructParsingError; its read lets them through).
_UNDECODABLE = (UaStructParsingError, NotEnoughData, RecursionError, ValueError, struct.error)


class BoundedClient(Client):
    """An asyncua ``Client`` with enforced transport limits and jittered reconnect backoff."""

    def __init__(self, url: str, *, timeout_s: float, max_message_size: int, max_chunk_count: int,
                 backoff: Callable[[], Iterator[float]],
                 on_reconnected: Callable[[bool], Awaitable[None]] | None = None) -> None:
        # A busy PLC may take more than asyncua's default 1 s to answer the health probe; that is
        # not a dead connection, so probe on a slower cycle with the request timeout as its bound.
        super().__init__(url, timeout=timeout_s, watchdog_intervall=timeout_s,
                         reconnect_request_timeout=max(timeout_s, 5.0))
        self.max_messagesize = max_message_size
        self.max_chunkcount = max_chunk_count
        self.limits = TransportLimits(_CHUNK_BYTES, _CHUNK_BYTES, max_chunk_count, max_message_size)
        self._backoff = backoff
        self.on_reconnected = on_reconnected
        self.reconnects = 0
        self.refusals = 0
        self.peak_chunk_bytes = 0  # the most asyncua held of one incomplete chunk
        self.peak_message_bytes = 0  # the most it held of one incomplete message (between reads)
        self._refusal: str | None = None
        make_protocol = self.uaclient._make_protocol

        def bounded_protocol() -> UASocketProtocol:
            proto = make_protocol()
            proto._connection._limits = copy.deepcopy(self.limits)
            guard = ChunkGuard(_CHUNK_BYTES, max_message_size, max_chunk_count)
            proto.data_received = lambda data: self._receive(proto, guard, data)
            return proto

        self.uaclient._make_protocol = bounded_protocol
        session = self.uaclient.session  # one per client, kept across reconnects
        session.publish = self._decoded(session.publish, "publish")
        session.read = self._decoded(session.read, "read")

    def take_refusal(self) -> str | None:
        """Why the last connection was closed by the reader, once (None if it was not)."""
        why, self._refusal = self._refusal, None
        return why

    def _receive(self, proto: UASocketProtocol, guard: ChunkGuard, data: bytes) -> None:
        """``UASocketProtocol.data_received`` with every chunk header checked first."""
        if proto.receive_buffer:
            data = proto.receive_buffer + data
            proto.receive_buffer = None
        problem = guard.check(data)
        if problem is not None:
            self._refuse(proto, problem, ua.StatusCodes.BadTcpMessageTooLarge)
            return
        proto._process_received_data(data)
        self.peak_chunk_bytes = max(self.peak_chunk_bytes, len(proto.receive_buffer or b""))
        self.peak_message_bytes = max(self.peak_message_bytes, proto._connection._incoming_size)

    def _refuse(self, proto: UASocketProtocol | None, what: str, code: int) -> ua.UaStatusCodeError:
        """Close the connection over ``what`` the server sent; waiting requests fail with ``code``."""
        self.refusals += 1
        self._refusal = f"the server sent {what}; the reader closed the connection"
        log.warning("opcua.refused endpoint=%s reason=%r", self.server_url.geturl(), self._refusal)
        exc = ua.UaStatusCodeError(code)
        if proto is not None:
            proto.receive_buffer = None
            proto._connection._drop_incoming_parts()
            proto._fail_all_pending(exc)
            proto.disconnect_socket()
        return exc

    def _decoded(self, call: Callable[..., Awaitable[Any]], service: str) -> Callable[..., Awaitable[Any]]:
        """``call`` (a session service), closing the connection when its response cannot be decoded:
        a response lost without a word would leave a gap no one records."""

        async def decoded(*args: Any) -> Any:
            try:
                return await call(*args)
            except _UNDECODABLE as exc:
                wrapped = isinstance(exc, UaStructParsingError)
                refusal = self._refuse(self.uaclient.protocol, f"a {service} response the reader cannot decode"
                                       f" ({(exc.__cause__ if wrapped else None) or exc!r})",
                                       ua.StatusCodes.BadDecodingError)
                if wrapped:
                    raise  # asyncua's publish loop goes on with the next publish (after the reconnect)
                raise refusal from exc

        return decoded

    async def _reconnect_with_backoff(self) -> bool:
        """asyncua's reconnect loop (same steps) with our delays, then the reader's resume hook."""
        token = _asyncua_client._supervisor_owns_requests.set(True)
        try:
            delays = self._backoff()
            while not self.uaclient.is_disconnect_requested:
                await self._teardown_transport_only()
                try:
                    reused = await self._try_reactivate_existing_session()
                except (BadCertificateInvalid, BadCertificateUntrusted, BadSecurityChecksFailed,
                        BadSecurityPolicyRejected) as exc:
                    log.warning("opcua.reconnect security_error=%r", exc)
                    await self._refresh_endpoints_quiet()
                except (OSError, TimeoutError, ua.UaError, ConnectionError) as exc:
                    delay = next(delays)
                    log.info("opcua.reconnect failed=%r retry_in_s=%.2f", exc, delay)
                    self.uaclient.enter_reconnecting()
                    await asyncio.sleep(delay)
                    continue
                else:
                    await self._finalize_reconnect(reused)
                    self.reconnects += 1
                    if self.on_reconnected is not None:
                        try:
                            await self.on_reconnected(reused)
                        except (OSError, TimeoutError, ua.UaError, ConnectionError) as exc:
                            # The new connection broke while resuming: go round again.
                            log.warning("opcua.resume failed=%r", exc)
                            self.uaclient.enter_reconnecting()
                            await asyncio.sleep(next(delays))
                            continue
                    return True
                self.uaclient.enter_reconnecting()
                await asyncio.sleep(next(delays))
            return False
        finally:
            _asyncua_client._supervisor_owns_requests.reset(token)

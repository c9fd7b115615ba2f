"""The asyncua client as the reader needs it: bounded transport, jittered reconnect, a resume hook.

asyncua 2.1 keeps the limits a client announces in its Hello (max message size, max chunk count)
but does not enforce them on what it receives (its receive side is built with 0 = unlimited), so
a hostile or broken server could make the reader buffer any amount of memory. Here the receive
side of every connection enforces the configured limits: a larger message is dropped with
``BadRequestTooLarge`` before it is assembled.

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
from collections.abc import Awaitable, Callable, Iterator

from asyncua import Client, ua
from asyncua.client import client as _asyncua_client
from asyncua.common.connection import TransportLimits
from asyncua.ua.uaerrors import (
    BadCertificateInvalid,
    BadCertificateUntrusted,
    BadSecurityChecksFailed,
    BadSecurityPolicyRejected,
)

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
        make_protocol = self.uaclient._make_protocol

        def bounded_protocol():
            proto = make_protocol()
            proto._connection._limits = copy.deepcopy(self.limits)  # enforced on every received chunk
            return proto

        self.uaclient._make_protocol = bounded_protocol

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

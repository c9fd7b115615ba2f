"""The in-process link: edge and ingest in one process (the default, and what `make demo` runs).

It carries the same payload bytes as MQTT (``qctrace.wire``), so the demo exercises the spool,
the codec and commit acknowledgements exactly as the distributed deployment does. The queue is
bounded: a slow ingest slows the forwarder, and the spool (not memory) absorbs the difference.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from edge.forward import Link


class InProcessLink(Link):
    _CLOSED = b""

    def __init__(self, max_payloads: int = 256) -> None:
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=max_payloads)
        self._closed = False
        self.payloads_sent = 0

    async def send(self, payload: bytes, topic_hint: str) -> None:
        if self._closed:
            raise RuntimeError("send on a closed link")
        await self._queue.put(payload)
        self.payloads_sent += 1

    def ack(self, node: str, rids: list[int]) -> None:
        """Ingest's commit acknowledgement, straight back to the forwarder."""
        if self.on_ack is not None:
            self.on_ack(rids)

    async def receive(self) -> AsyncIterator[bytes]:
        while True:
            payload = await self._queue.get()
            if payload is self._CLOSED:
                return
            yield payload

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self._queue.put(self._CLOSED)

    def depth(self) -> int:
        return self._queue.qsize()

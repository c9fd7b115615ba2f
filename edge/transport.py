"""Transports carry reading batches from edge readers to ingest.

``Transport`` is the interface; ``InProcessTransport`` (asyncio queue, bounded so a slow ingest
slows the readers instead of growing memory) is the default that lets one command run the whole
pipeline. MQTT comes as a second implementation of the same interface.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import AsyncIterator

import pyarrow as pa

from qctrace.schema import Gap, check_batch

Item = pa.RecordBatch | Gap
"""What travels from edge to ingest: reading batches, and gap records between them."""


class Transport(abc.ABC):
    @abc.abstractmethod
    async def send(self, item: Item) -> None:
        """Hand a batch (or gap record) to the next hop; returns when it has accepted it."""

    @abc.abstractmethod
    def receive(self) -> AsyncIterator[Item]:
        """Items in the order they were sent, until the transport is closed and drained."""

    @abc.abstractmethod
    async def close(self) -> None:
        """No more sends; receivers finish after what is queued."""


class InProcessTransport(Transport):
    _CLOSED = object()

    def __init__(self, max_batches: int = 256) -> None:
        self._queue: asyncio.Queue = asyncio.Queue(maxsize=max_batches)
        self._closed = False
        self.batches_sent = 0

    async def send(self, item: Item) -> None:
        if self._closed:
            raise RuntimeError("send on a closed transport")
        if not isinstance(item, Gap):
            check_batch(item)
        await self._queue.put(item)
        self.batches_sent += 1

    async def receive(self) -> AsyncIterator[Item]:
        while True:
            item = await self._queue.get()
            if item is self._CLOSED:
                return
            yield item

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self._queue.put(self._CLOSED)

    def depth(self) -> int:
        return self._queue.qsize()

"""What every edge reader shares: an explicit lifecycle and the flush loop that publishes batches.

A reader is an async context manager (``NEW → OPEN → CLOSED``; reopening raises). Inside it,
``run(stop)`` reads until ``stop`` is set, publishing a batch whenever ``batch_max_rows`` readings
are waiting or the oldest has waited ``batch_max_age_s``. On every exit what is buffered is
published before the reader closes, so stopping a reader never drops a reading it accepted.
"""

from __future__ import annotations

import abc
import asyncio
import enum
import logging
import time
from collections.abc import Awaitable, Callable

import pyarrow as pa

from edge.batcher import BatchBuilder
from qctrace.schema import Gap, Outage

log = logging.getLogger(__name__)

Publish = Callable[[pa.RecordBatch | Gap | Outage], Awaitable[None]]


class ReaderState(enum.Enum):
    NEW = "new"
    OPEN = "open"
    CLOSED = "closed"


class Reader(abc.ABC):
    name: str = "reader"

    def __init__(self, builder: BatchBuilder, publish: Publish, batch_max_rows: int = 1000,
                 batch_max_age_s: float = 0.25) -> None:
        self.builder = builder
        self.publish = publish
        self.batch_max_rows = batch_max_rows
        self.batch_max_age_s = batch_max_age_s
        self.state = ReaderState.NEW
        self._wake = asyncio.Event()
        self.pending_gaps: list[Gap | Outage] = []  # published in order before the next batch
        self.gaps_sent = 0

    async def __aenter__(self) -> Reader:
        if self.state is not ReaderState.NEW:
            raise RuntimeError(f"{self.name}: a reader can be opened once (state={self.state.value})")
        await self._open()
        self.state = ReaderState.OPEN
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await asyncio.shield(self.flush())
        finally:
            self.state = ReaderState.CLOSED
            await asyncio.shield(self._close())

    @abc.abstractmethod
    async def _open(self) -> None: ...

    @abc.abstractmethod
    async def _close(self) -> None: ...

    async def _read_once(self) -> None:
        """Readers that pull (serial) read here; push readers (subscriptions) just wait."""
        try:
            await asyncio.wait_for(self._wake.wait(), self.batch_max_age_s / 2)
        except TimeoutError:
            pass
        self._wake.clear()

    def _added(self) -> None:
        """Called after appending readings: wakes the flush loop early when a batch is full."""
        if len(self.builder) >= self.batch_max_rows:
            self._wake.set()

    async def flush(self) -> None:
        batch = self.builder.build()
        if batch is not None:
            await self.publish(batch)
        while self.pending_gaps:
            item = self.pending_gaps.pop(0)
            await self.publish(item)
            self.gaps_sent += isinstance(item, Gap)

    async def run(self, stop: asyncio.Event) -> None:
        if self.state is not ReaderState.OPEN:
            raise RuntimeError(f"{self.name}: run() needs an open reader")
        while not stop.is_set():
            await self._read_once()
            b = self.builder
            if self.pending_gaps or len(b) >= self.batch_max_rows or (
                    len(b) and time.monotonic() - b.first_added >= self.batch_max_age_s):
                await self.flush()

"""Shared by the OPC UA reader tests: a reader against a real plant, run for some ticks, and a TCP
proxy whose link can be cut while the server behind it keeps running (a network outage)."""

from __future__ import annotations

import asyncio
import contextlib

import pyarrow as pa

from edge import BatchBuilder, OpcUaReader, SeqAllocator, StreamTable
from qctrace.schema import Gap, Outage


class Collected:
    """What a reader published: batches and gaps (``items``), and its word on outages (``outages``)."""

    def __init__(self) -> None:
        self.items: list = []
        self.outages: list[Outage] = []

    async def __call__(self, item) -> None:
        (self.outages if isinstance(item, Outage) else self.items).append(item)

    @property
    def gaps(self) -> list[Gap]:
        return [i for i in self.items if isinstance(i, Gap)]

    def ts(self) -> list[int]:
        return [t for b in self.items if not isinstance(b, Gap) for t in b.column("ts").cast(pa.int64()).to_pylist()]

    def keys(self) -> list[tuple[str, int]]:
        """(sensor, source time) of every reading: what makes a sample unique on one PLC."""
        return keys_of([b for b in self.items if not isinstance(b, Gap)])

    def table(self) -> pa.Table:
        return pa.Table.from_batches([b for b in self.items if not isinstance(b, Gap)])


def keys_of(batches: list[pa.RecordBatch]) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    for b in batches:
        out += zip(b.column("sensor").cast(pa.string()).to_pylist(), b.column("ts").cast(pa.int64()).to_pylist(),
                   strict=True)
    return out


def reader(url: str, out: Collected, **kw) -> OpcUaReader:
    kw.setdefault("publishing_interval_ms", 50)
    kw.setdefault("batch_max_age_s", 0.1)
    return OpcUaReader(url, BatchBuilder(StreamTable(), SeqAllocator(None)), out, **kw)


async def run_for(r: OpcUaReader, plant, ticks: int, settle_s: float = 1.0) -> None:
    """Open the reader, let the plant run ``ticks`` ticks, give the reader ``settle_s`` to catch up."""
    async with r:
        stop = asyncio.Event()
        task = asyncio.create_task(r.run(stop))
        await plant.run_ticks(asyncio.Event(), max_ticks=ticks)
        await asyncio.sleep(settle_s)
        stop.set()
        await task


async def finish(stop: asyncio.Event, task: asyncio.Task, until, timeout_s: float = 6.0, linger_s: float = 0.3) -> None:
    """Wait (bounded) until ``until()`` holds, let the reader flush for ``linger_s``, then stop it."""
    for _ in range(int(timeout_s / 0.05)):
        if until():
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(linger_s)
    stop.set()
    await task


class CuttableProxy:
    """A loopback TCP proxy in front of a server. ``cut()`` drops every connection and stops
    listening (connects are refused, as when a cable is pulled at a switch); ``restore()`` listens
    again on the same port."""

    def __init__(self, target_port: int, port: int) -> None:
        self.target_port = target_port
        self.port = port
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"opc.tcp://127.0.0.1:{self.port}/qctrace/"

    async def restore(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, reuse_address=True)

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()
        await self._server.wait_closed()
        self._server = None

    async def _serve(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        try:
            sr, sw = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            cw.transport.abort()
            return
        self._writers |= {cw, sw}

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            w.transport.abort()

        await asyncio.gather(pipe(cr, sw), pipe(sr, cw))
        self._writers -= {cw, sw}


async def run_readers(readers, plant, ticks: int) -> None:
    """Open the readers, emit ``ticks`` plant ticks, wait until they have all the plant sent, close."""
    stop = asyncio.Event()
    async with asyncio.TaskGroup() as tg:
        for r in readers:
            await r.__aenter__()
        tasks = [tg.create_task(r.run(stop)) for r in readers]
        await plant.run_ticks(asyncio.Event(), max_ticks=ticks)
        want = plant.produced()
        for _ in range(100):
            got: dict[str, int] = {}
            for r in readers:
                for k, v in r.builder.received_per_source().items():
                    got[k] = got.get(k, 0) + v
            if got == want:
                break
            await asyncio.sleep(0.05)
        stop.set()
    for r in readers:
        await r.__aexit__(None, None, None)
    assert all(t.done() for t in tasks)

"""A hostile OPC UA server next to an honest PLC: the reader keeps its own limits whatever the server
announces, closes the hostile connection with the reason in the source's gap, keeps its memory
within the limits, and the honest PLC's readings keep flowing through it all.

The chunk guard is checked on its own first (pure: bytes in, verdict out), then through the real
reader over TCP against ``tests/edge/hostile_opcua.py``.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import sys
from collections.abc import Awaitable, Callable

import pyarrow as pa
import pytest

from edge import BatchBuilder, OpcUaReader, SeqAllocator, StreamTable
from edge.opcua_guard import ChunkGuard
from firmware_sim.plant import SimulatedPlant
from firmware_sim.scenario import load_scenario
from qctrace.config import OpcUaClientConfig
from tests.edge.hostile_opcua import (
    ROGUE_SOURCE,
    HostileFront,
    HostilePlc,
    huge_array,
    huge_string,
    lying_array,
    nested_extension_objects,
)
from tests.edge.opcua_support import Collected


@pytest.fixture(autouse=True)
def python_default_recursion_limit():
    """py-evm (imported by the anchoring tests) raises the process's recursion limit to 10,000 when
    imported; an edge process never imports it. The nesting attack is judged at Python's default."""
    before = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)
    yield
    sys.setrecursionlimit(before)

_MAX_MESSAGE = 256 * 1024
_MAX_CHUNKS = 16
_CHUNK = 65535
_OPTS = OpcUaClientConfig(security_policy="None", max_message_size=_MAX_MESSAGE, max_chunk_count=_MAX_CHUNKS,
                          backoff_initial_s=0.05, backoff_max_s=0.2)


def _msg(chunk_type: bytes, body: int) -> bytes:
    return b"MSG" + chunk_type + struct.pack("<IIIII", 24 + body, 1, 1, 1, 1) + bytes(body)


# -- the guard alone --------------------------------------------------------------------------

def test_a_chunk_claiming_more_than_the_receive_buffer_is_refused_from_its_header_alone():
    g = ChunkGuard(_CHUNK, _MAX_MESSAGE, _MAX_CHUNKS)
    assert g.check(b"MSGF" + struct.pack("<II", 0xFFFFFF00, 1)) == \
        "a chunk of 4294967040 bytes, above the reader's 65535-byte receive buffer"
    assert g.check(b"MSGF" + struct.pack("<II", 0, 1)) == \
        "a b'MSG' chunk whose header states 0 bytes, less than the header itself"


def test_an_endless_run_of_intermediate_chunks_is_refused_at_the_chunk_count():
    g = ChunkGuard(_CHUNK, _MAX_MESSAGE, _MAX_CHUNKS)
    assert g.check(_msg(b"C", 100) * _MAX_CHUNKS) is None
    assert g.check(_msg(b"C", 100)) == "a message of more than 16 chunks (edge.opcua.max_chunk_count)"


def test_message_size_counts_bodies_of_complete_chunks_and_a_final_chunk_starts_afresh():
    g = ChunkGuard(_CHUNK, 1000, _MAX_CHUNKS)
    assert g.check(_msg(b"C", 600) + _msg(b"F", 400)) is None  # exactly 1000 bytes of body
    assert g.check(_msg(b"F", 1000)) is None  # a new message
    first, last = _msg(b"C", 600), _msg(b"F", 401)
    assert g.check(first + last[:-10]) is None  # the final chunk is not all here: not counted yet
    # asyncua hands the incomplete chunk back from its start with the next read: now it counts, once.
    assert g.check(last) == "a message of more than 1000 bytes (edge.opcua.max_message_size)"


# -- the reader against a hostile server -------------------------------------------------------

async def _until(cond: Callable[[], bool], what: str, timeout_s: float = 8.0) -> None:
    try:
        async with asyncio.timeout(timeout_s):
            while not cond():
                await asyncio.sleep(0.02)
    except TimeoutError:
        pytest.fail(f"not within {timeout_s} s: {what}")


async def _arm(front: HostileFront, attack: str) -> None:
    front.arm(attack)


async def _tick_forever(tick: Callable[[], Awaitable[None]], period_s: float) -> None:
    while True:
        await tick()
        await asyncio.sleep(period_s)


def _count(out: Collected) -> int:
    return sum(b.num_rows for b in out.items if isinstance(b, pa.RecordBatch))


async def test_a_hostile_plc_is_cut_off_at_the_limits_and_the_honest_plc_keeps_flowing(caplog):
    caplog.set_level(logging.WARNING, logger="edge")
    streams, seqs = StreamTable(), SeqAllocator(None)  # one edge node: one stream table, as build_readers

    def make(url: str, out: Collected) -> OpcUaReader:
        return OpcUaReader(url, BatchBuilder(streams, seqs), out, publishing_interval_ms=50, batch_max_age_s=0.1,
                           timeout_s=2, opts=_OPTS)

    honest_out, rogue_out = Collected(), Collected()
    plc = HostilePlc()
    await plc.start()
    try:
        async with SimulatedPlant(load_scenario("demo"), seed=3, speed=20, processes=False) as plant, \
                HostileFront(plc.port) as front:
            honest, rogue = make(plant.endpoints["opcua"][0], honest_out), make(front.url, rogue_out)
            stop = asyncio.Event()
            async with honest, rogue:
                tasks = [asyncio.create_task(honest.run(stop)), asyncio.create_task(rogue.run(stop)),
                         asyncio.create_task(plant.run_ticks(stop)), asyncio.create_task(_tick_forever(plc.tick, 0.1))]
                await _until(lambda: _count(honest_out) and _count(rogue_out), "both PLCs deliver at first")
                during: dict[str, int] = {}
                # Each attack and the refusal it must cause: a poisoned value stays until the next one
                # replaces it, so on a busy machine a refusal of the previous attack may still come first.
                attacks: list[tuple[str, Callable[[], Awaitable[None]], str]] = [
                    ("huge string", lambda: plc.poison(huge_string(1 << 20)), "more than 262144 bytes"),
                    ("huge array", lambda: plc.poison(huge_array(200_000)), "more than 262144 bytes"),
                    ("nested ExtensionObjects", lambda: plc.poison(nested_extension_objects(3000)),
                     "cannot decode (RecursionError("),
                    ("lying array length", lambda: plc.poison(lying_array()), "cannot decode (NotEnoughData("),
                    ("endless chunks", lambda: _arm(front, "endless_chunks"), "more than 16 chunks"),
                    ("absurd chunk size", lambda: _arm(front, "absurd_chunk"), "a chunk of 4294967040 bytes"),
                ]
                for name, attack, because in attacks:
                    gaps_before, honest_before = len(rogue_out.gaps), _count(honest_out)
                    await attack()
                    await _until(lambda n=gaps_before, b=because: any(b in g.reason for g in rogue_out.gaps[n:]),
                                 f"{name}: refused ({because})", timeout_s=20.0)
                    rogue_after = _count(rogue_out)
                    await _until(lambda n=rogue_after: _count(rogue_out) > n, f"{name}: the rogue PLC read again")
                    during[name] = _count(honest_out) - honest_before
                honest_before = _count(honest_out)
                await asyncio.sleep(0.5)
                honest_after_attacks = _count(honest_out) - honest_before
                stop.set()
                await asyncio.gather(*tasks[:2])
                for t in tasks[2:]:
                    t.cancel()
                await asyncio.gather(*tasks[2:], return_exceptions=True)
    finally:
        await plc.stop()

    assert front.acks_rewritten > len(during)  # every (re)connection was told "no limits"
    # Memory: never more than one chunk's worth of an incomplete chunk, nor a message's worth of a message.
    client = rogue._client
    assert 0 < client.peak_chunk_bytes <= _CHUNK
    assert client.peak_message_bytes <= _MAX_MESSAGE
    # The floods were cut off long before their 64 MiB cap: the reader hung up at its limit.
    assert [a for a, _ in front.attacks] == ["endless_chunks", "absurd_chunk"]
    assert all(sent < 2 << 20 for _, sent in front.attacks), front.attacks
    # The hostile source is marked: a gap naming the endpoint and what the server did wrong.
    reasons = " | ".join(g.reason for g in rogue_out.gaps)
    assert {g.source for g in rogue_out.gaps} == {ROGUE_SOURCE}
    lead = f"connection to {front.url} lost: the server sent "
    assert all(g.reason.startswith(lead) for g in rogue_out.gaps), reasons
    for expected in ("a message of more than 262144 bytes (edge.opcua.max_message_size)",
                     "a publish response the reader cannot decode (RecursionError(",
                     "a publish response the reader cannot decode (NotEnoughData(",
                     "a message of more than 16 chunks (edge.opcua.max_chunk_count)",
                     "a chunk of 4294967040 bytes, above the reader's 65535-byte receive buffer"):
        assert expected in reasons, (expected, reasons)
    assert f"opcua.refused endpoint={front.url}" in caplog.text
    # The honest PLC: never a gap, readings during every attack and after the last.
    assert honest_out.gaps == []
    assert all(n > 0 for n in during.values()), during
    assert honest_after_attacks > 0


async def test_a_poll_response_that_cannot_be_decoded_closes_the_connection_instead_of_killing_the_poll():
    """asyncua's read lets a RecursionError through: the poll loop used to die with it, silently."""
    out = Collected()
    plc = HostilePlc()
    await plc.start()
    try:
        opts = _OPTS.model_copy(update={"mode": "poll", "poll_interval_ms": 50})
        r = OpcUaReader(plc.endpoint, BatchBuilder(StreamTable(), SeqAllocator(None)), out, batch_max_age_s=0.1,
                        timeout_s=2, opts=opts)
        async with r:
            stop = asyncio.Event()
            task = asyncio.create_task(r.run(stop))
            await plc.tick()
            await _until(lambda: _count(out) >= 1, "first poll")
            await plc.poison(nested_extension_objects(3000))
            await _until(lambda: r._client.refusals >= 1, "refused")
            await plc.tick()
            await _until(lambda: out.gaps and _count(out) >= 2, "polling again, gap recorded")
            stop.set()
            await task
    finally:
        await plc.stop()
    assert out.gaps[0].source == ROGUE_SOURCE
    assert out.gaps[0].reason.startswith(f"connection to {plc.endpoint} lost: the server sent a read response the"
                                         " reader cannot decode (RecursionError(")

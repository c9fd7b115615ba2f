"""Store and forward in one process: spool → in-process link → ingest, with commit acknowledgements."""

from __future__ import annotations

import asyncio

from edge.forward import Forwarder
from edge.spool import Spool
from edge.transport import InProcessLink
from ingest import Ingest, read_dataset
from ingest.receiver import Receiver
from qctrace.config import load_config
from qctrace.schema import Gap, batch_from_columns

T0 = 1_793_599_200 * 10**9


def batch(i: int, n: int = 50):
    seqs = range(i * n, (i + 1) * n)
    return batch_from_columns({
        "ts": [T0 + s * 10**9 for s in seqs], "recv_ts": [T0] * n, "site": ["plant1"] * n, "line": ["line1"] * n,
        "device": ["plc1"] * n, "sensor": ["weight"] * n, "value": [500.0] * n, "quality": [0] * n,
        "seq": list(seqs), "lot": ["L-1"] * n,
    })


class Pipe:
    def __init__(self, tmp_path, spool: Spool, *, resend_after_s: float = 60.0, drop_first_sends: int = 0) -> None:
        # A long resend timeout by default: on a cold Numba cache ingest's first batch waits for the
        # kernels to compile (~6 s here), which is not a lost send.
        cfg = load_config(None)
        self.facts: list = []
        self.ingest = Ingest(tmp_path / "data", cfg.detect, cfg.sink.model_copy(update={"flush_age_s": 0.1}),
                             self.facts.extend)
        self.link = InProcessLink()
        self.spool = spool
        self.fwd = Forwarder("e1", spool, self.link, window=8, resend_after_s=resend_after_s)
        self.receiver = Receiver(self.ingest, self.link.ack, tmp_path / "data" / "quarantine")
        self._drop = drop_first_sends
        send = self.link.send

        async def lossy(payload: bytes, hint: str) -> None:  # a network that loses the first sends
            if self._drop > 0:
                self._drop -= 1
                return
            await send(payload, hint)

        self.link.send = lossy

    async def run(self, items, settle_s: float = 20.0) -> None:
        stop = asyncio.Event()
        fwd = asyncio.create_task(self.fwd.run(stop, tick_s=0.02))
        ing = asyncio.create_task(self.ingest.run(self.receiver.items(self.link.receive()), flush_check_s=0.05))
        for item in items:
            await self.fwd.publish(item)
        stop.set()
        await fwd
        assert await self.fwd.drain(settle_s), f"{self.spool.depth} records never acknowledged"
        await self.link.close()
        await ing

    def seqs(self, tmp_path) -> list[int]:
        return sorted(read_dataset(tmp_path / "data" / "readings").column("seq").to_pylist())


async def test_everything_published_is_committed_and_released(tmp_path):
    p = Pipe(tmp_path, Spool(tmp_path / "spool", fsync=False))
    await p.run([batch(i) for i in range(20)])
    assert p.seqs(tmp_path) == list(range(1000))
    assert p.spool.depth == 0 and p.fwd.stats.acked == 20
    assert p.fwd.stats.resent == 0


async def test_sends_lost_on_the_way_are_sent_again_after_the_timeout(tmp_path):
    p = Pipe(tmp_path, Spool(tmp_path / "spool", fsync=False), resend_after_s=0.3, drop_first_sends=5)
    await p.run([batch(i) for i in range(12)])
    assert p.seqs(tmp_path) == list(range(600))
    assert p.fwd.stats.resent >= 5


async def test_unsent_records_survive_a_restart_and_are_sent_on_the_next_start(tmp_path):
    spool = Spool(tmp_path / "spool", fsync=False)
    first = Forwarder("e1", spool, InProcessLink(), window=4)
    for i in range(6):
        await first.publish(batch(i))  # durable in the spool; the process "dies" before sending
    spool.close()
    p = Pipe(tmp_path, Spool(tmp_path / "spool", fsync=False))
    await p.run([batch(6)])
    assert p.seqs(tmp_path) == list(range(350))


async def test_a_stop_with_a_backlog_behind_the_window_gives_up_after_the_linger_and_keeps_it_spooled(tmp_path):
    """The one-hour soak's edge, back from a kill with minutes of spool, was stopped while a slow
    worker acknowledged 64 records every twenty seconds: it waited for its whole backlog to be
    sent, past the campaign's 60 s, and was killed. Stopping waits ``linger_s``, no longer; what
    was not acknowledged stays spooled and goes first on the next start."""
    spool = Spool(tmp_path / "spool", fsync=False)
    mute = InProcessLink()  # nobody acknowledges
    fwd = Forwarder("e1", spool, mute, window=4)
    for i in range(20):
        await fwd.publish(batch(i))
    stop = asyncio.Event()
    stop.set()
    t0 = asyncio.get_running_loop().time()
    await asyncio.wait_for(fwd.run(stop, tick_s=0.02, linger_s=0.3), 5.0)
    assert asyncio.get_running_loop().time() - t0 < 2.0
    assert fwd.stats.sent == 4 and spool.depth == 20  # a window's worth sent, every record kept
    spool.close()
    p = Pipe(tmp_path, Spool(tmp_path / "spool", fsync=False))
    await p.run([batch(20)])
    assert p.seqs(tmp_path) == list(range(1050))


async def test_a_full_spool_dropping_its_oldest_records_sends_loss_markers_naming_the_seqs(tmp_path):
    """Nothing consumes while the readers publish: the spool (4 segments of ~2 records) drops its
    oldest segments; every dropped reading is named by a gap record, and the rest arrive."""
    spool = Spool(tmp_path / "spool", fsync=False, segment_bytes=6000, max_bytes=24_000, policy="drop_oldest")
    first = Forwarder("e1", spool, InProcessLink(), window=1)
    for i in range(30):
        await first.publish(batch(i))
    assert spool.dropped_records > 0 and first.stats.loss_markers > 0
    markers = list(first._pending_markers)
    spool.close()
    p = Pipe(tmp_path, Spool(tmp_path / "spool", fsync=False, segment_bytes=6000, max_bytes=24_000,
                             policy="drop_oldest"))
    await p.run(markers)
    got = set(p.seqs(tmp_path))
    gaps = [f for f in p.facts if isinstance(f, Gap)]
    named: set[int] = set()
    for g in gaps:
        assert g.source == "plant1/line1/plc1" and "spool full" in g.reason
        lo, hi = g.reason.split("seq ")[1].split(" ")[0].split("-")
        named |= set(range(int(lo), int(hi) + 1))
    assert got.isdisjoint(named)
    assert got | named == set(range(1500)), "every reading is either in Parquet or named as dropped"


async def test_the_first_batch_after_a_restart_follows_a_gap_from_the_last_reading_spooled(tmp_path):
    p = Pipe(tmp_path, Spool(tmp_path / "spool", fsync=False))
    await p.run([batch(0), batch(1)])  # readings 0..99 at T0 + seq seconds
    p2 = Pipe(tmp_path, Spool(tmp_path / "spool", fsync=False))
    await p2.run([batch(5)])  # the edge was down while seq 100..249 were produced
    gaps = [f for f in p2.facts if isinstance(f, Gap)]
    assert len(gaps) == 1
    g = gaps[0]
    assert (g.source, g.start_ns, g.end_ns) == ("plant1/line1/plc1", T0 + 99 * 10**9, T0 + 299 * 10**9)
    assert "restarted" in g.reason

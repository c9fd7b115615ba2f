"""A full disk under the edge's spool: a real ENOSPC on a small tmpfs of our own.

The spool refuses the append with a clear error and keeps everything it had; the forwarder holds
what readers publish in bounded memory, keeps draining (each commit acknowledgement frees room),
retries, and once the disk has room everything continues. Past the bound the oldest held batches
are dropped and named exactly by loss markers. Mounting a tmpfs needs root: elsewhere these tests
skip and say so (``qctrace.faults`` raises ``FaultUnavailable``).
"""

from __future__ import annotations

import asyncio
import errno
import logging

import pytest

from edge.forward import Forwarder
from edge.spool import Spool, SpoolDiskFull
from edge.transport import InProcessLink
from ingest import Ingest, read_dataset
from ingest.receiver import Receiver
from qctrace.config import load_config
from qctrace.faults import FaultUnavailable, fill_disk, mount_tmpfs, umount
from qctrace.schema import Gap, batch_from_columns

T0 = 1_793_599_200 * 10**9
SOURCE = "plant1/line1/plc1"


@pytest.fixture
def small_fs(tmp_path):
    mnt = tmp_path / "mnt"
    try:
        mount_tmpfs(mnt, 512 << 10)
    except FaultUnavailable as exc:
        pytest.skip(str(exc))
    try:
        yield mnt
    finally:
        umount(mnt)


def rec(rid: int, size: int = 1000) -> bytes:
    return rid.to_bytes(8, "little") + bytes([rid % 251]) * size


def batch(i: int, n: int = 50):
    seqs = range(i * n, (i + 1) * n)
    return batch_from_columns({
        "ts": [T0 + s * 10**9 for s in seqs], "recv_ts": [T0 + s * 10**9 for s in seqs], "site": ["plant1"] * n,
        "line": ["line1"] * n, "device": ["plc1"] * n, "sensor": ["weight"] * n, "value": [500.0 + s for s in seqs],
        "quality": [0] * n, "seq": list(seqs), "lot": ["L-1"] * n,
    })


@pytest.mark.parametrize("keep_free", [0, 4096], ids=["nothing-fits", "a-short-write"])
def test_an_append_on_a_full_disk_is_a_clear_error_and_keeps_every_record(small_fs, keep_free):
    sp = Spool(small_fs / "spool", segment_bytes=64 << 10, max_bytes=64 << 20)
    rids = [sp.append(rec) for _ in range(5)]
    seg = sorted((small_fs / "spool").glob("seg-*.qsp"))[-1]
    size_before = seg.stat().st_size
    with fill_disk(small_fs, keep_free_bytes=keep_free):
        with pytest.raises(SpoolDiskFull) as err:
            sp.append(lambda rid: rec(rid, 20_000))  # larger than what is left: part of it may be written
        assert err.value.errno == errno.ENOSPC
        msg = str(err.value)
        assert str(small_fs / "spool") in msg and "No space left on device (ENOSPC)" in msg
        assert "free space on that filesystem" in msg
        assert seg.stat().st_size == size_before, "a partly written record was left behind"
        assert sp.pending() == rids and sp.next_rid == 5  # no rid used up by the refused append
    assert sp.append(rec) == 5  # room again: the same spool carries on
    sp.close()
    again = Spool(small_fs / "spool", segment_bytes=64 << 10, max_bytes=64 << 20)
    assert again.pending() == [*rids, 5] and again.truncated_bytes == 0
    assert all(again.read(r) == rec(r) for r in again.pending())


class Edge:
    """A real forwarder and spool (on the tmpfs) → in-process link → real ingest (on tmp_path)."""

    def __init__(self, tmp_path, spool_dir, *, hold_max_bytes: int = 64 << 20, segment_bytes: int = 64 << 10):
        cfg = load_config(None)
        self.facts: list = []
        self.data = tmp_path / "data"
        self.ingest = Ingest(self.data, cfg.detect, cfg.sink.model_copy(update={"flush_age_s": 0.05}),
                             self.facts.extend)
        self.link = InProcessLink()
        self.spool = Spool(spool_dir, segment_bytes=segment_bytes, max_bytes=64 << 20)
        self.fwd = Forwarder("e1", self.spool, self.link, window=8, resend_after_s=5.0,
                             hold_max_bytes=hold_max_bytes, disk_retry_initial_s=0.02, disk_retry_cap_s=0.1)
        self.receiver = Receiver(self.ingest, self.link.ack, self.data / "quarantine")
        self.stop = asyncio.Event()
        self.fwd_task = asyncio.create_task(self.fwd.run(self.stop, tick_s=0.02))
        self.ing_task: asyncio.Task | None = None

    def start_ingest(self) -> None:
        self.ing_task = asyncio.create_task(self.ingest.run(self.receiver.items(self.link.receive()),
                                                            flush_check_s=0.02))

    async def finish(self) -> None:
        assert await self.fwd.drain(20), f"{self.spool.depth} spooled, {self.fwd.stats.held} held"
        self.stop.set()
        await self.fwd_task
        await self.link.close()
        await self.ing_task

    def seqs(self) -> list[int]:
        return sorted(read_dataset(self.data / "readings").column("seq").to_pylist())

    def gaps(self) -> list[Gap]:
        return [f for f in self.facts if isinstance(f, Gap)]


async def test_readings_published_while_the_disk_is_full_are_held_and_arrive_once_it_has_room(
        tmp_path, small_fs, caplog):
    caplog.set_level(logging.WARNING, logger="edge.forward")
    e = Edge(tmp_path, small_fs / "spool")
    e.start_ingest()
    for i in range(10):
        await e.fwd.publish(batch(i))
    assert await e.fwd.drain(20)
    ballast = fill_disk(small_fs)
    try:
        for i in range(10, 30):
            await asyncio.wait_for(e.fwd.publish(batch(i)), 5)  # the reader is not stopped
        await asyncio.sleep(0.3)  # several retries meet the full disk
        assert e.fwd.disk_full is not None and e.fwd.stats.held == 20
        warning = next(r.getMessage() for r in caplog.records if "forward.disk_full" in r.getMessage())
        assert str(small_fs / "spool") in warning and "errno=ENOSPC" in warning
    finally:
        ballast.remove()
    await e.finish()
    assert e.seqs() == list(range(1500)), "missing or doubled readings"
    assert e.gaps() == [] and e.fwd.stats.held_dropped == 0
    assert e.fwd.disk_full is None and any("forward.disk_ok" in r.getMessage() for r in caplog.records)


async def test_past_the_memory_bound_the_oldest_held_readings_are_dropped_and_named_by_a_loss_marker(
        tmp_path, small_fs):
    e = Edge(tmp_path, small_fs / "spool", hold_max_bytes=5 * batch(0).get_total_buffer_size())
    e.start_ingest()
    for i in range(4):
        await e.fwd.publish(batch(i))
    assert await e.fwd.drain(20)
    with fill_disk(small_fs):
        for i in range(4, 24):
            await e.fwd.publish(batch(i))
        assert e.fwd.stats.held == 5 and e.fwd.stats.held_dropped == 15
        await asyncio.sleep(0.2)
    await e.finish()
    got = e.seqs()
    assert len(got) == len(set(got)), "doubled readings"
    [gap] = e.gaps()  # the drops were consecutive: one marker
    assert gap.source == SOURCE and "spool disk full" in gap.reason
    assert "seq 200-949 (750 readings) dropped" in gap.reason
    assert (gap.start_ns, gap.end_ns) == (T0 + 200 * 10**9, T0 + 949 * 10**9)
    named = set(range(200, 950))
    assert named.isdisjoint(got) and named | set(got) == set(range(1200)), "lost without a marker"


async def test_commit_acknowledgements_free_room_on_the_full_disk_and_the_held_readings_go_in(tmp_path, small_fs):
    """The ballast stays: only the spool's own released segments make room."""
    e = Edge(tmp_path, small_fs / "spool", segment_bytes=8 << 10)
    for i in range(12):  # spooled and sent, but ingest is not running yet: nothing acknowledged
        await e.fwd.publish(batch(i))
    await asyncio.sleep(0.1)
    with fill_disk(small_fs):
        for i in range(12, 16):
            await e.fwd.publish(batch(i))
        assert e.fwd.stats.held == 4
        e.start_ingest()  # acknowledgements release whole segments, which are deleted
        await e.finish()
    assert e.seqs() == list(range(800))
    assert e.gaps() == [] and e.fwd.disk_full is None

"""The durable spool: nothing acknowledged is lost, rids are never reused, torn records are cut."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest

from edge.spool import Spool
from qctrace.errors import SpoolError, SpoolFull


def rec(rid: int, size: int = 100) -> bytes:
    return rid.to_bytes(8, "little") + bytes([rid % 251]) * size


def test_append_read_release_and_reopen_keeps_only_unreleased(tmp_path):
    sp = Spool(tmp_path, fsync=False)
    rids = [sp.append(rec) for _ in range(10)]
    assert rids == list(range(10)) and sp.depth == 10
    assert sp.read(4) == rec(4)
    assert sp.release([0, 1, 2, 5]) == 4
    assert sp.release([5]) == 0  # twice is harmless
    sp.close()
    again = Spool(tmp_path, fsync=False)
    assert again.pending() == [3, 4, 6, 7, 8, 9]
    assert [again.read(r) for r in again.pending()] == [rec(r) for r in again.pending()]
    assert again.append(rec) == 10


def test_record_ids_are_never_reused_even_when_everything_was_released(tmp_path):
    sp = Spool(tmp_path, fsync=False, segment_bytes=1000, max_bytes=10_000)
    for _ in range(30):
        sp.release([sp.append(rec)])
    sp.close()
    again = Spool(tmp_path, fsync=False, segment_bytes=1000, max_bytes=10_000)
    assert again.depth == 0
    assert again.append(rec) == 30


def test_segments_rotate_and_released_segments_are_deleted(tmp_path):
    sp = Spool(tmp_path, fsync=False, segment_bytes=1000, max_bytes=100_000)
    for _ in range(40):
        sp.append(rec)
    assert len(list(tmp_path.glob("seg-*.qsp"))) >= 4
    sp.release(range(0, 35))
    assert len(list(tmp_path.glob("seg-*.qsp"))) <= 2
    assert sp.pending() == list(range(35, 40))


def test_a_torn_last_record_is_cut_off_and_logged(tmp_path, caplog):
    sp = Spool(tmp_path, fsync=False)
    for _ in range(3):
        sp.append(rec)
    sp.close()
    seg = sorted(tmp_path.glob("seg-*.qsp"))[-1]
    whole = seg.read_bytes()
    seg.write_bytes(whole + whole[:50])  # a crash halfway through writing a fourth record
    again = Spool(tmp_path, fsync=False)
    assert again.pending() == [0, 1, 2]
    assert again.truncated_bytes == 50 and "torn last record" in caplog.text
    assert seg.stat().st_size == len(whole)
    assert again.append(rec) == 3


def test_a_bit_flip_in_the_last_record_is_caught_by_its_checksum(tmp_path):
    sp = Spool(tmp_path, fsync=False)
    for _ in range(3):
        sp.append(rec)
    sp.close()
    seg = sorted(tmp_path.glob("seg-*.qsp"))[-1]
    data = bytearray(seg.read_bytes())
    data[-5] ^= 0x01
    seg.write_bytes(bytes(data))
    assert Spool(tmp_path, fsync=False).pending() == [0, 1]


def test_full_spool_blocks_with_a_clear_error(tmp_path):
    sp = Spool(tmp_path, fsync=False, segment_bytes=1000, max_bytes=2000, policy="block")
    with pytest.raises(SpoolFull, match=r"is full .* waiting for ingest"):
        for _ in range(100):
            sp.append(rec)
    held = sp.pending()
    assert held and all(sp.read(r) == rec(r) for r in held)  # nothing that was accepted is gone
    sp.release(held[:10])
    sp.append(rec)  # room again


def test_full_spool_drops_the_oldest_segment_and_says_which_records(tmp_path):
    dropped: list[bytes] = []
    sp = Spool(tmp_path, fsync=False, segment_bytes=1000, max_bytes=2000, policy="drop_oldest", on_drop=dropped.extend)
    for _ in range(40):
        sp.append(rec)
    lost = {int.from_bytes(p[:8], "little") for p in dropped}
    assert lost and sp.dropped_records == len(lost)
    assert lost.isdisjoint(sp.pending()) and lost | set(sp.pending()) == set(range(40))


def test_bad_settings_and_state_are_refused_clearly(tmp_path):
    with pytest.raises(SpoolError, match="policy must be"):
        Spool(tmp_path, policy="lose_everything")  # type: ignore[arg-type]
    (tmp_path / "release.json").write_text("{not json")
    with pytest.raises(SpoolError, match="unreadable spool state"):
        Spool(tmp_path)


_CHILD = """
import sys
from edge.spool import Spool
sp = Spool(__import__("pathlib").Path(sys.argv[1]), segment_bytes=int(sys.argv[2]), max_bytes=1 << 30)
while True:
    rid = sp.append(lambda r: r.to_bytes(8, "little") * 50)
    print(rid, flush=True)
"""


@pytest.mark.parametrize("segment_bytes", [20_000, 900], ids=["50-records-a-segment", "a-rotation-every-other-append"])
def test_kill_9_during_appends_loses_no_acknowledged_record_and_reuses_no_rid(tmp_path, segment_bytes):
    """A child appends (fsync on) and prints each rid once append returned; we kill -9 it at random
    moments, five times over the same spool. Every printed rid must be there, intact, exactly once.
    With 900-byte segments every other record (400 bytes and a header) opens a new segment, so each kill falls in or
    next to a segment rotation."""
    rng = random.Random(5)
    acknowledged: list[int] = []
    for _ in range(5):
        proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(tmp_path), str(segment_bytes)],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        # Kill a random moment after the child has acknowledged 20-60 appends: a kill timed from the
        # start could fall while a slow machine is still importing, and test nothing.
        for _ in range(rng.randint(20, 60)):
            acknowledged.append(int(proc.stdout.readline()))
        time.sleep(rng.random() * 0.02)
        os.kill(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        acknowledged += [int(x) for x in out.split()]
    assert len(acknowledged) == len(set(acknowledged)), "a rid was issued twice"
    sp = Spool(tmp_path)
    held = set(sp.pending())
    assert set(acknowledged) <= held
    for rid in acknowledged:
        assert sp.read(rid) == rid.to_bytes(8, "little") * 50
    if segment_bytes == 900:
        # it did rotate every other append (nothing was released, so no segment was removed)
        assert len(list(tmp_path.glob("*.qsp"))) >= len(acknowledged) // 2 >= 50

"""A restart's gap record starts at the last reading spooled, even after a device clock ran ahead."""

from __future__ import annotations

from edge.forward import Forwarder
from edge.spool import Spool
from edge.transport import InProcessLink
from qctrace import wire
from qctrace.schema import Gap, batch_from_columns

T0 = 1_793_599_200 * 10**9
S = 10**9


def batch(seqs: range, skew_s: int = 0):
    n = len(seqs)
    return batch_from_columns({
        "ts": [T0 + (s + skew_s) * S for s in seqs], "recv_ts": [T0 + s * S for s in seqs], "site": ["p"] * n,
        "line": ["l"] * n, "device": ["plc"] * n, "sensor": ["x"] * n, "value": [1.0] * n, "quality": [0] * n,
        "seq": list(seqs), "lot": ["L"] * n})


def spooled(spool: Spool) -> list:
    return [wire.decode(spool.read(r)).item for r in spool.pending()]


async def test_the_restart_gap_covers_what_came_after_a_clock_that_ran_ahead_and_was_corrected(tmp_path):
    spool = Spool(tmp_path / "spool", fsync=False)
    first = Forwarder("e1", spool, InProcessLink())
    await first.publish(batch(range(0, 10)))
    await first.publish(batch(range(10, 20), skew_s=300))  # the PLC's clock 300 s ahead for a while
    await first.publish(batch(range(20, 30)))  # corrected: the last reading spooled is at T0 + 29 s
    first._save()
    spool.close()  # the edge dies; readings 30..49 are never collected

    spool = Spool(tmp_path / "spool", fsync=False)
    again = Forwarder("e1", spool, InProcessLink())
    await again.publish(batch(range(50, 60)))
    gaps = [g for g in spooled(spool) if isinstance(g, Gap)]
    assert [(g.start_ns, g.end_ns) for g in gaps] == [(T0 + 29 * S, T0 + 59 * S)]


async def test_a_restart_while_the_clock_ran_ahead_still_records_the_gap_between_the_bounding_readings(tmp_path):
    spool = Spool(tmp_path / "spool", fsync=False)
    first = Forwarder("e1", spool, InProcessLink())
    await first.publish(batch(range(0, 10)))
    await first.publish(batch(range(10, 20), skew_s=300))  # last spooled: T0 + 319 s by the PLC's clock
    first._save()
    spool.close()  # the edge dies; meanwhile the PLC's clock is corrected

    spool = Spool(tmp_path / "spool", fsync=False)
    again = Forwarder("e1", spool, InProcessLink())
    await again.publish(batch(range(50, 60)))  # first after the restart: T0 + 50 s
    [gap] = [g for g in spooled(spool) if isinstance(g, Gap)]
    assert (gap.start_ns, gap.end_ns) == (T0 + 50 * S, T0 + 319 * S)
    assert "restarted" in gap.reason and "earlier than its last" in gap.reason


async def test_an_edge_killed_during_a_plc_outage_records_the_outage_from_its_start(tmp_path):
    """The soak found it: a PLC connection lost at T0+9 s, live values back from T0+20 s, the edge
    killed before the reader had recorded the outage's gap (it waits for the server's history).
    The restart gap must start at the outage (T0+9 s), not at the last live reading spooled."""
    from qctrace.schema import Outage

    spool = Spool(tmp_path / "spool", fsync=False)
    first = Forwarder("e1", spool, InProcessLink())
    await first.publish(batch(range(0, 10)))
    await first.publish(Outage("p/l/plc", T0 + 9 * S))  # the reader: connection lost after this reading
    await first.publish(batch(range(20, 30)))  # reconnected; 10..19 are still to be backfilled or recorded
    first._save()
    spool.close()  # kill -9: the reader's gap record for 9..20 was never made

    spool = Spool(tmp_path / "spool", fsync=False)
    again = Forwarder("e1", spool, InProcessLink())
    await again.publish(batch(range(50, 60)))
    [gap] = [g for g in spooled(spool) if isinstance(g, Gap)]
    assert (gap.start_ns, gap.end_ns) == (T0 + 9 * S, T0 + 59 * S)
    assert again._outages == {}  # covered: the next restart starts from the last reading again
    again._save()
    spool.close()
    assert Forwarder("e1", Spool(tmp_path / "spool", fsync=False), InProcessLink())._restarted_after == {
        "p/l/plc": T0 + 59 * S}


async def test_an_outage_whose_gap_was_spooled_is_closed_and_forgotten(tmp_path):
    from qctrace.schema import Outage

    spool = Spool(tmp_path / "spool", fsync=False)
    first = Forwarder("e1", spool, InProcessLink())
    await first.publish(batch(range(0, 10)))
    await first.publish(Outage("p/l/plc", T0 + 9 * S))
    await first.publish(Outage("p/l/plc", T0 + 12 * S))  # lost again before the first was recorded: kept at 9
    assert first._outages == {"p/l/plc": T0 + 9 * S}
    await first.publish(Gap("p/l/plc", T0 + 9 * S, T0 + 20 * S, "connection lost"))
    await first.publish(Outage("p/l/plc", T0 + 9 * S, closed=True))
    await first.publish(batch(range(20, 30)))
    first._save()
    spool.close()
    again = Forwarder("e1", Spool(tmp_path / "spool", fsync=False), InProcessLink())
    assert again._restarted_after == {"p/l/plc": T0 + 29 * S}


async def test_the_restart_gap_reaches_the_newest_first_value_when_a_silent_tag_brings_an_old_one(tmp_path):
    """A subscription's first values after a restart are every tag's current one: a tag silent since
    T0+35 s brings that old sample beside the others' T0+50 s. The readings the busy tags produced
    between 35 and 50 s were never collected: the gap must reach T0+50 s, not stop at 35 s."""
    spool = Spool(tmp_path / "spool", fsync=False)
    first = Forwarder("e1", spool, InProcessLink())
    await first.publish(batch(range(0, 30)))
    first._save()
    spool.close()

    spool = Spool(tmp_path / "spool", fsync=False)
    again = Forwarder("e1", spool, InProcessLink())
    initial = batch_from_columns({
        "ts": [T0 + 35 * S, T0 + 50 * S, T0 + 50 * S], "recv_ts": [T0 + 50 * S] * 3, "site": ["p"] * 3,
        "line": ["l"] * 3, "device": ["plc"] * 3, "sensor": ["quiet", "x", "y"], "value": [1.0] * 3,
        "quality": [0] * 3, "seq": [100, 101, 102], "lot": ["L"] * 3})
    await again.publish(initial)
    [gap] = [g for g in spooled(spool) if isinstance(g, Gap)]
    assert (gap.start_ns, gap.end_ns) == (T0 + 29 * S, T0 + 50 * S)
    assert "earlier than its last" not in gap.reason


async def test_an_outage_the_full_disk_refused_is_saved_before_any_newer_last_time(tmp_path, monkeypatch):
    """The soak's spool disk was full when a PLC connection dropped: the outage could not be saved.
    Once there is room, it must reach the disk before last times past it do, or a kill then restarts
    the gap after the outage's readings."""
    import errno

    import edge.forward
    from qctrace.schema import Outage

    full = {"on": False}
    real = edge.forward.atomic_write

    def atomic_write(path, data):
        if full["on"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(edge.forward, "atomic_write", atomic_write)
    spool = Spool(tmp_path / "spool", fsync=False)
    first = Forwarder("e1", spool, InProcessLink())
    await first.publish(batch(range(0, 10)))
    first._save()
    full["on"] = True
    await first.publish(Outage("p/l/plc", T0 + 9 * S))  # not saved: the disk is full
    full["on"] = False  # room again; live values after the reconnect are spooled
    await first.publish(batch(range(20, 30)))
    first._save()
    spool.close()  # kill -9 before the reader recorded the outage's gap

    spool = Spool(tmp_path / "spool", fsync=False)
    again = Forwarder("e1", spool, InProcessLink())
    await again.publish(batch(range(50, 60)))
    [gap] = [g for g in spooled(spool) if isinstance(g, Gap)]
    assert gap.start_ns == T0 + 9 * S

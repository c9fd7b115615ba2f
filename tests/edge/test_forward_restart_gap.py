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
    assert [(g.start_ns, g.end_ns) for g in gaps] == [(T0 + 29 * S, T0 + 50 * S)]


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

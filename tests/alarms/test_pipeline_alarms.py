"""Ingest's facts through the alarm feed: an alarm while the episode is still open, its clear after it ends."""

from __future__ import annotations

from ingest import Episode, Ingest
from ingest.alarms import Action, Transition
from qctrace.alarm_ops import AlarmFeed
from qctrace.config import load_config
from qctrace.schema import batch_from_columns

S = 1_000_000_000
T0 = 1_762_063_200 * S


def _batch(values: list[float], t0: int, seq0: int):
    n = len(values)
    return batch_from_columns({
        "ts": [T0 + (t0 + i) * S for i in range(n)], "recv_ts": [T0] * n, "site": ["plant1"] * n,
        "line": ["line1"] * n, "device": ["plc1"] * n, "sensor": ["filler_weight"] * n, "value": values,
        "quality": [0] * n, "seq": list(range(seq0, seq0 + n)), "lot": ["L1"] * n})


def test_an_open_episode_raises_and_its_end_clears_after_the_off_delay(tmp_path):
    cfg = load_config(None).with_overrides(data_dir=tmp_path, **{"alarms.off_delay_s": 5.0})
    seen: list = []
    ingest = Ingest(tmp_path, cfg.detect, cfg.sink, lambda facts: seen.extend(feed(facts)))
    feed = AlarmFeed(cfg, clock=lambda: ingest.now_ns)
    normal = [500.0 + 0.1 * (i % 5) for i in range(100)]
    ingest.process(_batch(normal, 0, 0))
    ingest.process(_batch([510.0] * 10, 100, 100))  # above usl 505 until the batch ends: still open
    raised = [f for f in seen if isinstance(f, Transition)]
    assert [(t.action, t.alarm.rule, t.alarm.priority, t.alarm.raised_ns) for t in raised] == [
        (Action.RAISE, "spec", "high", T0 + 100 * S)]
    ingest.process(_batch(normal[:3], 110, 110))  # back in spec: the episode closes, the clear waits
    assert [f.action for f in seen if isinstance(f, Transition)] == [Action.RAISE]
    ingest.process(_batch(normal[:20], 113, 113))  # data time passes the off-delay
    ingest.flush()  # facts (here a committed file, about every second) let the data clock confirm the clear
    done = [f for f in seen if isinstance(f, Transition)]
    assert [t.action for t in done] == [Action.RAISE, Action.CLEAR]
    ended = [f for f in seen if isinstance(f, Episode)]
    assert len(ended) == 1 and ended[0].start_ns == T0 + 100 * S
    assert done[1].alarm.id == done[0].alarm.id and done[1].at_ns == ended[0].end_ns >= T0 + 109 * S
    assert feed.close() == []

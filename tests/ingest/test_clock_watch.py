"""A device clock that jumps is reported and its readings kept; a late burst from history is not a skew."""

from __future__ import annotations

import logging
import random
import re

import numpy as np
import pytest

from ingest import Ingest, read_dataset
from ingest.detect.clock import ClockWatch
from qctrace.config import load_config
from qctrace.schema import batch_from_columns

T0 = 1_793_599_200 * 10**9  # the simulator's fixed start: nowhere near the receive clock
R0 = 1_760_000_000 * 10**9
S = 10**9


def plant(ticks: int, *, speed: float, skews: dict[str, tuple[int, int, float]], seed: int = 1, r0: int = R0):
    """Batches as the edge sends them: two sources sampled every simulated second, received at
    ``speed`` simulated seconds per second with up to 0.2 s of latency; ``skews[source] = (first
    tick, last tick, seconds)`` puts that device's clock off for those ticks."""
    rng = random.Random(seed)
    rows: list[dict] = []
    for k in range(ticks):
        for device in ("plc", "logger"):
            src = f"p/l/{device}"
            lo, hi, off = skews.get(src, (0, -1, 0.0))
            ts = T0 + k * S + (round(off * S) if lo <= k <= hi else 0)
            recv = r0 + round(k * S / speed) + rng.randrange(0, S // 5)
            rows.append({"ts": ts, "recv_ts": recv, "device": device, "tick": k})
    per_batch = max(2, round(0.25 * speed) * 2)  # a batch every 0.25 s of receive time
    for i in range(0, len(rows), per_batch):
        part = rows[i:i + per_batch]
        n = len(part)
        yield part, batch_from_columns({
            "ts": [r["ts"] for r in part], "recv_ts": [r["recv_ts"] for r in part], "site": ["p"] * n,
            "line": ["l"] * n, "device": [r["device"] for r in part], "sensor": ["x"] * n,
            "value": [1.0] * n, "quality": [0] * n, "seq": [i + j for j in range(n)], "lot": ["L"] * n})


@pytest.mark.parametrize("speed", [1.0, 20.0], ids=["plant-clock", "simulator-x20"])
def test_a_clock_that_jumps_ahead_and_one_that_falls_behind_are_reported_for_exactly_their_readings(speed, caplog):
    caplog.set_level(logging.INFO, logger="ingest.detect.clock")
    watch = ClockWatch(60.0)
    skews = {"p/l/plc": (200, 299, 300.0), "p/l/logger": (400, 479, -300.0)}
    marked: set[tuple[str, int]] = set()
    for rows, b in plant(600, speed=speed, skews=skews):
        off = watch.check(b)
        marked |= {(r["device"], r["tick"]) for r, o in zip(rows, off, strict=True) if o}
    assert marked == {("plc", k) for k in range(200, 300)} | {("logger", k) for k in range(400, 480)}
    plc, logger = watch.episodes
    assert (plc.source, plc.readings, plc.ended) == ("p/l/plc", 100, True)
    assert plc.offset_s == pytest.approx(300, abs=10)
    assert (logger.source, logger.readings) == ("p/l/logger", 80) and logger.offset_s == pytest.approx(-300, abs=10)
    assert watch.readings_skewed == 180 and watch.skews == {}
    assert watch.rate == pytest.approx(speed, rel=0.01)
    text = caplog.text
    assert re.search(r"clock_skew source=p/l/plc offset_s=\+(29\d|30\d)\.\d readings=\d+: the device's clock", text)
    assert re.search(r"ingest.clock_skew_end source=p/l/plc offset_s=\+(29\d|30\d)\.\d readings=100", text)
    assert re.search(r"ingest.clock_skew source=p/l/logger offset_s=-(29\d|30\d)\.\d", text)


def test_a_skew_still_going_on_is_listed_as_current():
    watch = ClockWatch(60.0)
    for _, b in plant(300, speed=20.0, skews={"p/l/logger": (150, 10_000, 120.0)}):
        watch.check(b)
    assert list(watch.skews) == ["p/l/logger"] and watch.skews["p/l/logger"] == pytest.approx(120, abs=10)


def test_readings_read_back_from_history_in_one_burst_are_late_not_a_skewed_clock(caplog):
    caplog.set_level(logging.INFO, logger="ingest.detect.clock")
    watch = ClockWatch(60.0)
    batches = list(plant(200, speed=20.0, skews={}))
    for _, b in batches:
        watch.check(b)
    # After an outage the reader reads 150 simulated seconds back from the server's history: old
    # source times, all received at one instant.
    n = 150
    now = R0 + round(200 * S / 20) + S
    burst = batch_from_columns({
        "ts": [T0 + (50 + k) * S for k in range(n)], "recv_ts": [now] * n, "site": ["p"] * n, "line": ["l"] * n,
        "device": ["plc"] * n, "sensor": ["x"] * n, "value": [1.0] * n, "quality": [0] * n,
        "seq": list(range(10_000, 10_000 + n)), "lot": ["L"] * n})
    assert watch.check(burst).sum() > 0  # far behind the plant's clock: kept out of "now"
    for _, b in plant(260, speed=20.0, skews={}, seed=2):
        if b.column("ts")[0].value >= T0 + 205 * S:
            watch.check(b)
    assert watch.readings_skewed == 0 and not watch.episodes and not watch.skews
    assert "ingest.late_readings source=p/l/plc" in caplog.text and "ingest.clock_skew " not in caplog.text


def test_ingest_keeps_every_skewed_reading_counts_them_and_does_not_take_their_time_as_now(tmp_path):
    cfg = load_config(None)
    ingest = Ingest(tmp_path, cfg.detect, cfg.sink, lambda facts: None)
    # A plant's clock (receive time = source time + latency): the PLC runs 250 s ahead, within what
    # the "far future" guard (FUTURE_SKEW_NS, 300 s) would still take as now.
    for _, b in plant(300, speed=1.0, skews={"p/l/plc": (200, 299, 250.0)}, r0=T0):
        ingest.process(b)
    ingest.finish()
    assert read_dataset(tmp_path / "readings").num_rows == 600
    assert ingest.stats.clock_skewed == 100 and list(ingest.clock.skews) == ["p/l/plc"]
    assert ingest.now_ns == T0 + 299 * S  # the logger's last reading, not the PLC's clock 250 s ahead


def test_not_watching_and_bad_settings(tmp_path):
    cfg = load_config(None)
    assert Ingest(tmp_path, cfg.detect, cfg.sink, lambda facts: None, clock_skew_s=None).clock is None
    with pytest.raises(ValueError, match=r"bound_s \(0\) .* must be > 0"):
        ClockWatch(0)
    assert not np.any(ClockWatch(60.0).check(next(plant(4, speed=1.0, skews={}))[1]))  # warm-up: nothing judged

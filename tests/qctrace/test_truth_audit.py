"""The oracle the campaign and the demo trust: which missing readings a gap record explains.

A logger's clock is set a day back at tick 144 and its edge node is down from tick 140 to 150.
The restart gap runs from the last reading spooled (tick 139, true clock) to the first one read
after the restart (tick 150, a day back): in device time that window holds none of the missing
readings, but the two readings bound them in the order the device sent them.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from ledger import Ledger
from ledger import events as E
from qctrace.app import TRUTH_DIR, audit_against_truth
from qctrace.schema import batch_from_columns

T0 = 1_793_000_000 * 10**9
DAY = 86_400 * 10**9
SRC = ("coldchain", "SHP-0001", "logger-01")


def _device_ts(tick: int) -> int:
    return T0 + tick * 10**9 - (DAY if 144 <= tick < 160 else 0)


def _setup(tmp_path, gap_ticks: tuple[int, int] | None, written: range):
    truth = pa.table({"source": ["/".join(SRC)] * 200, "sensor": ["temperature"] * 200,
                      "ts": [_device_ts(t) for t in range(200)], "tick": list(range(200))})
    (tmp_path / TRUTH_DIR).mkdir()
    pq.write_table(truth, tmp_path / TRUTH_DIR / "readings.parquet")
    ticks = [t for t in range(200) if t in written]
    got = pa.Table.from_batches([batch_from_columns({
        "ts": [_device_ts(t) for t in ticks], "recv_ts": [T0 + t * 10**9 for t in ticks],
        "site": [SRC[0]] * len(ticks), "line": [SRC[1]] * len(ticks), "device": [SRC[2]] * len(ticks),
        "sensor": ["temperature"] * len(ticks), "value": [4.0] * len(ticks), "quality": [0] * len(ticks),
        "seq": list(range(len(ticks)))})])
    led = Ledger(tmp_path / "ledger.sqlite")
    if gap_ticks is not None:
        a, b = (_device_ts(t) for t in gap_ticks)
        led.append(E.data_gap("/".join(SRC), min(a, b), max(a, b), "edge node edge1 restarted"))
    return led, got


def test_a_restart_gap_across_a_clock_jump_explains_the_readings_between_its_two_readings(tmp_path):
    led, got = _setup(tmp_path, (139, 150), written=range(200))
    missing = range(140, 150)
    got = got.filter(pa.array([t not in missing for t in range(200)]))
    in_gaps, unexplained = audit_against_truth(tmp_path, led, got)
    assert in_gaps == {"/".join(SRC): 10} and unexplained == {}


def test_a_reading_outside_the_gap_is_still_unexplained(tmp_path):
    """Negative control: the same jump, but tick 151 (after the first reading read again) is lost too."""
    led, got = _setup(tmp_path, (139, 150), written=range(200))
    lost = {*range(140, 150), 151}
    got = got.filter(pa.array([t not in lost for t in range(200)]))
    in_gaps, unexplained = audit_against_truth(tmp_path, led, got)
    assert in_gaps == {"/".join(SRC): 10} and unexplained == {"/".join(SRC): 1}


def test_without_a_gap_record_every_missing_reading_is_unexplained(tmp_path):
    led, got = _setup(tmp_path, None, written=range(200))
    got = got.filter(pa.array([t not in range(140, 150) for t in range(200)]))
    in_gaps, unexplained = audit_against_truth(tmp_path, led, got)
    assert in_gaps == {} and unexplained == {"/".join(SRC): 10}

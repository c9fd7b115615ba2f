"""Timestamps far in the past or future are kept, in the partition of their own (UTC) date.

The decision: a device whose clock says 1970, 1700 or 2200 is wrong,
but its reading is still evidence, so it is stored as sent (``ts`` the device's, ``recv_ts`` ours)
and lands under ``date=<its day>``, where ``qctrace readings --from/--to`` finds it. Nothing is
rejected except what cannot be represented at all: a serial frame whose time is past
timestamp[ns]'s range (year 2262) is refused by the decoder as ``range`` and counted, never a
reading. A far-future clock must not make every other sensor look silent either.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa
import pytest
from click.testing import CliRunner

from edge.frames import FrameDecoder
from firmware_sim.serial_logger import encode_frame
from ingest.sink import read_dataset
from qctrace.cli import cli
from qctrace.schema import Flag


def _ns(iso: str) -> int:
    return int(datetime.fromisoformat(iso).replace(tzinfo=UTC).timestamp()) * 10**9


WHEN = {"epoch": "1970-01-01T00:00:01", "far_past": "1700-01-01T00:00:00", "far_future": "2200-01-01T00:00:00",
        "now": "2026-11-02T08:00:00"}


def test_far_past_and_future_readings_land_in_their_own_date_partition(plant):
    streams = {name: plant.sensor(f"plant1/line1/{name}/temp") for name in WHEN}
    for name, iso in WHEN.items():
        plant.add(streams[name], [(_ns(iso), 20.0 + len(name))])
    plant.ingest_all()
    root = plant.data_dir / "readings"
    dates = sorted(p.name for p in root.rglob("date=*"))
    assert dates == ["date=1700-01-01", "date=1970-01-01", "date=2026-11-02", "date=2200-01-01"]
    assert all(p.resolve().is_relative_to(root.resolve()) for p in root.rglob("*.parquet"))
    got = read_dataset(root)
    by_device = dict(zip(got.column("device").cast(pa.string()).to_pylist(),
                         got.column("ts").cast(pa.int64()).to_pylist(), strict=True))
    assert by_device == {name: _ns(iso) for name, iso in WHEN.items()}


def test_readings_finds_a_year_2200_reading_by_its_own_time(plant):
    s = plant.sensor("plant1/line1/skewed/temp")
    plant.add(s, [(_ns("2200-01-01T00:00:00"), 21.5), (_ns("2026-11-02T08:00:00"), 20.0)])
    plant.ingest_all()
    res = CliRunner().invoke(cli, ["readings", "--from", "2199-12-31", "--to", "2200-01-02", "--data-dir",
                                   str(plant.data_dir)])
    assert res.exit_code == 0, res.output
    rows = res.output.strip().splitlines()
    assert len(rows) == 2 and "2200-01-01" in rows[1] and "21.5" in rows[1]


def test_one_far_future_clock_does_not_make_every_other_sensor_stale(plant):
    import time

    good = plant.sensor("plant1/line1/plc1/weight")
    t0 = time.time_ns() - 120 * 10**9  # a live plant: read as it happens
    plant.add(good, [(t0 + i * 10**9, 500.0 + (i % 3)) for i in range(120)])
    plant.ingest.process(plant.builder.build())
    skewed = plant.sensor("plant1/line1/skewed/temp")
    plant.add(skewed, [(_ns("2200-01-01T00:00:00"), 20.0)])
    plant.ingest.process(plant.builder.build())
    stale = plant.ingest.check_stale()
    assert [e.sensor for e in stale if e.flags & Flag.STALE and "weight" in e.sensor] == []


@pytest.mark.parametrize(("ts_ms", "accepted"), [
    (_ns("2200-01-01T00:00:00") // 10**6, True),  # wrong clock, representable: kept
    (9_300_000_000_000, False),  # past 2262-04-11: no timestamp[ns] can hold it
    (10**17, False),
])
def test_a_frame_time_beyond_what_can_be_stored_is_refused_and_counted(ts_ms, accepted):
    dec = FrameDecoder("logger-01")
    frames = dec.feed(encode_frame("logger-01", 1, ts_ms, 4.0, 50.0, 0, 3.6))
    assert len(frames) == int(accepted)
    assert dec.rejected["range"] == int(not accepted)


def test_a_time_no_timestamp_can_hold_is_refused_counted_and_logged_and_the_rest_of_the_batch_kept(plant, caplog):
    opcua_null = -11_644_473_600 * 10**9  # 1601-01-01, OPC UA's DateTime 0: before 1677, no ns timestamp holds it
    ok = plant.sensor("plant1/line1/plc1/weight")
    odd = plant.sensor("plant1/line1/plc1/no_time")
    plant.add(ok, [(_ns("2026-11-02T08:00:00"), 500.0)])
    plant.add(odd, [(opcua_null, 1.0), (2**63 + 5, 2.0)])
    plant.add(ok, [(_ns("2026-11-02T08:00:01"), 501.0)])
    with caplog.at_level("WARNING", logger="edge.batcher"):
        batch = plant.builder.build()
    assert batch.num_rows == 2 and batch.column("value").to_pylist() == [500.0, 501.0]
    assert plant.builder.rejected_ts == 2
    assert any("batch.rejected_timestamps n=2 sensors=plant1/line1/plc1/no_time" in r.getMessage()
               for r in caplog.records)

"""Replay writes exactly what the live plant would deliver, deterministically, in the reading schema."""

from __future__ import annotations

import asyncio
import hashlib

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from firmware_sim.plant import SimulatedPlant
from firmware_sim.replay import replay
from firmware_sim.scenario import load_scenario
from qctrace.schema import READING_SCHEMA, source_keys


def _digest(path) -> str:
    return hashlib.sha256(pq.read_table(path).to_pandas().to_csv().encode()).hexdigest()


def test_same_seed_gives_identical_readings_and_labels(tmp_path):
    sc = load_scenario("faults")
    a = replay(sc, 5, tmp_path / "a", 900)
    b = replay(sc, 5, tmp_path / "b", 900, chunk_ticks=77)  # chunking changes nothing
    assert a.readings == b.readings > 0
    assert _digest(a.readings_path) == _digest(b.readings_path)
    assert _digest(a.labels_path) == _digest(b.labels_path)
    c = replay(sc, 6, tmp_path / "c", 900)
    assert _digest(a.readings_path) != _digest(c.readings_path)


def test_replay_is_in_the_reading_schema_with_contiguous_seq_per_source(tmp_path):
    res = replay(load_scenario("faults"), 5, tmp_path, 1800)
    t = pq.read_table(res.readings_path)
    assert t.schema.equals(READING_SCHEMA, check_metadata=False)
    keyed = pa.table({"k": source_keys(t), "seq": t.column("seq")})
    for g in keyed.group_by("k").aggregate([("seq", "min"), ("seq", "max"), ("seq", "count")]).to_pylist():
        assert g["seq_min"] == 0 and g["seq_max"] == g["seq_count"] - 1
    # Suppressed samples are absent: 60 s of dropout on cap_torque, 15 s of server restart on the cap line.
    cap_torque = pc.sum(pc.cast(pc.equal(t.column("sensor").cast(pa.string()), "cap_torque"), pa.int64())).as_py()
    assert cap_torque == 1800 - 60 - 15
    bad = pc.sum(pc.cast(pc.equal(t.column("quality"), 2), pa.int64())).as_py()
    assert bad == 30 + 2 * 18  # sensor_fault on one tag; I/O station lost on two tags (2 s Uncertain first)
    uncertain = pc.sum(pc.cast(pc.equal(t.column("quality"), 1), pa.int64())).as_py()
    assert uncertain == 2 * 2
    assert pq.read_table(res.readings_path.parent / "custody.parquet").num_rows == 2 * 3


def test_replay_equals_what_the_live_plant_sent(tmp_path):
    sc = load_scenario("faults")
    ticks = 40

    async def live():
        async with SimulatedPlant(sc, 9, speed=200, processes=False) as plant:
            await plant.run_ticks(asyncio.Event(), max_ticks=ticks)
            return plant.write_truth(tmp_path / "live")

    truth = pq.read_table(asyncio.run(live())["readings"])
    rep = pq.read_table(replay(sc, 9, tmp_path / "replay", ticks).readings_path)

    def rows(source, sensor, ts, value):
        return sorted(zip(source.cast(pa.string()).to_pylist(), sensor.cast(pa.string()).to_pylist(),
                          ts.cast(pa.int64()).to_pylist(), value.to_pylist(), strict=True))

    assert rows(truth.column("source"), truth.column("sensor"), truth.column("ts"), truth.column("value")) == rows(
        source_keys(rep), rep.column("sensor"), rep.column("ts"), rep.column("value"))


def test_the_stress_plant_replays_ten_thousand_tags_per_tick(tmp_path):
    # Its speed (10 M readings) is measured in bench/sim.py, not asserted here.
    res = replay(load_scenario("stress"), 1, tmp_path, 20)
    assert res.readings == 200_000

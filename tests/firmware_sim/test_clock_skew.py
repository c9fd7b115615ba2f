"""A device clock set wrong for a while, live: the PLC's SourceTimestamp and the logger's frame time.

The simulator stamps the target's readings ``magnitude`` seconds off during the fault window and
its ground truth records the times as sent (beside the tick), so the oracle still finds every
reading. Through real readers (OPC UA over TCP, a pty) into a real ingest: every reading the
plant sent is stored once, and exactly the skewed ones are reported as such.
"""

from __future__ import annotations

from importlib import resources

import pyarrow as pa
import pyarrow.compute as pc

from edge import BatchBuilder, OpcUaReader, SeqAllocator, SerialReader, StreamTable
from firmware_sim.plant import SimulatedPlant
from firmware_sim.scenario import parse_scenario
from ingest import Ingest, read_dataset
from ingest.detect.clock import ClockWatch
from qctrace.config import OpcUaClientConfig, load_config
from qctrace.schema import source_keys
from tests.edge.opcua_support import run_readers

SPEED = 80.0
TICKS = 200
SKEWS = {"plant1/line1/plc1": (50.0, 60.0, 300.0), "coldchain/SHP-0001/logger-01": (130.0, 60.0, -300.0)}


def _scenario():
    text = resources.files("firmware_sim").joinpath("scenarios", "demo.toml").read_text()
    plc_at, plc_for, plc_off = SKEWS["plant1/line1/plc1"]
    log_at, log_for, log_off = SKEWS["coldchain/SHP-0001/logger-01"]
    text += (f'\n[[faults]]\nkind = "clock_skew"\ntarget = "plant1/line1/plc1"\nat_s = {plc_at}\n'
             f"duration_s = {plc_for}\nmagnitude = {plc_off}\n"
             f'\n[[faults]]\nkind = "clock_skew"\ntarget = "SHP-0001"\nat_s = {log_at}\n'
             f"duration_s = {log_for}\nmagnitude = {log_off}\n")
    return parse_scenario(text, "demo+clock_skew")


async def test_a_skewed_device_clock_loses_no_reading_and_its_readings_are_reported_as_skewed(tmp_path):
    cfg = load_config(None)
    ingest = Ingest(tmp_path, cfg.detect, cfg.sink, lambda facts: None)
    ingest.clock = ClockWatch(60.0, warm_up_s=0.5, confirm_s=0.5)  # a short run: learn the plant's clock sooner

    async def publish(item) -> None:
        if isinstance(item, pa.RecordBatch):
            ingest.process(item)

    async with SimulatedPlant(_scenario(), seed=4, speed=SPEED) as plant:
        streams, seqs = StreamTable(), SeqAllocator(None)
        readers = [
            OpcUaReader(plant.endpoints["opcua"][0], BatchBuilder(streams, seqs), publish, publishing_interval_ms=50,
                        batch_max_age_s=0.1, opts=OpcUaClientConfig(security_policy="None")),
            SerialReader(plant.endpoints["serial"]["SHP-0001"], "coldchain", "SHP-0001", "logger-01",
                         BatchBuilder(streams, seqs), publish, lot="LOT-X", batch_max_age_s=0.1),
        ]
        await run_readers(readers, plant, TICKS)
        truth = pa.Table.from_batches([*plant._runners[0].truth, *plant.loggers.truth])
    ingest.finish()

    stored = read_dataset(tmp_path / "readings")
    key = ["source", "sensor", "ts"]
    have = pa.table({"source": source_keys(stored), "sensor": stored.column("sensor").cast(pa.string()),
                     "ts": stored.column("ts").cast(pa.int64()), "seen": pa.array([True] * stored.num_rows)})
    sent = pa.table({"source": truth.column("source").cast(pa.string()),
                     "sensor": truth.column("sensor").cast(pa.string()), "ts": truth.column("ts").cast(pa.int64()),
                     "tick": truth.column("tick")})
    joined = sent.join(have, key, join_type="left outer")
    assert stored.num_rows == truth.num_rows == TICKS * 8
    assert pc.sum(pc.is_null(joined.column("seen"))).as_py() == 0, "a reading the plant sent is missing"

    skewed_sent = 0
    for source, (at, dur, _off) in SKEWS.items():
        in_window = sent.filter(pc.and_(pc.equal(sent.column("source"), source),
                                        pc.and_(pc.greater_equal(sent.column("tick"), int(at)),
                                                pc.less(sent.column("tick"), int(at + dur)))))
        skewed_sent += in_window.num_rows
    episodes = {e.source: e for e in ingest.clock.episodes}
    assert set(episodes) == set(SKEWS)
    for source, (_at, dur, off) in SKEWS.items():
        e = episodes[source]
        assert e.ended and abs(e.offset_s - off) < 30, e
        assert e.readings == dur * 4  # four tags; four logger channels
    assert ingest.stats.clock_skewed == skewed_sent == 2 * 60 * 4

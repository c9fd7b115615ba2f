"""Ingest turns a stream of batches and gap records into Parquet rows and provenance facts."""

from __future__ import annotations

from firmware_sim.scenario import load_scenario
from ingest import Ingest, read_dataset
from ledger import Ledger
from qctrace.config import load_config
from qctrace.provenance import Provenance
from qctrace.schema import Gap, batch_from_columns

T0 = 1_793_599_200 * 10**9


def _batch(seqs, value=500.0, lot="LOT-1"):
    n = len(seqs)
    return batch_from_columns({
        "ts": [T0 + s * 10**9 for s in seqs], "recv_ts": [T0] * n, "site": ["plant1"] * n, "line": ["line1"] * n,
        "device": ["plc1"] * n, "sensor": ["filler_weight"] * n, "value": [value] * n, "quality": [0] * n,
        "seq": list(seqs), "lot": [lot] * n,
    })


async def _items(*items):
    for i in items:
        yield i


async def test_gaps_become_ledger_events_and_batches_become_rows(tmp_path):
    cfg = load_config(None)
    ledger = Ledger(tmp_path / "ledger.sqlite")
    prov = Provenance.of(load_scenario("demo"))
    ingest = Ingest(tmp_path, cfg.detect, cfg.sink, lambda facts: ledger.append_many(prov.events_for(facts)))
    gap = Gap("plant1/line1/plc1", T0 + 9 * 10**9, T0 + 20 * 10**9, "connection lost: test")
    await ingest.run(_items(_batch(range(10)), gap, _batch(range(20, 25)), _batch(range(20, 25)),
                            _batch([30], value=600.0)))
    assert ingest.stats.gaps == 1 and ingest.stats.duplicates == 5
    rows = read_dataset(tmp_path / "readings")
    assert sorted(rows.column("seq").to_pylist()) == [*range(10), *range(20, 25), 30]
    kinds = [e.kind for e in ledger.events()]
    assert kinds[:4] == ["input_received", "input_received", "lot_produced", "data_gap"]
    assert "anomaly_episode" in kinds  # 600 g breaks the 505 g USL
    assert kinds[-1] == "data_committed"  # the Parquet file, with its SHA-256
    body = next(ledger.events(kind="data_gap")).as_dict()
    gap_rec = body["qctrace:gap"]
    assert gap_rec["source"] == "plant1/line1/plc1" and gap_rec["start"].endswith("06:00:09.000Z")
    ledger.scan()
    ledger.close()

"""Ingest turns a stream of batches and gap records into Parquet rows and provenance facts."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

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


def _noisy(seqs, seed, sensor="filler_weight", device="plc1"):
    import numpy as np

    rng = np.random.default_rng(seed)
    n = len(seqs)
    values = 500.0 + rng.normal(0, 1.0, n)
    values[rng.random(n) < 0.02] += 8.0  # spikes the learnt state must judge
    return batch_from_columns({
        "ts": [T0 + s * 10**9 for s in seqs], "recv_ts": [T0] * n, "site": ["plant1"] * n, "line": ["line1"] * n,
        "device": [device] * n, "sensor": [sensor] * n, "value": values.tolist(), "quality": [0] * n,
        "seq": list(seqs), "lot": ["LOT-1"] * n,
    })


def test_a_node_handed_between_two_workers_is_flagged_exactly_as_by_one(tmp_path):
    """Detection state travels with its node: one stream, handed w1 → w2 → w1 between commits,
    gets the same flags as one worker that saw all of it; the other node's sensors stay with w2."""
    cfg = load_config(None)
    batches = [_noisy(range(k * 50, (k + 1) * 50), k) for k in range(12)]
    other = [_noisy(range(k * 50, (k + 1) * 50), 100 + k, device="plc9") for k in range(12)]

    alone = Ingest(tmp_path / "alone", cfg.detect, cfg.sink, lambda f: None, "solo")
    for b in batches:
        alone.process(b, "edgeA")
    alone.flush(final=True)

    shared = tmp_path / "shared"
    w1 = Ingest(shared, cfg.detect, cfg.sink, lambda f: None, "w1", adopt_all=False)
    w2 = Ingest(shared, cfg.detect, cfg.sink, lambda f: None, "w2", adopt_all=False)
    w1.adopt("edgeA")
    w2.adopt("edgeB")
    holder, spare = w1, w2
    for k, b in enumerate(batches):
        w2.process(other[k], "edgeB")
        holder.process(b, "edgeA")
        if k % 4 == 3:  # hand over: commit, release, the other adopts from that commit
            holder.release("edgeA")
            spare.adopt("edgeA")
            holder, spare = spare, holder
    w1.flush(final=True)
    w2.flush(final=True)

    def flags(root, device):
        t = read_dataset(root / "readings")
        t = t.filter(pc.equal(t.column("device").cast(pa.string()), device)).sort_by("seq")
        return t.column("seq").to_pylist(), t.column("flags").to_pylist()

    seqs, want = flags(tmp_path / "alone", "plc1")
    assert seqs == list(range(600)) and any(want)  # the spikes were flagged
    assert flags(shared, "plc1") == (seqs, want)
    assert flags(shared, "plc9")[0] == list(range(600))
    # a worker that never held edgeA's sensors does not report them silent
    stale_w = w2 if holder is w1 else w1
    assert all(e.sensor.split("/")[2] != "plc1" for e in stale_w.check_stale())

"""Lot IDs with path separators or control characters, and tag names and lot IDs that would be HTML
or SQL if anything trusted them: stored verbatim, never interpreted, and no path leaves the dataset."""

from __future__ import annotations

import hashlib
import io

import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
from click.testing import CliRunner

from firmware_sim.scenario import load_scenario
from ingest.sink import read_dataset
from ledger import Ledger
from qctrace.cli import cli
from qctrace.provenance import Provenance

T0 = 1_793_599_200 * 10**9

LOTS = ["../../etc/passwd", "C:\\lots\\..\\..\\x", "LOT\x00nul\x07bell\r\nnext line", "<script>alert('lot')</script>",
        "x'; DROP TABLE--", "Robert'); DROP TABLE events;--", "lot %2F..%2F ${HOME} $(id) `id`"]
TAGS = ["<img src=x onerror=alert(1)>", "temp'; DROP TABLE readings;--", "..", "%2e%2e", "ünïcødé ✓"]
PLACES = [("../../outside", ".."), ("site=evil", "line/../../x"), ("plant1", "line1")]


@pytest.fixture
def hostile(plant, tmp_path):
    """Every hostile lot on its own device, every hostile tag on each; ingested with a real ledger."""
    ledger = Ledger(plant.data_dir / "ledger.sqlite")
    prov = Provenance.of(load_scenario("demo"))
    plant.ingest.on_events = lambda facts: ledger.append_many(prov.events_for(facts))
    expected = []
    for i, lot in enumerate(LOTS):
        site, line = PLACES[i % len(PLACES)]
        for j, tag in enumerate(TAGS):
            s = plant.sensor(site, line, f"dev{i}", tag, lot=lot)
            plant.add(s, [(T0 + k * 10**9, float(10 * i + j)) for k in range(3)])
            expected += [(site, line, f"dev{i}", tag, lot, float(10 * i + j))] * 3
    plant.ingest_all()
    ledger.close()
    plant.provenance = prov
    return plant, sorted(expected)


def _rows(table: pa.Table) -> list[tuple]:
    cols = [table.column(c).cast(pa.string()).to_pylist() for c in ("site", "line", "device", "sensor", "lot")]
    return sorted(zip(*cols, table.column("value").to_pylist(), strict=True))


def test_hostile_names_are_stored_verbatim_and_every_file_stays_inside_the_dataset(hostile, tmp_path):
    plant, expected = hostile
    # lots that are no GS1 lot number cannot be ledger lot events: refused (and logged), readings kept
    assert plant.provenance.refused >= 1
    root = (plant.data_dir / "readings").resolve()
    assert _rows(read_dataset(plant.data_dir / "readings")) == expected
    for p in tmp_path.rglob("*"):
        if p.is_file():
            assert p.resolve().is_relative_to(plant.data_dir.resolve()), p
    for p in root.rglob("*.parquet"):
        assert p.resolve().is_relative_to(root)
        assert all(part.startswith(("site=", "line=", "date=")) for part in p.relative_to(root).parts[:-1]), p


@pytest.mark.parametrize("lot", ["x'; DROP TABLE--", "Robert'); DROP TABLE events;--", "../../etc/passwd",
                                 "LOT\x00nul\x07bell\r\nnext line", "<script>alert('lot')</script>"])
def test_readings_by_a_hostile_lot_returns_exactly_that_lots_rows(hostile, lot):
    plant, _ = hostile
    ledger_before = hashlib.sha256((plant.data_dir / "ledger.sqlite").read_bytes()).hexdigest()
    res = CliRunner().invoke(cli, ["readings", "--lot", lot, "--data-dir", str(plant.data_dir)])
    assert res.exit_code == 0, res.output
    got = pacsv.read_csv(io.BytesIO(res.stdout_bytes))
    assert got.num_rows == 3 * len(TAGS)
    assert set(got.column("lot").to_pylist()) == {lot}  # the CSV carries it verbatim, quoted
    keys = set(got.column("sensor_key").to_pylist())
    assert {k.rsplit("/", 1)[-1] for k in keys} == set(TAGS)
    assert hashlib.sha256((plant.data_dir / "ledger.sqlite").read_bytes()).hexdigest() == ledger_before
    with Ledger(plant.data_dir / "ledger.sqlite", readonly=True) as led:
        led.scan()  # the chain is whole: nothing was dropped or rewritten


def test_a_sensor_glob_with_html_in_it_matches_only_that_tag(hostile):
    plant, _ = hostile
    res = CliRunner().invoke(cli, ["readings", "--sensor", "*/<img src=x onerror=alert(1)>", "--data-dir",
                                   str(plant.data_dir)])
    assert res.exit_code == 0, res.output
    got = pacsv.read_csv(io.BytesIO(res.stdout_bytes))
    assert got.num_rows == 3 * len(LOTS)
    assert all(k.endswith("/<img src=x onerror=alert(1)>") for k in got.column("sensor_key").to_pylist())


def test_trace_of_a_sql_lot_is_an_answer_not_an_injection(hostile):
    plant, _ = hostile
    path = plant.data_dir / "ledger.sqlite"
    with Ledger(path, readonly=True) as led:
        n_before = sum(1 for _ in led.events())
    res = CliRunner().invoke(cli, ["trace", "Robert'); DROP TABLE events;--", "--data-dir", str(plant.data_dir)])
    assert "Traceback" not in res.output
    assert res.exit_code in (0, 1), res.output
    assert "Robert'); DROP TABLE events;--" in res.output
    with Ledger(path, readonly=True) as led:
        assert sum(1 for _ in led.events()) == n_before
        led.scan()


def test_a_lot_id_the_ledger_cannot_express_is_an_error_in_the_log_not_a_crash(plant, caplog):
    ledger = Ledger(plant.data_dir / "ledger.sqlite")
    prov = Provenance.of(load_scenario("demo"))
    plant.ingest.on_events = lambda facts: ledger.append_many(prov.events_for(facts))
    s = plant.sensor("plant1", "line1", "plc1", "weight", lot="<script>alert('lot')</script>")
    ok = plant.sensor("plant1", "line2", "plc2", "weight", lot="L2-0001")
    plant.add(s, [(T0, 1.0)])
    plant.add(ok, [(T0, 2.0)])
    with caplog.at_level("ERROR", logger="qctrace.provenance"):
        plant.ingest_all()
    msgs = [r.getMessage() for r in caplog.records]
    assert any("provenance.refused" in m and "<script>alert('lot')</script>" in m and "GS1 lot number" in m
               for m in msgs), msgs
    lots = {e.lot for e in ledger.events()}
    assert "L2-0001" in lots  # the valid lot of the same batch is still recorded
    assert read_dataset(plant.data_dir / "readings").num_rows == 2
    ledger.close()

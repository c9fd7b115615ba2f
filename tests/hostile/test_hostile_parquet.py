"""A Parquet file truncated mid-write: the sink recovers on open and nothing committed is lost; a
committed file damaged afterwards makes `qctrace readings` fail with the file's name, not a traceback."""

from __future__ import annotations

import os

import pytest
from click.testing import CliRunner

from ingest.sink import read_dataset
from qctrace.cli import cli

T0 = 1_793_599_200 * 10**9


def _committed(plant, n: int, lot: str = "L1") -> None:
    s = plant.sensor("plant1/line1/plc1/weight", lot=lot)
    plant.add(s, [(T0 + i * 10**9, 500.0 + i % 5) for i in range(n)])
    plant.ingest_all()


def test_files_torn_by_a_crash_mid_write_are_removed_on_open_and_the_data_redelivered(tmp_path, make_plant):
    data = tmp_path / "data"
    first = make_plant(data)
    _committed(first, 100)
    part = next((data / "readings").rglob("part-*.parquet"))
    good = part.read_bytes()
    # A crash in step 1 (temporary file half written) and one between step 2 and 3 (a renamed file
    # that the commit record does not name yet, also torn): neither was acknowledged upstream.
    (part.parent / ".part-999-torn.parquet.tmp").write_bytes(good[: len(good) // 2])
    (part.parent / "part-999-uncommitted.parquet").write_bytes(good[: len(good) // 3])
    second = make_plant(data)  # ingest restarts: the sink opens the dataset
    assert sorted(p.name for p in part.parent.iterdir()) == [part.name]
    assert read_dataset(data / "readings").num_rows == 100
    s = second.sensor("plant1/line1/plc1/weight", lot="L1")
    second.builder.seqs.take("plant1/line1/plc1", 100)  # the edge's seq reservations survived its restart
    second.add(s, [(T0 + (100 + i) * 10**9, 501.0) for i in range(20)])  # the redelivered batch
    second.ingest_all()
    got = read_dataset(data / "readings")
    assert got.num_rows == 120 and len(set(got.column("ts").to_pylist())) == 120


@pytest.mark.parametrize("damage", ["truncated", "zeroed footer", "not parquet"])
def test_a_damaged_committed_file_is_named_by_readings(plant, damage):
    _committed(plant, 50)
    part = next((plant.data_dir / "readings").rglob("part-*.parquet"))
    raw = part.read_bytes()
    if damage == "truncated":
        part.write_bytes(raw[: len(raw) - 100])
    elif damage == "zeroed footer":
        part.write_bytes(raw[:-12] + bytes(12))
    else:
        part.write_bytes(b"<html>not a parquet file</html>" * 10)
    size = part.stat().st_size
    res = CliRunner().invoke(cli, ["readings", "--lot", "L1", "--data-dir", str(plant.data_dir)])
    assert res.exit_code == 3, res.output
    assert "Traceback" not in res.output
    assert str(part) in res.output and "damaged" in res.output, res.output
    assert "qctrace verify" in res.output  # what to do next
    assert part.stat().st_size == size and os.path.exists(part)  # evidence left as found

"""NaN and ±inf values: kept as sent, flagged NOT_FINITE, and the detectors carry on unharmed."""

from __future__ import annotations

import math

import numpy as np
from click.testing import CliRunner

from ingest.sink import read_dataset
from qctrace.cli import cli
from qctrace.schema import Flag

T0 = 1_793_599_200 * 10**9  # 2026-11-02T08:00:00Z
HOSTILE = {400: math.nan, 401: math.inf, 402: -math.inf, 403: math.nan}


def test_nan_and_infinities_are_stored_flagged_and_do_not_poison_the_detector(plant):
    rng = np.random.default_rng(3)
    temp = plant.sensor("plant1/line1/plc1/seal_temp")
    values = list(180 + rng.normal(0, 0.5, 600))
    for i, v in HOSTILE.items():
        values[i] = v
    values[550] = 195.0  # a real fault after the garbage: 30 sigma
    plant.add(temp, [(T0 + i * 10**9, v) for i, v in enumerate(values)])
    plant.ingest_all()

    got = read_dataset(plant.data_dir / "readings").sort_by("ts")
    assert got.num_rows == plant.added == 600  # nothing dropped
    vals = got.column("value").to_pylist()
    flags = got.column("flags").to_pylist()
    for i, v in HOSTILE.items():
        assert (math.isnan(vals[i]) if math.isnan(v) else vals[i] == v), (i, vals[i])  # kept verbatim, sign too
        assert flags[i] & Flag.NOT_FINITE
    # the value after the garbage is judged against a baseline that the garbage did not touch
    assert flags[550] & (Flag.EWMA_Z | Flag.SPIKE), Flag(flags[550]).rule_names()
    quiet = [i for i in range(404, 550) if flags[i]]
    assert len(quiet) <= 2, [(i, Flag(flags[i]).rule_names()) for i in quiet]
    assert all(math.isfinite(v) for i, v in enumerate(vals) if i not in HOSTILE)


def test_the_cli_exports_non_finite_values_as_text_not_an_error(plant):
    s = plant.sensor("coldchain/SHP-1/logger-01/temperature", lot="LOT-NAN")
    plant.add(s, [(T0, 4.0), (T0 + 10**9, math.nan), (T0 + 2 * 10**9, math.inf), (T0 + 3 * 10**9, -math.inf)])
    plant.ingest_all()
    res = CliRunner().invoke(cli, ["readings", "--lot", "LOT-NAN", "--data-dir", str(plant.data_dir)])
    assert res.exit_code == 0, res.output
    rows = res.output.strip().splitlines()[1:]
    assert len(rows) == 4
    cells = [r.split(",")[2].strip('"').lower() for r in rows]
    assert cells[0] == "4" or float(cells[0]) == 4.0
    assert cells[1] == "nan" and cells[2] == "inf" and cells[3] == "-inf"

"""The one reading schema survives Reading -> Arrow -> Parquet -> Reading unchanged."""

from __future__ import annotations

import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from qctrace.errors import SchemaMismatch
from qctrace.schema import (
    READING_SCHEMA,
    Flag,
    Quality,
    Reading,
    batch_to_readings,
    check_batch,
    flag_names,
    readings_to_batch,
)

names = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12)
readings = st.builds(
    Reading,
    ts=st.integers(0, 2**62),
    recv_ts=st.integers(0, 2**62),
    site=names, line=names, device=names, sensor=names,
    value=st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)),
    quality=st.sampled_from([int(q) for q in Quality]),
    seq=st.integers(0, 2**64 - 1),
    lot=st.one_of(st.none(), names),
    flags=st.integers(0, 2**32 - 1),
)




@given(st.lists(readings, max_size=20))
def test_readings_round_trip_through_arrow_and_parquet(tmp_path_factory, rows):
    batch = readings_to_batch(rows)
    assert batch.schema.equals(READING_SCHEMA)
    path = tmp_path_factory.mktemp("rt") / "r.parquet"
    pq.write_table(pa.Table.from_batches([batch], schema=READING_SCHEMA), path)
    back = batch_to_readings(pq.read_table(path, schema=READING_SCHEMA))
    assert len(back) == len(rows)
    for a, b in zip(rows, back, strict=True):
        assert (a.value is None) == (b.value is None)
        if a.value is not None and math.isnan(a.value):
            assert math.isnan(b.value)
        else:
            assert a == b


def test_a_batch_with_a_foreign_schema_is_refused_with_the_fix():
    bad = pa.record_batch({"ts": [1], "value": [1.0]})
    with pytest.raises(SchemaMismatch, match="batch_from_columns"):
        check_batch(bad)


def test_flag_names_list_set_rules_in_bit_order():
    assert flag_names(0) == ""
    assert flag_names(int(Flag.SPEC_HIGH | Flag.EWMA_Z)) == "SPEC_HIGH,EWMA_Z"


@pytest.mark.parametrize(("code", "quality"), [(0, Quality.GOOD), (0x40000000, Quality.UNCERTAIN),
                                               (0x80000000, Quality.BAD), (0x80320000, Quality.BAD)])
def test_opcua_status_codes_map_to_quality_by_severity(code, quality):
    assert Quality.from_status_code(code) is quality

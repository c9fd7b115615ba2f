"""The dashboard pages render real (small) data without errors and say what the data says.

The dataset is built in-process with the same writers the pipeline uses (``ParquetSink`` and
``Ledger``), so the pages are tested against the real file layout without running the demo.
"""

from __future__ import annotations

import base64
import json
import math
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from dashboard import charts, status, trace
from dashboard.data import ChainStatus, LotEvent
from ingest.sink import ParquetSink
from ledger import Ledger, events
from qctrace.schema import Flag, batch_from_columns

DASHBOARD = Path(__file__).resolve().parents[2] / "dashboard"
LINE_QUALITY = DASHBOARD / "views" / "line_quality.py"
LOT_TRACE = DASHBOARD / "views" / "lot_trace.py"

T0 = 1_767_600_000 * 10**9  # 2026-01-05T08:00:00Z, source time
SECONDS = 120
SPIKES = (100, 101, 102)  # filler_weight above its USL (505) at these seconds, all in lot 2
DRIFT = 110  # one EWMA-only flag on line2's torque
LOT1, LOT2 = "LOT-T-0001", "LOT-T-0002"
GTIN = "0614141.107346"


def _columns(site: str, line: str, device: str, sensors: dict[str, float], lots: bool) -> dict[str, list]:
    cols: dict[str, list] = {k: [] for k in
                             ("ts", "recv_ts", "site", "line", "device", "sensor", "value", "quality", "seq", "lot",
                              "flags")}
    now = time.time_ns()
    seq = 0
    for sec in range(SECONDS):
        for sensor, base in sensors.items():
            value, flags = base + 0.1 * math.sin(sec), 0
            if sensor == "filler_weight" and sec in SPIKES:
                value, flags = 511.0, int(Flag.SPEC_HIGH | Flag.EWMA_Z)
            if sensor == "torque" and sec == DRIFT:
                flags = int(Flag.EWMA_Z)
            cols["ts"].append(T0 + sec * 10**9)
            cols["recv_ts"].append(now - (SECONDS - sec) * 10**6)  # received just now: fresh data
            cols["site"].append(site)
            cols["line"].append(line)
            cols["device"].append(device)
            cols["sensor"].append(sensor)
            cols["value"].append(value)
            cols["quality"].append(0)
            cols["seq"].append(seq)
            cols["lot"].append((LOT1 if sec < 60 else LOT2) if lots else None)
            cols["flags"].append(flags)
            seq += 1
    return cols


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three lines (alarm, warning, OK), two lots, a ledger with one anomaly episode."""
    root = tmp_path_factory.mktemp("data")
    sink = ParquetSink(root=root / "readings", state_dir=root / "ingest")
    for args in (("plant1", "line1", "plc1", {"filler_weight": 500.0, "seal_temp": 180.0}, True),
                 ("plant1", "line2", "plc2", {"torque": 2.4}, False),
                 ("plant2", "line9", "plc9", {"line_speed": 120.0}, False)):
        batch = sink.dedupe(batch_from_columns(_columns(*args)))
        sink.add(batch)
    assert sink.flush()
    with Ledger(root / "ledger.sqlite") as led:
        led.append_many([
            events.lot_produced(LOT1, GTIN, "plant1", "line1", T0),
            events.qc_result(LOT1, GTIN, "plant1", "line1", T0 + 59 * 10**9, readings=120, flagged=0),
            events.lot_produced(LOT2, GTIN, "plant1", "line1", T0 + 60 * 10**9),
            events.anomaly_episode(LOT2, GTIN, "plant1/line1/plc1/filler_weight", T0 + SPIKES[0] * 10**9,
                                   T0 + SPIKES[-1] * 10**9, int(Flag.SPEC_HIGH | Flag.EWMA_Z), "SPEC_HIGH,EWMA_Z",
                                   511.0, 511.0, len(SPIKES)),
        ])
    return root


@pytest.fixture(autouse=True)
def _fresh_caches():
    """Loaders are cached per process; a test must never see another test's data."""
    st.cache_data.clear()
    st.cache_resource.clear()
    yield
    st.cache_data.clear()


def _run(script: Path, data: Path) -> AppTest:
    at = AppTest.from_file(script, default_timeout=30)
    at.session_state["data_dir"] = str(data)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _texts(at: AppTest, *kinds: str) -> str:
    return "\n".join(str(el.value) for kind in kinds for el in getattr(at, kind))


def _figures(at: AppTest) -> list[dict]:
    return [json.loads(el.proto.spec) for el in at.get("plotly_chart")]


def _array(value: list | dict | None) -> list:
    """A trace array from figure JSON; Plotly 6 sends numeric arrays as base64 typed arrays."""
    if isinstance(value, dict):
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"])).tolist()
    return list(value or [])


def test_line_quality_shows_a_tile_per_line_with_its_level(data_dir):
    at = _run(LINE_QUALITY, data_dir)
    alarms, warnings, oks = (_texts(at, k) for k in ("error", "warning", "success"))
    assert "plant1/line1" in alarms and "alarm" in alarms
    assert f"{len(SPIKES)} flagged in the last minute" in alarms and "SPEC\\_HIGH" in alarms
    assert "plant1/line2" in warnings and "1 flagged in the last minute" in warnings
    assert "plant2/line9" in oks and "0 flagged" in oks
    assert "data is" in alarms  # staleness on the tile too


def test_line_quality_charts_the_chosen_line_with_limits_and_flagged_points(data_dir):
    at = _run(LINE_QUALITY, data_dir)
    line = at.selectbox(key="lq_line")
    assert line.value == ("plant1", "line1")  # the first line, sorted
    assert at.selectbox(key="lq_sensor").options == [
        "All sensors", "plant1/line1/plc1/filler_weight", "plant1/line1/plc1/seal_temp"]

    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Newest reading (source time, UTC)"] == "08:01:59"
    assert metrics["Flagged in the last 120 s"] == f"{len(SPIKES)} of {2 * SECONDS}"
    assert "data is 0 s old" in _texts(at, "caption") or "data is 1 s old" in _texts(at, "caption")
    assert "filler\\_weight" in _texts(at, "markdown") and f"{len(SPIKES)} flagged" in _texts(at, "markdown")

    figures = _figures(at)
    assert len(figures) == 2
    filler = figures[0]
    flagged = next(t for t in filler["data"] if t["name"] == "flagged")
    assert flagged["customdata"] == ["SPEC_HIGH,EWMA_Z"] * len(SPIKES)
    assert _array(flagged["y"]) == [511.0] * len(SPIKES)
    labels = {a["text"] for a in filler["layout"]["annotations"]}
    assert {"LSL 495", "USL 505"} <= labels and any(t.startswith("mean ") for t in labels)
    # seal_temp has limits too (170..190) but no flagged point.
    assert _array(next(t for t in figures[1]["data"] if t["name"] == "flagged").get("y")) == []


def test_line_quality_sensor_filter_and_other_line(data_dir):
    at = _run(LINE_QUALITY, data_dir)
    at.selectbox(key="lq_line").set_value(("plant1", "line2")).run()
    assert not at.exception
    assert at.selectbox(key="lq_sensor").options == ["All sensors", "plant1/line2/plc2/torque"]
    at.selectbox(key="lq_sensor").set_value("plant1/line2/plc2/torque").run()
    figures = _figures(at)
    assert len(figures) == 1
    labels = {a["text"] for a in figures[0]["layout"]["annotations"]}
    assert {"LSL 2", "USL 2.8"} <= labels  # from the */*/*/torque rule of the demo configuration


def test_line_quality_without_data_says_so(tmp_path):
    at = _run(LINE_QUALITY, tmp_path)
    assert "No readings yet" in _texts(at, "info")
    assert not at.get("plotly_chart")


def test_lot_trace_shows_verified_chain_events_anomalies_and_summary(data_dir):
    at = _run(LOT_TRACE, data_dir)
    assert _texts(at, "success").startswith("chain verified: 4 events, head ")
    lot = at.selectbox(key="lt_lot")
    assert lot.options == [LOT2, LOT1] and lot.value == LOT2  # newest first

    ev, anomalies, summary = (d.value for d in at.dataframe)
    assert list(ev["kind"]) == ["lot_produced", "anomaly_episode"]
    assert list(ev["idx"]) == [2, 3] and set(ev["chain"]) == {"ok"}
    assert list(ev["where"]) == ["plant1/line1"] * 2
    assert "plc1/filler_weight: SPEC_HIGH,EWMA_Z on 3 readings" in ev["details"].iloc[1]
    assert anomalies.iloc[0]["sensor"] == "plant1/line1/plc1/filler_weight"
    assert anomalies.iloc[0]["rules"] == "SPEC_HIGH,EWMA_Z" and anomalies.iloc[0]["readings"] == len(SPIKES)
    by_sensor = summary.set_index("sensor_key")
    assert by_sensor.loc["plant1/line1/plc1/filler_weight", "flagged"] == len(SPIKES)
    assert by_sensor.loc["plant1/line1/plc1/filler_weight", "readings"] == SECONDS - 60
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Anomaly episodes"] == "1" and metrics["Flagged readings"] == str(len(SPIKES))

    at.selectbox(key="lt_lot").set_value(LOT1).run()
    assert not at.exception
    ev = at.dataframe[0].value
    assert list(ev["kind"]) == ["lot_produced", "qc_result"]
    assert "lot finished: 120 readings, 0 flagged" in list(ev["details"])
    assert "No anomaly episode" in _texts(at, "caption")


def test_lot_trace_shows_the_integrity_error_of_a_tampered_ledger(data_dir, tmp_path):
    ledger = tmp_path / "ledger.sqlite"
    ledger.write_bytes((data_dir / "ledger.sqlite").read_bytes())
    with sqlite3.connect(ledger) as db:
        body = db.execute("SELECT body FROM events WHERE idx = 3").fetchone()[0]
        db.execute("UPDATE events SET body = ? WHERE idx = 3", (bytes(body).replace(b'"readings":3', b'"readings":1'),))
    db.close()
    at = _run(LOT_TRACE, tmp_path)
    assert not at.success
    error = _texts(at, "error")
    assert "ledger integrity check failed" in error
    assert "content changed" in error and "3" in error
    ev = at.dataframe[0].value
    assert list(ev["chain"]) == ["ok", "NOT VERIFIED"]  # event #2 is before the bad one, #3 is it


def test_lot_trace_without_ledger_says_so(tmp_path):
    at = _run(LOT_TRACE, tmp_path)
    assert "No ledger to verify yet" in _texts(at, "info")
    assert not at.selectbox and not at.error


def test_app_entry_navigates_both_pages(data_dir):
    at = _run(DASHBOARD / "app.py", data_dir)
    assert [t.value for t in at.title] == ["Line quality"]
    at.switch_page("views/lot_trace.py").run()
    assert not at.exception
    assert [t.value for t in at.title] == ["Lot trace"]
    assert "chain verified" in _texts(at, "success")


def test_status_rules():
    assert status.classify(0, 0) is status.Level.OK
    assert status.classify(2, int(Flag.EWMA_Z | Flag.BAD_QUALITY)) is status.Level.WARNING
    assert status.classify(1, int(Flag.SPEC_LOW)) is status.Level.ALARM
    assert status.classify(1, int(Flag.NOT_FINITE)) is status.Level.ALARM
    assert status.describe_age(None) == "no data yet"
    assert status.describe_age(4.4) == "data is 4 s old"


def test_chart_and_trace_helpers_tolerate_odd_input():
    import pandas as pd

    empty = pd.DataFrame({"ts": pd.to_datetime([], utc=True), "value": [], "flags": []})
    fig = charts.control_chart(empty, "s/l/d/x", None, None)
    assert [t.name for t in fig.data] == ["value", "flagged"]
    broken = LotEvent(0, "lot_started", "2026-01-01T00:00:00.000Z", "ab" * 32, None)
    table = trace.events_table([broken], ChainStatus("broken", "x", bad_index=0))
    assert table.iloc[0]["details"] == "(stored body is not valid JSON)"
    assert table.iloc[0]["chain"] == "NOT VERIFIED"
    # An event appended after a cached successful check is not accused, just not checked yet.
    checked = ChainStatus("verified", events=1, head="00" * 32)
    assert [checked.event_label(i) for i in (0, 1)] == ["ok", "not yet checked"]

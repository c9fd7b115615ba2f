"""Every dashboard page on the demo dataset (Streamlit's AppTest): what it shows, who may see it, and
that every privileged action is re-checked when it runs and lands in the ledger with the user's name.

Expected numbers are computed here from the same Parquet files and ledger by other means
(pyarrow, the Ledger API, alarm_ops), never copied from the page.
"""

from __future__ import annotations

import json
import math
import os
import re
import sqlite3
import time
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest
import streamlit as st
from click.testing import CliRunner
from streamlit.testing.v1 import AppTest

from dashboard import auth, charts, data, genealogy
from ingest.sink import ParquetSink, read_dataset
from ledger import Ledger
from qctrace.config import load_config
from qctrace.errors import ConfigError
from qctrace.schema import Flag, batch_from_columns

DASHBOARD = Path(__file__).resolve().parents[2] / "dashboard"
VIEWS = DASHBOARD / "views"
TECH = {"name": "tech", "role": "technician"}
COMPLIANCE = {"name": "compliance", "role": "compliance"}
ADMIN = {"name": "admin", "role": "admin"}
DEMO_PASSWORDS = {"tech": "tech-demo", "compliance": "compliance-demo", "admin": "admin-demo"}


@pytest.fixture(autouse=True)
def _fresh_caches():
    """Loaders are cached per process; a test must never see another test's data."""
    st.cache_data.clear()
    st.cache_resource.clear()
    yield
    st.cache_data.clear()


def _app(script: Path, data_dir: Path, user: dict | None, config: Path | None = None) -> AppTest:
    at = AppTest.from_file(str(script), default_timeout=60)
    at.session_state["data_dir"] = str(data_dir)
    if config is not None:
        at.session_state["config_path"] = str(config)
    if user is not None:
        at.session_state["user"] = dict(user)
    return at


def _run(script: Path, data_dir: Path, user: dict | None, config: Path | None = None) -> AppTest:
    at = _app(script, data_dir, user, config)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _texts(at: AppTest, *kinds: str) -> str:
    return "\n".join(str(el.value) for kind in kinds for el in getattr(at, kind))


def _plain(at: AppTest, *kinds: str) -> str:
    """The texts as a reader sees them: Markdown escapes (from ``ui.md_escape``) removed."""
    return re.sub(r"\\(.)", r"\1", _texts(at, *kinds))


def _button(at: AppTest, key: str):
    return next(b for b in at.button if b.key == key)


def _config_without(tmp_path: Path, drop: str | None = None, demote: tuple[str, str] | None = None) -> Path:
    """The demo configuration with one user removed or given another role (as an admin would edit it)."""
    text = (Path(__file__).resolve().parents[2] / "qctrace" / "demo.toml").read_text()
    users = load_config().dashboard.auth.users
    lines = [ln for ln in text.splitlines() if not ln.startswith(("[dashboard.auth", "role =", "password_hash ="))]
    for name, u in users.items():
        if name == drop:
            continue
        role = demote[1] if demote and demote[0] == name else u.role
        lines += [f"[dashboard.auth.users.{name}]", f'role = "{role}"', f'password_hash = "{u.password_hash}"']
    out = tmp_path / "qctrace.toml"
    out.write_text("\n".join(lines) + "\n")
    return out


# ---------------------------------------------------------------- login and roles

def test_login_form_refuses_a_wrong_password_and_admits_the_right_one(demo_dir):
    at = _run(DASHBOARD / "app.py", demo_dir, None)
    assert "Log in" in _texts(at, "subheader") and not at.title[1:]
    at.text_input(key="login_name").set_value("tech")
    at.text_input(key="login_password").set_value("not-the-password")
    at.button[0].click().run()
    assert "Unknown user name or wrong password." in _texts(at, "error")
    assert "user" not in at.session_state
    at.text_input(key="login_password").set_value(DEMO_PASSWORDS["tech"])
    at.button[0].click().run()
    assert not at.exception
    assert at.session_state["user"] == TECH
    assert [t.value for t in at.title] == ["Line quality"]  # the technician's first page
    assert "Logged in as **tech** (technician)" in _texts(at, "caption")


def test_each_role_sees_only_its_pages():
    tech, comp, admin = (auth.User("x", r) for r in ("technician", "compliance", "admin"))
    assert [p for p in auth.PAGES if auth.can_open(tech, p)] == ["line_quality", "cold_chain"]
    assert [p for p in auth.PAGES if auth.can_open(comp, p)] == ["cold_chain", "trace", "ledger"]
    assert [p for p in auth.PAGES if auth.can_open(admin, p)] == list(auth.PAGES)
    assert not auth.can_open(None, "cold_chain")


def test_a_technician_cannot_open_the_trace_page(demo_dir):
    at = _run(VIEWS / "lot_trace.py", demo_dir, TECH)
    assert "The technician role cannot open this page." in _texts(at, "error")
    assert not at.dataframe and not at.selectbox and not at.title


def test_a_logged_out_session_sees_no_page_data(demo_dir):
    for view in ("line_quality.py", "cold_chain.py", "lot_trace.py", "ledger_view.py"):
        at = _run(VIEWS / view, demo_dir, None)
        assert "Log in to see this page." in _texts(at, "warning")
        assert not at.dataframe and not at.metric


def test_password_hashes_are_salted_scrypt_and_checked_in_constant_time():
    h1, h2 = auth.hash_password("s3cret"), auth.hash_password("s3cret")
    assert h1 != h2 and h1.startswith("scrypt$16384$8$1$") and "s3cret" not in h1
    assert auth.check_password("s3cret", h1) and not auth.check_password("s3cret!", h1)
    assert not auth.check_password("s3cret", "scrypt$garbage")
    with pytest.raises(ValueError):
        auth.hash_password("")


def test_users_hash_password_cli_prints_a_hash_the_config_accepts(tmp_path):
    from qctrace.cli import cli

    res = CliRunner().invoke(cli, ["users", "hash-password", "--name", "dora", "--role", "compliance"],
                             input="pa55word\npa55word\n")
    assert res.exit_code == 0, res.output
    assert "pa55word" not in res.output.split("Repeat for confirmation:")[-1]  # the secret is never echoed back
    table = res.output[res.output.index("[dashboard.auth.users.dora]"):]
    cfg = tmp_path / "c.toml"
    cfg.write_text(table)
    users = load_config(cfg).dashboard.auth
    assert auth.login(users, "dora", "pa55word") == auth.User("dora", "compliance")
    assert auth.login(users, "dora", "wrong") is None and auth.login(users, "nobody", "pa55word") is None


def test_a_malformed_password_hash_is_a_config_error_naming_the_key(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[dashboard.auth.users.eve]\nrole = "admin"\npassword_hash = "plaintext"\n')
    with pytest.raises(ConfigError, match=r"dashboard\.auth\.users\.eve\.password_hash"):
        load_config(cfg)
    cfg.write_text('[dashboard.auth.users.eve]\nrole = "boss"\npassword_hash = "x"\n')
    with pytest.raises(ConfigError, match=r"dashboard\.auth\.users\.eve\.role"):
        load_config(cfg)


# ---------------------------------------------------------------- line quality

def test_line_quality_tiles_charts_and_counts_match_the_parquet_data(demo_dir):
    # The demo has stopped; make its last commit look a minute old whatever the tests before took,
    # so the staleness banner is decided by the data, not by how fast this machine is.
    commit = demo_dir / "ingest" / "commit.json"
    old = time.time() - 60
    os.utime(commit, (old, old))
    st.cache_data.clear()
    table = read_dataset(demo_dir / "readings")
    at = _run(VIEWS / "line_quality.py", demo_dir, TECH)
    tiles = _texts(at, "success", "warning", "error")
    for site, line in {(s, ln) for s, ln in zip(table.column("site").to_pylist(), table.column("line").to_pylist(),
                                                strict=True)}:
        assert f"**{site}/{line}**".replace("-", "\\-") in tiles
    line_sel = at.selectbox(key="lq_line")
    assert line_sel.value == ("coldchain", "SHP-0001")
    line_sel.set_value(("plant1", "line1")).run()
    at.select_slider(key="lq_window").set_value(1800).run()
    assert not at.exception
    mine = table.filter(pc.and_(pc.equal(table.column("site").cast("string"), "plant1"),
                                pc.equal(table.column("line").cast("string"), "line1")))
    sensors = sorted(set(mine.column("sensor").cast("string").to_pylist()))
    figures = [json.loads(el.proto.spec) for el in at.get("plotly_chart")]
    assert len(figures) == len(sensors) == 4
    ts = mine.column("ts").cast("int64").to_numpy()
    in_window = ts > ts.max() - 1800 * 10**9
    flagged = int((mine.column("flags").to_numpy()[in_window] != 0).sum())
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Flagged in the last 1800 s"] == f"{flagged} of {int(in_window.sum())}"
    assert flagged > 0  # the demo's spike and shift are in the window
    labels = [a["text"] for f in figures for a in f["layout"].get("annotations", [])]
    for prefix in ("CL ", "UCL ", "LCL ", "LSL 495", "USL 505", "LSL 170", "USL 190"):
        assert any(t.startswith(prefix) for t in labels), prefix
    rule_traces = [t for f in figures for t in f["data"] if t["name"] != "value"]
    assert rule_traces and all(t["name"] in charts.WHY for t in rule_traces)
    assert all(t["marker"]["color"] == charts.RULE_COLOURS.get(t["name"], charts.NELSON_COLOUR) for t in rule_traces)
    assert all(":" in why for t in rule_traces for why in t["customdata"])  # the hover says why
    assert "Ingest looks down: nothing committed since" in _texts(at, "warning")  # the demo has stopped


def test_line_quality_with_500_sensors_queries_only_the_page_on_screen(tmp_path):
    n_sensors, seconds, t0 = 500, 30, 1_767_600_000 * 10**9
    sink = ParquetSink(root=tmp_path / "readings", state_dir=tmp_path / "ingest")
    rows = n_sensors * seconds
    sensor = [f"s{i:03d}" for i in range(n_sensors)] * seconds
    sec = np.repeat(np.arange(seconds), n_sensors)
    now = time.time_ns()
    cols = {"ts": (t0 + sec * 10**9).tolist(), "recv_ts": [now] * rows, "site": ["big"] * rows,
            "line": ["l<b>1</b>"] * rows, "device": ["d"] * rows, "sensor": sensor,
            "value": (np.sin(sec) + 10).tolist(), "quality": [0] * rows, "seq": list(range(rows)), "lot": [None] * rows,
            "flags": [int(Flag.SPIKE) if k == 7 * n_sensors + 3 else 0 for k in range(rows)]}  # s003 at 7 s
    sink.add(sink.dedupe(batch_from_columns(cols)))
    assert sink.flush()
    at = _run(VIEWS / "line_quality.py", tmp_path, TECH)
    assert "**big/l\\<b\\>1\\</b\\>** — **warning**" in _texts(at, "warning")  # escaped; a spike only warns
    assert len(at.get("plotly_chart")) == 6
    assert {m.label: m.value for m in at.metric}["Flagged in the last 120 s"] == f"1 of {6 * seconds}"
    assert "500 sensors on big/l\\<b\\>1\\</b\\>; showing 1–6" in _texts(at, "caption")
    at.number_input(key="lq_page").set_value(84).run()
    assert len(at.get("plotly_chart")) == 500 - 83 * 6
    assert "showing 499–500" in _texts(at, "caption")
    at.text_input(key="lq_filter").set_value("s12").run()
    assert "10 sensors" in _texts(at, "caption")


def test_technician_acknowledges_an_alarm_and_the_ledger_names_them(demo_copy):
    from qctrace import alarm_ops

    cfg = load_config().with_overrides(data_dir=demo_copy)
    unacked = [a for a in alarm_ops.list_alarms(cfg) if a.state.startswith("UNACK")]
    assert unacked, "the demo raises alarms (spike, shift, door)"
    at = _run(VIEWS / "line_quality.py", demo_copy, TECH)
    target = at.selectbox(key="ack_id").value
    at.text_input(key="ack_comment").set_value("checked the filler")
    _button(at, "ack").click().run()
    assert not at.exception
    assert "Acknowledged by tech" in _texts(at, "success")
    after = {a.id: a for a in alarm_ops.list_alarms(cfg)}
    assert after[target].acked_by == "tech"
    with Ledger(demo_copy / "ledger.sqlite", readonly=True) as led:
        last = json.loads(list(led.events())[-1].body)
    assert "tech" in json.dumps(last) and "checked the filler" in json.dumps(last)


def test_acknowledge_by_a_removed_user_is_refused_and_changes_nothing(demo_copy, tmp_path):
    at = _run(VIEWS / "line_quality.py", demo_copy, TECH)
    n = len(Ledger(demo_copy / "ledger.sqlite", readonly=True))
    at.session_state["config_path"] = str(_config_without(tmp_path, drop="tech"))  # an admin removed tech
    _button(at, "ack").click().run()
    assert "user 'tech' no longer exists in the configuration; nothing was changed" in _plain(at, "error")
    assert len(Ledger(demo_copy / "ledger.sqlite", readonly=True)) == n


# ---------------------------------------------------------------- cold chain

def test_cold_chain_shows_the_shipment_band_budget_and_mkt(demo_dir):
    from ingest.query import lot_mkt

    at = _run(VIEWS / "cold_chain.py", demo_dir, TECH)
    ships = at.dataframe[0].value
    row = ships.set_index("shipment").loc["SHP-0001"]
    assert row["status"] == "delivered" and row["customer"] == "FreshMart Store 12"
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Status"] == "delivered"
    lot = row["lots"].split(", ")[0]
    expected = next(iter(lot_mkt(demo_dir / "readings", lot).values()))
    assert math.isclose(float(metrics["Mean kinetic temperature"].split()[0]), expected, abs_tol=0.02)
    table = read_dataset(demo_dir / "readings")
    temp = table.filter(pc.equal(table.column("sensor").cast("string"), "temperature"))
    v = temp.column("value").to_numpy()
    t = temp.column("ts").cast("int64").to_numpy()
    order = np.argsort(t)
    held = np.append(np.minimum(np.diff(t[order]) / 1e9, 300), 0)
    out_min = held[(v[order] < 2) | (v[order] > 8)].sum() / 60
    assert metrics["Out of band"] == f"{out_min:.1f} min"
    assert metrics["Excursion budget used"] == f"{out_min / 30:.0%}"
    custody = at.dataframe[1].value
    steps = list(custody["step"])
    assert steps[0] == "packed" and "shipping" in steps and "delivered" in steps
    band = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert any("band 2–8 °C" in a["text"] for a in band["layout"]["annotations"])


# ---------------------------------------------------------------- trace

def _lot_with_everything(demo_dir: Path) -> str:
    with Ledger(demo_dir / "ledger.sqlite", readonly=True) as led:
        packed = [json.loads(e.body) for e in led.events(kind="lot_packed")]
    return packed[0]["childQuantityList"][0]["epcClass"].rsplit(".", 1)[-1]


def test_trace_page_shows_badges_genealogy_events_and_readings(demo_dir):
    lot = _lot_with_everything(demo_dir)
    at = _run(VIEWS / "lot_trace.py", demo_dir, COMPLIANCE)
    at.selectbox(key="lt_lot").set_value(lot).run()
    assert not at.exception
    ok = _texts(at, "success")
    with Ledger(demo_dir / "ledger.sqlite", readonly=True) as led:
        n_events, size = len(led), led.checkpoints()[-1][0]
        lot_events = list(led.events(lot=lot))
    assert f"chain verified: {n_events} events" in ok
    assert "**checkpoint signed**" in ok and f"signed checkpoint at size {size}" in ok
    assert "**root anchored**" in ok and f"size {size} anchored on chain" in ok
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Ledger events"] == str(len(lot_events))
    summary = read_dataset(demo_dir / "readings")
    n_read = int(pc.sum(pc.equal(summary.column("lot").cast("string"), lot)).as_py())
    assert metrics["Readings"] == str(n_read)
    dot = at.get("graphviz_chart")[0].proto.spec
    assert f'label="lot: {lot}"' in dot and "shipment: SHP-0001" in dot and "party: FreshMart Store 12" in dot
    assert "lot: TP-2611-0000" in dot  # backward: the tomato paste it was made from
    backward, forward = at.dataframe[0].value, at.dataframe[1].value
    assert "SHP-0001" in " ".join(forward["names"]) and "Valle Verde Farms" in " ".join(backward["names"])


def test_trace_search_narrows_the_lots(demo_dir):
    at = _run(VIEWS / "lot_trace.py", demo_dir, COMPLIANCE)
    at.text_input(key="lt_search").set_value("TP-").run()
    assert all("TP-" in o for o in at.selectbox(key="lt_lot").options)
    at.text_input(key="lt_search").set_value("no such lot").run()
    assert "No lot matches that search." in _texts(at, "warning")


def test_trace_exports_epcis_fsma_bundle_and_quality_report(demo_dir):
    lot = _lot_with_everything(demo_dir)
    at = _run(VIEWS / "lot_trace.py", demo_dir, COMPLIANCE)
    at.selectbox(key="lt_lot").set_value(lot).run()
    _button(at, "lt_prepare").click().run()
    assert not at.exception and not at.error
    prepared = at.session_state["lt_exports"]
    name, blob, _ = prepared["epcis"]
    doc = json.loads(blob)
    assert name == f"{lot}-epcis.json" and doc["type"] == "EPCISDocument"
    assert any(lot in json.dumps(e) for e in doc["epcisBody"]["eventList"])
    assert prepared["fsma"][1][:2] == b"PK" and prepared["bundle"][1][:2] == b"PK"  # xlsx and zip
    name, blob, mime = prepared["report"]
    assert name == f"{lot}-quality-report.pdf" and blob[:5] == b"%PDF-" and mime == "application/pdf"
    assert len([b for b in at.get("download_button")]) == 4


def test_compliance_holds_a_lot_and_the_ledger_names_them(demo_copy):
    lot = _lot_with_everything(demo_copy)
    at = _run(VIEWS / "lot_trace.py", demo_copy, COMPLIANCE)
    at.selectbox(key="lt_lot").set_value(lot).run()
    at.text_input(key="hold_reason").set_value("seal temperature drift <script>x</script>")
    next(b for b in at.button if b.label == "Put lot on hold").click().run()
    assert not at.exception
    with Ledger(demo_copy / "ledger.sqlite", readonly=True) as led:
        ev = list(led.events(kind="lot_held"))
    assert len(ev) == 1 and f"ledger event #{ev[0].idx}" in _texts(at, "success")
    body = json.loads(ev[0].body)
    assert body["qctrace:by"] == "compliance" and body["qctrace:reason"].startswith("seal temperature drift")
    at.run()
    shown = _texts(at, "error")
    assert "is ON HOLD by compliance" in shown and "\\<script\\>" in shown and "<script>" not in shown


def test_recall_by_a_demoted_user_is_refused_and_changes_nothing(demo_copy, tmp_path):
    lot = _lot_with_everything(demo_copy)
    at = _run(VIEWS / "lot_trace.py", demo_copy, COMPLIANCE)
    at.selectbox(key="lt_lot").set_value(lot).run()
    n = len(Ledger(demo_copy / "ledger.sqlite", readonly=True))
    at.session_state["config_path"] = str(_config_without(tmp_path, demote=("compliance", "technician")))
    at.text_input(key="recall_reason").set_value("listeria")
    at.checkbox(key="recall_sure").check()
    next(b for b in at.button if b.label == "Start recall").click().run()
    assert "recall: the technician role may not do this" in _plain(at, "error")
    assert len(Ledger(demo_copy / "ledger.sqlite", readonly=True)) == n
    assert not (demo_copy / "recalls").exists()


def test_a_hold_from_a_session_that_logged_out_is_refused(demo_copy):
    lot = _lot_with_everything(demo_copy)
    at = _run(VIEWS / "lot_trace.py", demo_copy, COMPLIANCE)
    at.selectbox(key="lt_lot").set_value(lot).run()
    n = len(Ledger(demo_copy / "ledger.sqlite", readonly=True))
    at.text_input(key="hold_reason").set_value("late click")
    del at.session_state["user"]  # logged out (in this tab) after the form was drawn
    next(b for b in at.button if b.label == "Put lot on hold").click().run()
    assert "Log in to see this page." in _texts(at, "warning")
    assert len(Ledger(demo_copy / "ledger.sqlite", readonly=True)) == n
    # and the check inside the action itself, for any caller that gets that far:
    with pytest.raises(auth.PermissionDenied, match="you are not logged in"):
        auth.authorize(load_config().dashboard.auth, None, "hold")


def test_recall_by_compliance_is_recorded_with_scope_and_exports(demo_copy):
    lot = _lot_with_everything(demo_copy)
    at = _run(VIEWS / "lot_trace.py", demo_copy, COMPLIANCE)
    at.selectbox(key="lt_lot").set_value(lot).run()
    at.text_input(key="recall_reason").set_value("glass fragments")
    next(b for b in at.button if b.label == "Start recall").click().run()
    assert "tick the box" in _texts(at, "error")  # no confirmation, no recall
    at.text_input(key="recall_reason").set_value("glass fragments")
    at.checkbox(key="recall_sure").check()
    next(b for b in at.button if b.label == "Start recall").click().run()
    assert not at.exception
    with Ledger(demo_copy / "ledger.sqlite", readonly=True) as led:
        ev = list(led.events(kind="lot_recalled"))
    assert len(ev) == 1 and json.loads(ev[0].body)["qctrace:by"] == "compliance"
    assert f"recorded as ledger event #{ev[0].idx}" in _texts(at, "success")
    assert (demo_copy / "recalls" / lot / "fsma204.xlsx").is_file()


# ---------------------------------------------------------------- ledger

def test_ledger_page_lists_checkpoints_and_runs_full_verification(demo_dir):
    at = _run(VIEWS / "ledger_view.py", demo_dir, ADMIN)
    with Ledger(demo_dir / "ledger.sqlite", readonly=True) as led:
        n, cps, anchors = len(led), led.checkpoints(), led.anchors()
    metrics = {m.label: m.value for m in at.metric}
    assert metrics == {"Events": str(n), "Signed checkpoints": str(len(cps)), "Anchored": str(len(anchors))}
    table = at.dataframe[0].value
    assert list(table["size"]) == sorted((s for s, _ in cps), reverse=True)
    _button(at, "verify").click().run()
    assert not at.exception
    assert f"**Ledger verified**: {n} events" in _texts(at, "success")
    assert f"anchors    OK  {len(anchors)} on chain" in at.code[0].value


def test_ledger_verification_names_the_first_bad_event_of_a_tampered_ledger(demo_copy):
    with sqlite3.connect(demo_copy / "ledger.sqlite") as db:
        idx, body = db.execute("SELECT idx, body FROM events WHERE kind = 'qc_result' LIMIT 1").fetchone()
        db.execute("UPDATE events SET body = ? WHERE idx = ?", (bytes(body).replace(b'"flagged":', b'"flagged":1'),
                                                                idx))
    db.close()
    at = _run(VIEWS / "ledger_view.py", demo_copy, COMPLIANCE)
    assert "ledger integrity check failed" in _texts(at, "error")
    _button(at, "verify").click().run()
    assert "**Verification failed**" in _plain(at, "error") and str(idx) in _plain(at, "error")


def test_technician_may_not_run_full_verification(demo_dir):
    at = _run(VIEWS / "ledger_view.py", demo_dir, TECH)
    assert "The technician role cannot open this page." in _texts(at, "error")


# ---------------------------------------------------------------- pure helpers

def test_genealogy_dot_quotes_names_from_data():
    g = data.Genealogy("L1", "urn:epc:class:lgtin:0614141.107346.L1", edges=(
        ("urn:epc:class:lgtin:0614141.107346.L1", 'urn:qctrace:party:Evil "Co" \\ <b>x</b>'),))
    dot = genealogy.to_dot(g)
    assert 'label="party: Evil \\"Co\\" \\\\ <b>x</b>"' in dot  # a quoted string, never an HTML label
    assert "label=<" not in dot


def test_excursion_counts_time_held_out_of_band_and_caps_silences():
    t = np.array([0, 60, 120, 1000], dtype=np.int64) * 10**9
    v = np.array([5.0, 9.0, 5.0, 5.0])
    exc = data.excursion(t, v, (2.0, 8.0), 30.0, 83144.0)
    assert exc.out_of_band_min == pytest.approx(1.0) and exc.budget_used == pytest.approx(1 / 30)
    silent = data.excursion(np.array([0, 10_000], dtype=np.int64) * 10**9, np.array([9.0, 5.0]), (2.0, 8.0), 30.0,
                            83144.0)
    assert silent.out_of_band_min == pytest.approx(5.0)  # one interval counts at most 300 s
    assert data.excursion(np.array([], dtype=np.int64), np.array([]), (2.0, 8.0), 30.0, 83144.0).readings == 0


def test_primary_rule_prefers_spec_over_statistics():
    assert charts.primary_rule(int(Flag.EWMA_Z | Flag.SPEC_HIGH)) == "SPEC_HIGH"
    assert charts.primary_rule(int(Flag.CUSUM_LOW)) == "CUSUM_LOW"
    assert "SPEC_HIGH: above the upper spec limit" in charts.explain(int(Flag.SPEC_HIGH | Flag.EWMA_Z))


def test_admin_navigates_every_page_from_the_entry_script(demo_dir):
    at = _run(DASHBOARD / "app.py", demo_dir, ADMIN)
    assert [t.value for t in at.title] == ["Line quality"]
    for script, title in (("views/cold_chain.py", "Cold chain"), ("views/lot_trace.py", "Trace"),
                          ("views/ledger_view.py", "Ledger")):
        at.switch_page(script).run()
        assert not at.exception, [e.value for e in at.exception]
        assert [t.value for t in at.title] == [title]
    _button(at, "logout").click().run()
    assert "user" not in at.session_state and "Log in" in _texts(at, "subheader")


def test_a_hold_without_a_reason_is_refused_with_a_clear_error_and_writes_nothing(demo_copy):
    lot = _lot_with_everything(demo_copy)
    at = _run(VIEWS / "lot_trace.py", demo_copy, COMPLIANCE)
    at.selectbox(key="lt_lot").set_value(lot).run()
    n = len(Ledger(demo_copy / "ledger.sqlite", readonly=True))
    at.text_input(key="hold_reason").set_value("   ")
    next(b for b in at.button if b.label == "Put lot on hold").click().run()
    assert f"hold of lot {lot}: say why (the reason is recorded in the ledger)" in _plain(at, "error")
    assert len(Ledger(demo_copy / "ledger.sqlite", readonly=True)) == n

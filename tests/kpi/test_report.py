"""The lot quality report (and the alarms the demo raised) on a real demo run's data directory."""

from __future__ import annotations

import html.parser

import pytest
from click.testing import CliRunner

from ledger import Ledger
from ledger import events as ev_mod
from qctrace.alarm_ops import list_alarms
from qctrace.cli import cli
from qctrace.config import load_config
from qctrace.report import build_report, render_html

pytestmark = pytest.mark.e2e


def run(*args: str):
    """The CLI in-process (a subprocess per call costs seconds of imports)."""
    return CliRunner().invoke(cli, list(args))


@pytest.fixture
def demo(demo_dir):
    """The session's demo data directory (tests/conftest.py); these tests only read it."""
    return demo_dir


def _first_lot(data):
    with Ledger(data / "ledger.sqlite", readonly=True) as led:
        lots = [ev_mod.lots_in(e.as_dict())[0] for e in led.events(kind=ev_mod.LOT_PRODUCED)]
    return lots[0]


def test_every_alarm_the_demo_raises_starts_at_a_recorded_condition_and_is_cleared(demo):
    """Each alarm's (sensor, raised) is an anomaly episode's or a data gap's (sensor, start) in the
    ledger, and no more conditions alarm than were recorded. Alarms may outnumber conditions by
    escalation (an episode whose ending deserves a higher priority than its opening raises a second
    alarm at the same start), so the flood control shows in distinct conditions, not in raw counts."""
    with Ledger(demo / "ledger.sqlite", readonly=True) as led:
        conditions = {(a["sensor"], a["start"]) for e in led.events(kind=ev_mod.ANOMALY_EPISODE)
                      if (a := e.as_dict()[f"{ev_mod.NS}:anomaly"])}
        conditions |= {(g["source"], g["start"]) for e in led.events(kind=ev_mod.DATA_GAP)
                       if (g := e.as_dict()[f"{ev_mod.NS}:gap"])}
        raised = [e.as_dict()[f"{ev_mod.NS}:alarm"] for e in led.events(kind=ev_mod.ALARM_RAISED)]
        cleared = sum(1 for _ in led.events(kind=ev_mod.ALARM_CLEARED))
    alarmed = {(a["sensor"], a["raised"]) for a in raised}
    assert raised and alarmed <= conditions, alarmed - conditions
    assert cleared == len(raised)  # every episode ended by shutdown, so every alarm returned to normal
    views = list_alarms(load_config().with_overrides(data_dir=demo))
    assert {v.state for v in views} == {"UNACK_RTN"}
    assert any(v.rule == "excursion" and v.priority == "critical" for v in views)  # the truck's door-open excursion


class _Parser(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.external = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for k, v in attrs:
            if k in ("src", "href") and v and not v.startswith("data:"):
                self.external.append(v)


def test_html_report_is_self_contained_and_shows_every_section(demo, tmp_path):
    lot = _first_lot(demo)
    out = tmp_path / "r.html"
    res = run("report", lot, "--out", str(out), "--data-dir", str(demo))
    assert res.exit_code == 0, res.output
    text = out.read_text()
    p = _Parser()
    p.feed(text)
    assert p.external == [] and p.tags.count("img") >= 4  # one control chart per sensor of the lot, inlined
    for section in ("Process capability", "First-pass yield", "Anomaly episodes", "Alarms", "Ledger events of the lot",
                    "included, proof verified", "events included in the signed checkpoint"):
        assert section in text
    assert "filler_weight" in text and "Cpk" in text


def test_pdf_report(demo, tmp_path):
    out = tmp_path / "r.pdf"
    res = run("report", _first_lot(demo), "--format", "pdf", "--out", str(out), "--data-dir", str(demo))
    assert res.exit_code == 0, res.output
    data = out.read_bytes()
    assert data.startswith(b"%PDF-") and data.rstrip().endswith(b"%%EOF") and len(data) > 20_000


def test_report_escapes_what_it_shows(demo):
    rep = build_report(load_config().with_overrides(data_dir=demo), _first_lot(demo))
    rep.lot = "<script>alert(1)</script>"
    rep.notes.append("a & b <b>")
    text = render_html(rep)
    assert "<script>" not in text and "&lt;script&gt;" in text and "a &amp; b &lt;b&gt;" in text


def test_unknown_lot_is_a_clear_error(demo, tmp_path):
    res = run("report", "NO-SUCH-LOT", "--out", str(tmp_path / "x.html"), "--data-dir", str(demo))
    assert res.exit_code == 1 and "error: lot 'NO-SUCH-LOT': no readings and no ledger events" in res.output
    assert not (tmp_path / "x.html").exists()


def test_capability_command_prints_cp_cpk_and_yield(demo):
    res = run("capability", "--data-dir", str(demo))
    assert res.exit_code == 0, res.output
    assert "plant1/line1/plc1/filler_weight" in res.output and "first-pass yield plant1/line1" in res.output

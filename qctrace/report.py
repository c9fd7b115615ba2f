"""The lot quality report: control charts, capability, first-pass yield, anomalies, alarms, and proof.

One command (``qctrace report LOT``) gathers what a quality engineer signs a lot off with, from
the Parquet readings and the ledger, and writes it as one self-contained HTML file (charts inlined
as PNG data URIs, every text escaped) or as a PDF (fpdf2). The proof section lists each of the
lot's ledger events with its leaf index, and checks its RFC 9162 inclusion proof against the
latest signed checkpoint (``qctrace.ledger_ops.prove_events``): a report is never shown as proven
when a proof or the checkpoint's signature fails; that raises instead.
"""

from __future__ import annotations

import base64
import html
import io
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ingest.alarms import Alarm, iso
from ingest.capability import D2, CapabilityRow, LotYield, capability_rows, limits_of, lot_yields
from ledger import Ledger
from ledger import events as ev_mod
from ledger.trace import describe
from qctrace.config import Config
from qctrace.durable import atomic_write
from qctrace.errors import QctraceError
from qctrace.ledger_ops import READINGS_DIR, _local_verifiers, ledger_path, prove_events

MAX_CHART_POINTS = 5000  # per sensor; longer series are thinned (flagged points always kept)


@dataclass
class Chart:
    sensor: str
    png: bytes
    points: int


@dataclass
class LotQualityReport:
    lot: str
    generated_ns: int
    charts: list[Chart]
    capability: list[CapabilityRow]
    yields: list[LotYield]
    episodes: list[dict]
    alarms: list[Alarm]
    events: list[dict]  # describe() of each of the lot's ledger events, plus "proof"
    proof: str
    readings: int = 0
    notes: list[str] = field(default_factory=list)


def _control_chart(sensor: str, ts: np.ndarray, values: np.ndarray, flags: np.ndarray,
                   lsl: float | None, usl: float | None) -> bytes:
    """Individuals chart: centre line, 3-sigma limits from the moving range, spec limits, flagged points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = np.isfinite(values)
    ts, values, flags = ts[ok], values[ok], flags[ok]
    if len(values) > MAX_CHART_POINTS:
        keep = np.zeros(len(values), dtype=bool)
        keep[:: max(1, len(values) // MAX_CHART_POINTS)] = True
        keep |= flags != 0
        ts, values, flags = ts[keep], values[keep], flags[keep]
    t = (ts - ts[0]) / 60e9 if len(ts) else ts
    fig, ax = plt.subplots(figsize=(8, 2.6), dpi=90)
    ax.plot(t, values, lw=0.7, color="#1f4e79")
    bad = flags != 0
    ax.scatter(t[bad], values[bad], s=8, color="#c00000", zorder=3, label="flagged")
    if len(values) > 1:
        centre = float(np.mean(values))
        sigma = float(np.mean(np.abs(np.diff(values)))) / D2[2]
        ax.axhline(centre, color="#555", lw=0.8)
        for y in (centre - 3 * sigma, centre + 3 * sigma):
            ax.axhline(y, color="#555", lw=0.8, ls="--")
    for y in (lsl, usl):
        if y is not None:
            ax.axhline(y, color="#c55a11", lw=1.0, ls=":")
    ax.set_title(sensor, fontsize=9)
    ax.set_xlabel("minutes from the lot's first reading", fontsize=8)
    ax.tick_params(labelsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def build_report(cfg: Config, lot: str) -> LotQualityReport:
    """Everything the report shows for ``lot``; raises when neither readings nor ledger know the lot."""
    from ingest.query import select_readings
    from qctrace.alarm_ops import fold

    root = cfg.data_dir / READINGS_DIR
    table = select_readings(root, lot=lot) if root.is_dir() else None
    charts: list[Chart] = []
    n = 0
    if table is not None and table.num_rows:
        n = table.num_rows
        keys = np.array(table.column("sensor_key").to_pylist(), dtype=object)
        ts = table.column("ts").cast("int64").to_numpy()
        vals = table.column("value").to_numpy(zero_copy_only=False).astype(np.float64)
        flags = table.column("flags").to_numpy()
        for key in dict.fromkeys(keys.tolist()):
            sel = keys == key
            lsl, usl = limits_of(cfg.detect, key)
            charts.append(Chart(key, _control_chart(key, ts[sel], vals[sel], flags[sel], lsl, usl), int(sel.sum())))
    path = ledger_path(cfg.data_dir)
    episodes: list[dict] = []
    alarms: list[Alarm] = []
    evs: list[dict] = []
    proof = "no ledger"
    if path.exists():
        with Ledger(path, readonly=True) as led:
            own = list(led.events(lot=lot))
            episodes = [e.as_dict()[f"{ev_mod.NS}:anomaly"] for e in own if e.kind == ev_mod.ANOMALY_EPISODE]
            alarms = sorted((a for a in fold(led, time.time_ns()).values() if a.lot == lot), key=lambda a: a.raised_ns)
            proof = prove_events(led, own, _local_verifiers(cfg))
            cps = led.checkpoints()
            size = cps[-1][0] if cps else 0
            for e in own:
                d = describe(e)
                if al := e.as_dict().get(f"{ev_mod.NS}:alarm"):
                    who = e.as_dict().get(f"{ev_mod.NS}:by", "")
                    d["details"] = f"{al['id']} {al['priority']} {al['rule']} {al['sensor']} -> {al['state']} by {who}"
                d["proof"] = "included, proof verified" if e.idx < size else "awaits the next checkpoint"
                evs.append(d)
    if not n and not evs:
        raise QctraceError(f"lot {lot!r}: no readings and no ledger events in {cfg.data_dir};"
                           " check the lot number (`qctrace trace` lists a lot's genealogy) and --data-dir")
    caps = capability_rows(root, cfg.detect, lot=lot) if n else []
    yields = lot_yields(root, cfg.detect, lot=lot) if n else []
    notes = []
    if n and not caps:
        notes.append("no sensor of this lot has specification limits: capability needs lsl/usl (or a band)"
                     " in [[detect.sensors]]")
    return LotQualityReport(lot, time.time_ns(), charts, caps, yields, episodes, alarms, evs, proof, n, notes)


# ---------------------------------------------------------------- rendering

def _f(x: float | None, spec: str = ".3f") -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def _ci(ci) -> str:
    return "-" if ci is None else f"{ci.low:.2f}..{ci.high:.2f}"


def _tables(r: LotQualityReport) -> list[tuple[str, list[str], list[list[str]]]]:
    """The report's tables as plain strings, shared by both renderers."""
    cap_rows = [[c.sensor, str(c.cap.n), _f(c.cap.mean, ".4g"), _f(c.cap.lsl, ".4g"), _f(c.cap.usl, ".4g"),
                 _f(c.cap.sigma_within, ".3g"), _f(c.cap.sigma_overall, ".3g"), _f(c.cap.cp, ".2f"), _ci(c.cap.cp_ci),
                 _f(c.cap.cpk, ".2f"), _ci(c.cap.cpk_ci), _f(c.cap.pp, ".2f"), _f(c.cap.ppk, ".2f")]
                for c in r.capability]
    yld = [[y.line, str(y.readings), str(y.nonconforming), _f(y.conforming_share, ".4f"),
            "yes" if y.first_pass else "no"] for y in r.yields]
    eps = [[e.get("sensor", ""), e.get("rules", ""), e.get("start", ""), e.get("end", ""), str(e.get("readings", "")),
            f"{_f(e.get('min'), '.4g')}..{_f(e.get('max'), '.4g')}"] for e in r.episodes]
    als = [[a.id, a.priority, a.rule, a.sensor, iso(a.raised_ns), "-" if a.cleared_ns is None else iso(a.cleared_ns),
            a.acked_by or "-", a.message] for a in r.alarms]
    evs = [[str(e["idx"]), e["time"], e["kind"], e["where"], e["details"], e["proof"]] for e in r.events]
    return [
        ("Process capability (95 % intervals: chi-square for Cp, Bissell for Cpk)",
         ["sensor", "n", "mean", "LSL", "USL", "sigma within", "sigma overall", "Cp", "Cp CI", "Cpk", "Cpk CI", "Pp",
          "Ppk"], cap_rows),
        ("First-pass yield (passes first time: no reading flagged or out of specification)",
         ["line", "readings", "nonconforming", "conforming share", "first pass"], yld),
        ("Anomaly episodes", ["sensor", "rules", "start", "end", "readings", "values"], eps),
        ("Alarms", ["id", "priority", "rule", "sensor", "raised", "cleared", "acknowledged by", "message"], als),
        ("Ledger events of the lot", ["leaf index", "time", "kind", "where", "details", "inclusion proof"], evs),
    ]


def render_html(r: LotQualityReport) -> str:
    """One self-contained page: no external resource, every value escaped."""
    e = html.escape
    out = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
           f"<title>Lot quality report {e(r.lot)}</title><style>body{{font-family:sans-serif;margin:2em}}"
           "table{border-collapse:collapse;font-size:12px;margin-bottom:1.5em}td,th{border:1px solid #bbb;"
           "padding:2px 6px;text-align:left}th{background:#eee}img{max-width:100%}</style></head><body>",
           f"<h1>Lot quality report: {e(r.lot)}</h1>",
           f"<p>Generated {e(iso(r.generated_ns))}; {r.readings} readings.</p>",
           f"<p><b>Ledger proof:</b> {e(r.proof)}</p>"]
    out += [f"<p><i>{e(n)}</i></p>" for n in r.notes]
    out.append("<h2>Control charts</h2><p>Individuals charts: centre line and 3-sigma limits from the moving range"
               " (dashed), specification limits (dotted), flagged readings in red.</p>")
    for c in r.charts:
        out.append(f"<figure><img alt='{e(c.sensor)}' src='data:image/png;base64,"
                   f"{base64.b64encode(c.png).decode()}'><figcaption>{e(c.sensor)} ({c.points} readings)"
                   "</figcaption></figure>")
    for title, head, rows in _tables(r):
        out.append(f"<h2>{e(title)}</h2>")
        if not rows:
            out.append("<p>none</p>")
            continue
        out.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>")
        out += ["<tr>" + "".join(f"<td>{e(v)}</td>" for v in row) + "</tr>" for row in rows]
        out.append("</table>")
    out.append("</body></html>")
    return "\n".join(out)


def _latin1(text: str) -> str:
    return text.encode("latin-1", "replace").decode("latin-1")  # the PDF core fonts are Latin-1


def render_pdf(r: LotQualityReport) -> bytes:
    from fpdf import FPDF

    pdf = FPDF(orientation="L", format="A4")
    pdf.set_auto_page_break(True, margin=12)
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 16)
    pdf.cell(0, 10, _latin1(f"Lot quality report: {r.lot}"), new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", size=9)
    pdf.multi_cell(0, 5, _latin1(f"Generated {iso(r.generated_ns)}; {r.readings} readings.\nLedger proof: {r.proof}"
                                 + "".join(f"\n{n}" for n in r.notes)), new_x="LMARGIN", new_y="NEXT")
    for c in r.charts:
        pdf.image(io.BytesIO(c.png), w=200)
    for title, head, rows in _tables(r):
        pdf.set_font("Helvetica", "B", 11)
        pdf.cell(0, 8, _latin1(title), new_x="LMARGIN", new_y="NEXT")
        pdf.set_font("Helvetica", size=6)
        if not rows:
            pdf.cell(0, 5, "none", new_x="LMARGIN", new_y="NEXT")
            continue
        with pdf.table(text_align="LEFT", line_height=3.5) as table:
            table.row([_latin1(h) for h in head])
            for row in rows:
                table.row([_latin1(v) for v in row])
    return bytes(pdf.output())


def write_report(cfg: Config, lot: str, fmt: str = "html", out: Path | None = None) -> Path:
    """Build and write the report (atomically); returns its path (default DATA_DIR/reports/LOT.FMT)."""
    if fmt not in ("html", "pdf"):
        raise QctraceError(f"report format {fmt!r}: use html or pdf")
    rep = build_report(cfg, lot)
    out = out or cfg.data_dir / "reports" / f"{lot}.{fmt}"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, render_html(rep).encode("utf-8") if fmt == "html" else render_pdf(rep))
    return out

"""Where the dashboard's data comes from, and the cached loaders that read it.

Every page calls these instead of touching files, so caching and error handling live in one
place. Live readings are cached for one second (the charts refresh every second and several
browser tabs share one query), ledger reads for a few seconds, and the full-chain verification
a little longer because it hashes every event.

No refresh scans the dataset: ``dashboard.catalog`` knows each Parquet file's time range and
sensors from its footer, so a query reads only the newest files of one line, and only the sensors
on screen. SQL follows ``ingest.query``: a fresh in-memory DuckDB connection per query and every
value, the file list included, bound as a parameter and never formatted into the SQL text.
Everything here opens data read-only; the few writes (acknowledge, hold, recall) are in
``dashboard.actions``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import duckdb
import numpy as np
import pandas as pd
import streamlit as st

from dashboard import catalog
from ingest.query import lot_summary
from ledger import Ledger
from ledger.events import name_of
from qctrace.config import Config, load_config
from qctrace.errors import LedgerError, LedgerIntegrityError

log = logging.getLogger(__name__)

DATA_DIR_KEY = "data_dir"
"""Session-state key holding the data directory; tests set it directly."""
CONFIG_KEY = "config_path"
"""Session-state key holding the configuration file (``None``: the shipped demo configuration)."""

DEFAULT_DATA_DIR = "demo-data"
LIVE_TTL_S = 1.0
LEDGER_TTL_S = 5.0
VERIFY_TTL_S = 10.0
STATUS_WINDOW_S = 60.0
"""Status tiles judge a line by its flagged readings in this much of the newest source time."""

_SOURCE = "read_parquet($files, hive_partitioning = true, union_by_name = true)"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The options after ``--`` on the ``streamlit run`` line; anything unknown is ignored."""
    parser = argparse.ArgumentParser(prog="qctrace-dashboard", add_help=False)
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    parser.add_argument("--config", default=None)
    args, _unknown = parser.parse_known_args(list(argv))
    return args


def _from_session(key: str) -> Any:
    try:
        return st.session_state.get(key)
    except Exception:  # no script run context (plain import): fall back to argv
        return None


def data_dir() -> Path:
    """The data directory: from the session (set by ``app.py`` or a test), else from ``sys.argv``."""
    value = _from_session(DATA_DIR_KEY)
    return Path(value) if value else Path(parse_args(sys.argv[1:]).data_dir)


def config_path() -> str | None:
    value = _from_session(CONFIG_KEY)
    return str(value) if value else parse_args(sys.argv[1:]).config


def readings_root() -> Path:
    return data_dir() / "readings"


def ledger_path() -> Path:
    return data_dir() / "ledger.sqlite"


@st.cache_resource(show_spinner=False, ttl=LEDGER_TTL_S)
def settings(path: str | None = None) -> Config:
    """The validated configuration for display (spec limits, bands); raises ``ConfigError``.

    Cached briefly; permission checks never use it (``dashboard.session.fresh_auth`` reloads).
    """
    return load_config(path)


def spec_limits(sensor_key: str) -> tuple[float | None, float | None]:
    """(lsl, usl) for ``site/line/device/sensor``; ``None`` where the configuration sets no limit."""
    lsl, usl, *_ = settings(config_path()).detect.for_sensor(sensor_key)
    return (lsl if math.isfinite(lsl) else None, usl if math.isfinite(usl) else None)


# ---------------------------------------------------------------- readings

def _read(files: Sequence[str], sql: str, params: dict[str, Any]) -> pd.DataFrame:
    """``sql`` over exactly ``files`` (``{SOURCE}`` in the text); empty when there are none."""
    if not files:
        return pd.DataFrame()
    con = duckdb.connect()
    try:
        con.execute("SET threads = 1")  # a dashboard query must never take a core from ingest
        rel = con.sql(sql.replace("{SOURCE}", _SOURCE), params={"files": list(files), **params})
        return rel.df()
    except duckdb.IOException as exc:
        # A file can vanish between the listing and the read (sink recovery); the next refresh retries.
        log.warning("dashboard.query io_error=%s", exc)
        return pd.DataFrame()
    finally:
        con.close()


@st.cache_data(ttl=LIVE_TTL_S, show_spinner=False)
def line_overview(root: str, window_s: float = STATUS_WINDOW_S) -> pd.DataFrame:
    """Per (site, line): readings, newest ts/recv_ts, and flagged count and OR of flags in the window.

    Counts and times come from the file footers; one query reads only the files that reach into
    each line's window (its newest ``window_s`` of source time).
    """
    lines = _by_line(catalog.files(Path(root)))
    cut_of: dict[str, int] = {}
    line_of: dict[str, tuple[str, str]] = {}
    for key, group in lines.items():
        cutoff = max(f.ts_max for f in group) - int(window_s * 1e9)
        for f in group:
            if f.ts_max > cutoff:
                cut_of[f.path], line_of[f.path] = cutoff, key
    got = _read(list(cut_of), """
        WITH c AS (SELECT unnest($paths) AS filename, unnest($cuts) AS cut)
        SELECT r.filename, count(*) AS n, bit_or(r.flags) AS f
        FROM read_parquet($files, filename = true) r JOIN c ON r.filename = c.filename
        WHERE r.flags <> 0 AND epoch_ns(r.ts) > c.cut GROUP BY r.filename""",
                {"paths": list(cut_of), "cuts": list(cut_of.values())})
    flagged: dict[tuple[str, str], list[int]] = {}
    for path, n, f in got.itertuples(index=False) if not got.empty else ():
        acc = flagged.setdefault(line_of[path], [0, 0])
        acc[0] += int(n)
        acc[1] |= int(f)
    rows = []
    for (site, line), group in lines.items():
        n, bits = flagged.get((site, line), (0, 0))
        rows.append({"site": site, "line": line, "readings": sum(x.rows for x in group),
                     "sensors": len({s for x in group for s in x.sensors}),
                     "last_ts": pd.Timestamp(max(x.ts_max for x in group), tz="UTC"),
                     "last_recv": pd.Timestamp(max(x.recv_max for x in group), tz="UTC"),
                     "flagged_recent": n, "flags_recent": bits})
    return pd.DataFrame(rows, columns=["site", "line", "readings", "sensors", "last_ts", "last_recv",
                                       "flagged_recent", "flags_recent"])


def _by_line(parts: list[catalog.PartFile]) -> dict[tuple[str, str], list[catalog.PartFile]]:
    out: dict[tuple[str, str], list[catalog.PartFile]] = {}
    for f in parts:
        out.setdefault((f.site, f.line), []).append(f)
    return dict(sorted(out.items()))


@st.cache_data(ttl=LEDGER_TTL_S, show_spinner=False)
def line_sensors(root: str, site: str, line: str) -> list[str]:
    """Every ``site/line/device/sensor`` key the line has reported, sorted (from the file footers)."""
    found = {s for f in catalog.files(Path(root)) if (f.site, f.line) == (site, line) for s in f.sensors}
    return [f"{site}/{line}/{s}" for s in sorted(found)]


@st.cache_data(ttl=LIVE_TTL_S, show_spinner=False)
def recent_readings(root: str, site: str, line: str, window_s: float,
                    sensors: tuple[str, ...] | None = None) -> pd.DataFrame:
    """The newest ``window_s`` seconds (source time) of one line, per sensor oldest first.

    ``sensors`` (full keys) limits the read to the charts on screen; ``None`` reads the whole line.
    """
    group = _by_line(catalog.files(Path(root))).get((site, line), [])
    if not group:
        return pd.DataFrame()
    cutoff = max(f.ts_max for f in group) - int(window_s * 1e9)
    prefix = f"{site}/{line}/"
    want = None if sensors is None else {k[len(prefix):] for k in sensors if k.startswith(prefix)}
    files = [f.path for f in group if f.ts_max > cutoff and (want is None or want & set(f.sensors))]
    where, params = "epoch_ns(ts) > $cutoff", {"cutoff": cutoff}
    if want is not None:
        where += " AND (device || '/' || sensor) IN (SELECT unnest($keys))"
        params["keys"] = sorted(want)
    return _read(files, f"""SELECT ts, recv_ts, device, sensor, value, quality, flags, lot FROM {{SOURCE}}
                            WHERE {where} ORDER BY device, sensor, ts""", params)


@st.cache_data(ttl=LEDGER_TTL_S, show_spinner=False)
def sensor_history(root: str, site: str, line: str, sensor_name: str) -> pd.DataFrame:
    """Every reading of one ``device/sensor`` of a line (a shipment's logger channel), oldest first."""
    files = [f.path for f in catalog.files(Path(root)) if (f.site, f.line) == (site, line)
             and sensor_name in f.sensors]
    return _read(files, """SELECT epoch_ns(ts) AS t, ts, value, quality, flags FROM {SOURCE}
                           WHERE device || '/' || sensor = $key ORDER BY ts""", {"key": sensor_name})


@st.cache_data(ttl=LEDGER_TTL_S, show_spinner=False)
def lot_readings(root: str, lot: str) -> pd.DataFrame:
    """Per sensor of a lot: readings, flagged, first/last ts and min/mean/max (``ingest.query.lot_summary``)."""
    table = lot_summary(Path(root), lot)
    return table.to_pandas() if table.num_columns else pd.DataFrame()


@st.cache_data(ttl=LIVE_TTL_S, show_spinner=False)
def ingest_last_commit(data: str) -> pd.Timestamp | None:
    """When ingest last committed readings (the commit record's time), for the staleness banner."""
    ns = catalog.newest_commit_ns(Path(data))
    return None if ns is None else pd.Timestamp(ns, tz="UTC")


# ---------------------------------------------------------------- ledger

@dataclass(frozen=True, slots=True)
class ChainStatus:
    """Outcome of a full ledger verification, as a value: ``st.cache_data`` cannot cache a raise."""

    state: Literal["verified", "broken", "unavailable"]
    message: str = ""
    events: int = 0
    head: str = ""
    bad_index: int | None = None  # first bad event when broken; everything before it verified

    def event_label(self, idx: int) -> str:
        """What this check says about event ``idx``.

        Verification stops at the first bad event, so from there on nothing is vouched for. An
        event newer than a (cached) successful check is "not yet checked", not suspicious.
        """
        if self.state == "broken":
            return "ok" if self.bad_index is not None and idx < self.bad_index else "NOT VERIFIED"
        if self.state == "verified" and idx < self.events:
            return "ok"
        return "not yet checked"


@st.cache_data(ttl=VERIFY_TTL_S, show_spinner="Verifying the ledger's hash chain…")
def verify_ledger(path: str) -> ChainStatus:
    try:
        with Ledger(Path(path), readonly=True) as led:
            report = led.scan()
    except LedgerIntegrityError as exc:
        log.warning("dashboard.verify failed: %s", exc)
        return ChainStatus("broken", str(exc), bad_index=exc.index)
    except LedgerError as exc:
        return ChainStatus("unavailable", str(exc))
    return ChainStatus("verified", events=report.events, head=report.head)


@st.cache_data(ttl=LEDGER_TTL_S, show_spinner=False)
def ledger_lots(path: str) -> list[str]:
    """Lots in order of their first event; empty when there is no ledger yet."""
    try:
        with Ledger(Path(path), readonly=True) as led:
            return led.lots()
    except LedgerError as exc:
        log.info("dashboard.lots unavailable: %s", exc)
        return []


@dataclass(frozen=True, slots=True)
class LotEvent:
    """One stored event of a lot; ``body`` is ``None`` when the stored bytes are not JSON."""

    idx: int
    kind: str
    event_time: str
    hash: str
    body: dict[str, Any] | None


def _lot_event(ev: Any) -> LotEvent:
    try:
        body = ev.as_dict()
    except ValueError:
        body = None
    return LotEvent(ev.idx, ev.kind, ev.event_time, ev.hash.hex(), body)


@st.cache_data(ttl=LEDGER_TTL_S, show_spinner=False)
def lot_events(path: str, lot: str) -> list[LotEvent]:
    try:
        with Ledger(Path(path), readonly=True) as led:
            return [_lot_event(ev) for ev in led.events(lot=lot)]
    except LedgerError as exc:
        log.info("dashboard.events unavailable: %s", exc)
        return []


@st.cache_data(ttl=LEDGER_TTL_S, show_spinner=False)
def events_of_kind(path: str, kinds: tuple[str, ...], newest: int = 0) -> list[LotEvent]:
    """Events of these kinds in ledger order (the ``newest`` N only when N > 0)."""
    out: list[LotEvent] = []
    try:
        with Ledger(Path(path), readonly=True) as led:
            for kind in kinds:
                out += [_lot_event(ev) for ev in led.events(kind=kind)]
    except LedgerError as exc:
        log.info("dashboard.events unavailable: %s", exc)
    out.sort(key=lambda e: e.idx)
    return out[-newest:] if newest else out


@dataclass(frozen=True)
class Genealogy:
    """A lot's trace both ways: nodes by group, edges between node URIs, and the events involved."""

    lot: str
    start: str
    backward: dict[str, list[str]] = field(default_factory=dict)
    forward: dict[str, list[str]] = field(default_factory=dict)
    edges: tuple[tuple[str, str], ...] = ()
    events: tuple[LotEvent, ...] = ()
    error: str = ""


@st.cache_data(ttl=LEDGER_TTL_S, show_spinner=False)
def genealogy(path: str, lot: str) -> Genealogy:
    from ledger.trace import lot_node, trace

    try:
        with Ledger(Path(path), readonly=True) as led:
            start = lot_node(led, lot)
            b, f = trace(led, lot, forward=False), trace(led, lot, forward=True)
            nodes = set(led.reach(start, forward=False)) | set(led.reach(start, forward=True))
            edges = set()
            for ev in (*b.events, *f.events):
                from ledger.events import links_of

                for src, dst in links_of(json.loads(ev.body)):
                    if src in nodes and dst in nodes:
                        edges.add((src, dst))
            evs = {e.idx: _lot_event(e) for e in (*b.events, *f.events)}
    except LedgerError as exc:
        return Genealogy(lot, "", error=str(exc))
    return Genealogy(lot, start, b.scope(), f.scope(), tuple(sorted(edges)),
                     tuple(evs[i] for i in sorted(evs)))


@dataclass(frozen=True, slots=True)
class Proof:
    """The trust badge of a lot: chain, checkpoint signature with inclusion proofs, anchor."""

    checkpoint: str  # what prove_events says, or why it could not
    checkpoint_ok: bool
    anchored: str
    anchored_ok: bool


@st.cache_data(ttl=LEDGER_TTL_S, show_spinner=False)
def lot_proof(data: str, lot: str) -> Proof:
    from ledger.keys import load_verifiers
    from qctrace.ledger_ops import keys_dir, prove_events

    d = Path(data)
    try:
        verifiers = load_verifiers(keys_dir(d))
    except LedgerError:
        verifiers = []
    try:
        with Ledger(d / "ledger.sqlite", readonly=True) as led:
            from ledger.trace import trace

            evs = [*trace(led, lot, forward=False).events, *trace(led, lot, forward=True).events]
            text = prove_events(led, evs, verifiers)
            cps = led.checkpoints()
            anchors = dict(led.anchors())
    except LedgerIntegrityError as exc:
        return Proof(f"FAILED: {exc}", False, "not checked", False)
    except LedgerError as exc:
        return Proof(str(exc), False, "not checked", False)
    ok = text.endswith("…)") or "included in the signed checkpoint" in text
    if not cps:
        return Proof(text, False, "no checkpoint to anchor", False)
    from ledger.publish import anchor_files
    from qctrace.ledger_ops import checkpoint_dir

    receipts = {**anchors, **dict(anchor_files(checkpoint_dir(d)))}
    size = cps[-1][0]
    r = receipts.get(size)
    if r is None:
        return Proof(text, ok, f"checkpoint at size {size} not anchored yet (`qctrace anchor`)", False)
    return Proof(text, ok, f"root at size {size} anchored on chain {r['chain_id']}, block {r['block_number']}"
                           f" (tx {str(r['tx_hash'])[:14]}…)", True)


@st.cache_data(ttl=LEDGER_TTL_S, show_spinner=False)
def checkpoints(data: str) -> pd.DataFrame:
    """Every signed checkpoint (size, origin, root) with its anchor receipt, newest first."""
    from ledger.publish import anchor_files
    from qctrace.ledger_ops import checkpoint_dir

    d = Path(data)
    try:
        with Ledger(d / "ledger.sqlite", readonly=True) as led:
            cps = led.checkpoints()
            receipts = {**dict(led.anchors()), **dict(anchor_files(checkpoint_dir(d)))}
    except LedgerError:
        return pd.DataFrame()
    rows = []
    for size, note in reversed(cps):
        lines = note.decode("utf-8", "replace").split("\n")
        r = receipts.get(size)
        rows.append({"size": size, "origin": lines[0] if lines else "", "root (base64)": lines[2] if len(lines) > 2
                     else "", "chain": r["chain_id"] if r else None, "block": r["block_number"] if r else None,
                     "tx": r["tx_hash"] if r else "not anchored"})
    return pd.DataFrame(rows, columns=["size", "origin", "root (base64)", "chain", "block", "tx"])


ALARM_TTL_S = 2.0


@st.cache_data(ttl=ALARM_TTL_S, show_spinner=False)
def alarms(data: str, config: str | None) -> list:
    """``alarm_ops.list_alarms`` (state replayed from the ledger, read-only), shared by every open tab."""
    from qctrace import alarm_ops

    return alarm_ops.list_alarms(load_config(config).with_overrides(data_dir=Path(data)))


# ---------------------------------------------------------------- cold chain

@dataclass(frozen=True, slots=True)
class Shipment:
    name: str
    stage: str
    location: str
    lots: tuple[str, ...]
    loggers: tuple[str, ...]
    customer: str
    custody: tuple[tuple[str, str, str], ...]  # (event time, step, where), in ledger order


@st.cache_data(ttl=LEDGER_TTL_S, show_spinner=False)
def shipments(path: str) -> list[Shipment]:
    """Shipments the ledger knows, with their custody trail and what they carry, in first-seen order."""
    from ledger import events as ev

    kinds = (ev.LOT_PACKED, ev.LOGGER_ATTACHED, ev.SHIPMENT_MOVED, ev.LOT_DELIVERED)
    found: dict[str, dict[str, Any]] = {}
    for e in events_of_kind(path, kinds):
        body = e.body or {}
        ship = body.get("parentID") or next(iter(body.get("epcList") or ()), "")
        if not str(ship).startswith("urn:qctrace:shipment:"):
            continue
        s = found.setdefault(name_of(ship), {"stage": "", "location": "", "lots": [], "loggers": [], "customer": "",
                                             "custody": []})
        where = name_of((body.get("readPoint") or {}).get("id", "")) if body.get("readPoint") else ""
        if e.kind == ev.LOT_PACKED:
            s["lots"] += [q["epcClass"].rsplit(".", 1)[-1] for q in body.get("childQuantityList") or ()]
            s["custody"].append((e.event_time, "packed", where))
            s["stage"], s["location"] = s["stage"] or "packing", where
        elif e.kind == ev.LOGGER_ATTACHED:
            s["loggers"] += [name_of(c) for c in body.get("childEPCs") or ()]
        elif e.kind == ev.SHIPMENT_MOVED:
            s["stage"], s["location"] = str(body.get("qctrace:stage", "")), where
            s["custody"].append((e.event_time, str(body.get("bizStep", "")), where))
        elif e.kind == ev.LOT_DELIVERED:
            s["stage"], s["location"] = "delivered", where
            s["customer"] = ", ".join(name_of(d.get("destination", "")) for d in body.get("destinationList") or ())
            s["custody"].append((e.event_time, "delivered", where))
    return [Shipment(k, v["stage"], v["location"], tuple(dict.fromkeys(v["lots"])), tuple(v["loggers"]),
                     v["customer"], tuple(v["custody"])) for k, v in found.items()]


@dataclass(frozen=True, slots=True)
class Excursion:
    """A shipment channel against its band: time out of band, the budget used, and the MKT."""

    out_of_band_min: float
    budget_min: float | None
    budget_used: float | None  # fraction; None without a budget
    mkt_c: float | None
    readings: int


def excursion(t_ns: np.ndarray, values: np.ndarray, band: tuple[float, float] | None, budget_min: float | None,
              delta_h: float, max_dt_s: float = 300.0) -> Excursion:
    """Sample-and-hold time out of band and MKT, as the streaming cold-chain rule attributes time.

    The interval to the next reading counts as out of band when the reading at its start was;
    one interval counts at most ``max_dt_s``, so a silent logger does not spend the budget.
    """
    from ingest.detect.coldchain import mean_kinetic_temperature

    t = np.asarray(t_ns, dtype=np.int64)
    v = np.asarray(values, dtype=np.float64)
    good = np.isfinite(v)
    t, v = t[good], v[good]
    if len(t) == 0:
        return Excursion(0.0, budget_min, 0.0 if budget_min else None, None, 0)
    held = np.minimum(np.diff(t) / 1e9, max_dt_s)
    held = np.append(held, np.median(held) if len(held) else 1.0)
    out_min = 0.0
    if band is not None:
        out = (v < band[0]) | (v > band[1])
        out_min = float(held[out].sum() / 60.0)
    mkt = mean_kinetic_temperature(v, np.maximum(held, 0.0) + 1e-12, delta_h) if (v > -273.15).all() else None
    used = out_min / budget_min if budget_min else None
    return Excursion(out_min, budget_min, used, mkt, len(v))

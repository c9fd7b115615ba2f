"""Turn a lot's ledger events into rows a person can read (pure; no Streamlit here).

The ledger stores EPCIS-shaped bodies; a table of raw JSON answers nobody's question, so each
kind gets a one-line "details" and the read point becomes a short "where".
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import pandas as pd

from dashboard.data import ChainStatus, LotEvent

_URN_PREFIXES = ("urn:qctrace:loc:", "urn:qctrace:")

EVENT_COLUMNS = ["idx", "time", "kind", "where", "chain", "hash", "details"]  # details last: it is the long one
ANOMALY_COLUMNS = ["sensor", "start", "end", "rules", "readings", "min", "max", "idx"]


def where(body: dict[str, Any]) -> str:
    """The read point (line or shipment) of an event, without the URN prefix."""
    for field in ("readPoint", "bizLocation"):
        ident = (body.get(field) or {}).get("id")
        if isinstance(ident, str):
            for prefix in _URN_PREFIXES:
                if ident.startswith(prefix):
                    return ident[len(prefix):]
            return ident
    return ""


def details(kind: str, body: dict[str, Any]) -> str:
    """One line saying what the event means for the lot."""
    if kind == "lot_produced":
        inputs = [q.get("epcClass", "").rsplit(".", 1)[-1] for q in body.get("inputQuantityList") or ()]
        return "lot produced" + (f" from {', '.join(inputs)}" if inputs else "")
    if kind == "qc_result":
        qc = body.get("qctrace:qc") or {}
        return f"lot finished: {qc.get('readings', '?')} readings, {qc.get('flagged', '?')} flagged"
    if kind == "anomaly_episode":
        a = body.get("qctrace:anomaly") or {}
        sensor = str(a.get("sensor", "?")).split("/", 2)[-1]  # site/line is in the "where" column
        return (f"{sensor}: {a.get('rules') or 'flagged'} on {a.get('readings', '?')} readings,"
                f" values {_num(a.get('min'))}…{_num(a.get('max'))}")
    if kind in ("shipment_moved", "lot_delivered", "input_received"):
        to = [d.get("destination", "") for d in body.get("destinationList") or ()]
        return f"{body.get('bizStep', '')} to {', '.join(t.rsplit(':', 1)[-1] for t in to)}"
    skip = {"qctrace:kind", "type", "action", "eventTime", "eventTimeZoneOffset", "readPoint", "bizLocation"}
    return json.dumps({k: v for k, v in body.items() if k not in skip}, sort_keys=True, ensure_ascii=False)


def _num(v: object) -> str:
    return f"{v:g}" if isinstance(v, int | float) else "—"


def events_table(events: Iterable[LotEvent], chain: ChainStatus) -> pd.DataFrame:
    """One row per event, with what the latest chain verification says about it."""
    rows = []
    for ev in events:
        if ev.body is None:
            loc, text = "", "(stored body is not valid JSON)"
        else:
            loc, text = where(ev.body), details(ev.kind, ev.body)
        rows.append({"idx": ev.idx, "time": ev.event_time, "kind": ev.kind, "where": loc, "details": text,
                     "chain": chain.event_label(ev.idx),
                     "hash": ev.hash[:10] + "…"})
    return pd.DataFrame(rows, columns=EVENT_COLUMNS)


def anomalies_table(events: Iterable[LotEvent]) -> pd.DataFrame:
    rows = []
    for ev in events:
        if ev.kind != "anomaly_episode" or ev.body is None:
            continue
        a = ev.body.get("qctrace:anomaly") or {}
        rows.append({"sensor": a.get("sensor"), "start": a.get("start"), "end": a.get("end"),
                     "rules": a.get("rules"), "readings": a.get("readings"), "min": a.get("min"),
                     "max": a.get("max"), "idx": ev.idx})
    return pd.DataFrame(rows, columns=ANOMALY_COLUMNS)

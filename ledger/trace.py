"""Lot genealogy: backward to inputs, suppliers, lines and equipment; forward to shipments, places,
customers and downstream lots; and the scope of a recall.

The ``links`` index holds the edges each event states (``events.links_of``); a trace is one
recursive query over it, so its cost grows with the lot's genealogy, not with the ledger. Every
event a trace returns is read from the hashed bodies, and verification re-derives the index, so
the answer is as trustworthy as the chain.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ledger.events import LGTIN, lot_of, lots_in, name_of
from ledger.store import Ledger, StoredEvent
from qctrace.errors import LedgerError

_GROUPS = (("lots", LGTIN), ("shipments", "urn:qctrace:shipment:"), ("locations", "urn:qctrace:loc:"),
           ("parties", "urn:qctrace:party:"), ("devices", "urn:qctrace:device:"))


@dataclass
class Trace:
    lot: str
    forward: bool
    nodes: dict[str, list[str]] = field(default_factory=dict)  # group -> readable names, sorted
    events: list[StoredEvent] = field(default_factory=list)  # the lot's own events and every linking event

    def scope(self) -> dict[str, list[str]]:
        return {k: v for k, v in self.nodes.items() if v}


def lot_node(led: Ledger, lot: str) -> str:
    """The LGTIN class URI under which the ledger knows ``lot``."""
    for ev in led.events(lot=lot):
        doc = json.loads(ev.body)
        for key in ("outputQuantityList", "quantityList", "childQuantityList", "inputQuantityList"):
            for q in doc.get(key) or ():
                c = q.get("epcClass", "")
                if c.startswith(LGTIN) and lot_of(c) == lot:
                    return c
    raise LedgerError(f"lot {lot!r}: no event in {led.path} names it (check the lot code, or --data-dir)")


def trace(led: Ledger, lot: str, forward: bool) -> Trace:
    start = lot_node(led, lot)
    reach = led.reach(start, forward=forward)
    nodes: dict[str, list[str]] = {g: [] for g, _ in _GROUPS}
    linking: set[int] = set()
    for node, idx in reach.items():
        linking |= idx
        if node == start:
            continue
        for group, prefix in _GROUPS:
            if node.startswith(prefix):
                nodes[group].append(name_of(node))
                break
    for v in nodes.values():
        v.sort()
    own = {ev.idx for ev in led.events(lot=lot)}
    return Trace(lot, forward, nodes, led.events_at(own | linking))


def recall_scope(led: Ledger, lot: str) -> dict[str, list[str]]:
    """Everything a recall of ``lot`` reaches downstream: lots (the lot itself included), shipments,
    locations and customers."""
    t = trace(led, lot, forward=True)
    scope = t.scope()
    scope["lots"] = sorted({lot, *scope.get("lots", [])})
    scope.pop("devices", None)
    return scope


def lot_classes(led: Ledger, lots: list[str]) -> list[str]:
    return [lot_node(led, x) for x in lots]


def describe(ev: StoredEvent) -> dict[str, Any]:
    """One line's worth of an event for people: what, where, which lots."""
    doc = json.loads(ev.body)
    where = (doc.get("readPoint") or doc.get("bizLocation") or {}).get("id", "")
    extra = ""
    if a := doc.get("qctrace:anomaly"):
        extra = f"{a['sensor']} {a['rules']} {a['start']}..{a['end']}"
    elif q := doc.get("qctrace:qc"):
        extra = f"{q['readings']} readings, {q['flagged']} flagged"
    elif g := doc.get("qctrace:gap"):
        extra = f"{g['source']} {g['start']}..{g['end']}"
    elif d := doc.get("destinationList"):
        extra = "to " + ", ".join(name_of(x["destination"]) for x in d)
    return {"idx": ev.idx, "time": ev.event_time, "kind": ev.kind, "type": doc.get("type", ""),
            "bizStep": doc.get("bizStep", ""), "where": name_of(where) if where else "",
            "lots": lots_in(doc), "details": extra}

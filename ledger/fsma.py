"""The FDA FSMA 204 (21 CFR 1 subpart S) electronic sortable spreadsheet, read from ledger events.

When FDA asks, a firm has 24 hours to hand over its traceability records for a food as one
sortable spreadsheet: one row per critical tracking event (CTE) of a traceability lot, with the
key data elements (KDEs) the rule names for that CTE. The ledger already holds those facts as
EPCIS events; this module only lays them out. Column names use the rule's KDE wording (21 CFR
1.1340 shipping, 1.1345 receiving, 1.1350 transformation), which FDA's own template follows:

* ``Location Description`` is where the CTE happened: where the food was received, transformed, or
  shipped from. The other party is ``Immediate Previous Source`` (receiving: the ship-from) or
  ``Immediate Subsequent Recipient`` (shipping: the ship-to); transporters are never either.
* Transformation (which in the final rule includes creating a food) is one row per new lot, its
  input lots together in ``Input Traceability Lot Codes``.
* A shipment names no lots itself: its lots come from the packing (AggregationEvent) into it, so a
  shipment of two lots is two shipping rows, as the rule keeps records per traceability lot.
* ``Reference Document`` is the business document when the event names one (a despatch advice);
  otherwise it is the EPCIS event itself, by its CBV event hash, which an auditor can find in the
  EPCIS export and verify against the ledger.

Places and parties are qctrace URIs; pass ``describe`` (URI -> full location description: business
name, phone, address) to print what the rule asks for instead of the short names.
"""

from __future__ import annotations

import csv
import logging
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import date
from pathlib import Path
from typing import Any

from ledger import events as ev_mod
from ledger.epcis import epcis_document

log = logging.getLogger(__name__)

RECEIVING = "Receiving"
TRANSFORMATION = "Transformation"
SHIPPING = "Shipping"

CTE = "Critical Tracking Event"
TLC = "Traceability Lot Code"
PRODUCT = "Product Description"
QUANTITY = "Quantity"
UNIT = "Unit of Measure"
LOCATION = "Location Description"
DATE = "Date"
TIME = "Time (UTC)"
PREVIOUS_SOURCE = "Immediate Previous Source Location Description"
SUBSEQUENT_RECIPIENT = "Immediate Subsequent Recipient Location Description"
TLC_SOURCE = "Traceability Lot Code Source Location Description"
TLC_SOURCE_REFERENCE = "Traceability Lot Code Source Reference"
INPUT_TLCS = "Input Traceability Lot Codes"
REFERENCE_TYPE = "Reference Document Type"
REFERENCE_NUMBER = "Reference Document Number"

COLUMNS = (CTE, TLC, PRODUCT, QUANTITY, UNIT, LOCATION, DATE, TIME, PREVIOUS_SOURCE, SUBSEQUENT_RECIPIENT,
           TLC_SOURCE, TLC_SOURCE_REFERENCE, INPUT_TLCS, REFERENCE_TYPE, REFERENCE_NUMBER)
"""The spreadsheet's columns, in order; each row from ``fsma_rows`` has exactly these keys."""

_CTE_ORDER = {RECEIVING: 0, TRANSFORMATION: 1, SHIPPING: 2}
_DOCUMENT_TYPES = {"desadv": "Advance Shipping Notice", "bol": "Bill of Lading", "po": "Purchase Order",
                   "inv": "Invoice", "prodorder": "Production Order", "recadv": "Receiving Advice"}
_EVENT_DOCUMENT = "EPCIS event (CBV event hash)"


def fsma_rows(events: Iterable[Mapping[str, Any]], describe: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """One row per CTE and traceability lot, sorted by date and time (receiving before transformation
    before shipping at the same instant)."""
    evs = sorted((dict(e) for e in events), key=lambda e: e.get("eventTime", ""))
    facts = _Facts(evs, describe or {})
    rows: list[dict[str, Any]] = []
    delivered: list[tuple[tuple[str, str, str], dict[str, Any]]] = []
    for ev in evs:
        kind = ev_mod.kind_of(ev)
        if kind == ev_mod.INPUT_RECEIVED:
            rows += facts.received_input(ev)
        elif kind == ev_mod.LOT_PRODUCED:
            rows += facts.transformed(ev)
        elif kind == ev_mod.SHIPMENT_MOVED:
            rows += facts.moved(ev)
        elif kind == ev_mod.LOT_DELIVERED:
            delivered += facts.delivered(ev)
    # The last custody stage and the delivery are one receipt seen twice (custody and transaction):
    # the delivery's row, which names the customer and the despatch advice, replaces the custody row.
    by_key = {row.pop("_key"): row for row in rows if "_key" in row}
    for key, row in delivered:
        if key in by_key:
            by_key[key].update({k: v for k, v in row.items() if v not in ("", None) and k != "_event"})
        else:
            rows.append(row)
    for row in rows:
        row.pop("_key", None)
    _Facts.reference_events(rows)
    rows.sort(key=lambda r: (r[DATE], r[TIME], _CTE_ORDER[r[CTE]], r[TLC]))
    log.info("fsma.rows events=%d rows=%d", len(evs), len(rows))
    return rows


def select(rows: Iterable[Mapping[str, Any]], lots: Collection[str] | None = None,
           start: date | str | None = None, end: date | str | None = None) -> list[dict[str, Any]]:
    """The rows of the given lots (a lot with its genealogy, as the trace gives it) within [start, end].

    A transformation row belongs to a lot that is its output or one of its inputs, so the rows of a
    lot's genealogy show how each lot was made. Dates are inclusive; None leaves that side open.
    """
    lo, hi = (d.isoformat() if isinstance(d, date) else d for d in (start, end))
    out = []
    for row in rows:
        if (lo is not None and row[DATE] < lo) or (hi is not None and row[DATE] > hi):
            continue
        if lots is not None and row[TLC] not in lots and not any(t in lots for t in _inputs(row)):
            continue
        out.append(dict(row))
    return out


def write_csv(rows: Iterable[Mapping[str, Any]], path: str | Path) -> None:
    """UTF-8 with a byte-order mark, so that Excel, where FDA reviewers open it, reads names right."""
    with Path(path).open("w", encoding="utf-8-sig", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for row in rows:
            w.writerow({c: "" if row.get(c) is None else row[c] for c in COLUMNS})


def write_xlsx(rows: Iterable[Mapping[str, Any]], path: str | Path) -> None:
    """One sheet, ready to sort and filter: a frozen header, an autofilter, dates as real (ISO) dates."""
    from openpyxl import Workbook
    from openpyxl.styles import Font
    from openpyxl.utils import get_column_letter

    wb = Workbook()
    ws = wb.active
    ws.title = "FSMA 204 CTEs"
    ws.append(list(COLUMNS))
    for cell in ws[1]:
        cell.font = Font(bold=True)
    widths = [len(c) for c in COLUMNS]
    for row in rows:
        values = [_cell(c, row.get(c)) for c in COLUMNS]
        ws.append(values)
        for i, c in enumerate(COLUMNS):
            widths[i] = max(widths[i], len(str(row.get(c) or "")))
    date_col = COLUMNS.index(DATE) + 1
    for cells in ws.iter_rows(min_row=2):
        cells[date_col - 1].number_format = "yyyy-mm-dd"
        for cell in cells:
            if cell.data_type == "f":  # a name like "=1+1" is text from the ledger, never a formula to run
                cell.data_type = "s"
    for i, width in enumerate(widths, start=1):
        ws.column_dimensions[get_column_letter(i)].width = min(width + 2, 60)
    ws.freeze_panes = "A2"
    ws.auto_filter.ref = ws.dimensions
    wb.save(Path(path))


def _cell(column: str, value: Any) -> Any:
    if value is None or value == "":
        return None
    if column == DATE:
        return date.fromisoformat(value)
    return value


def _inputs(row: Mapping[str, Any]) -> list[str]:
    return [t for t in str(row.get(INPUT_TLCS) or "").split("; ") if t]


class _Facts:
    """What one event cannot say alone: a lot's product and origin, a shipment's lots and custody."""

    def __init__(self, evs: Sequence[dict[str, Any]], describe: Mapping[str, str]) -> None:
        self.describe = describe
        self.product: dict[str, str] = {}
        self.origin: dict[str, tuple[str, str]] = {}  # lot -> (TLC source description, TLC source reference)
        self.packed: dict[str, list[dict[str, Any]]] = defaultdict(list)  # shipment -> quantity elements
        self.receipts: dict[str, list[tuple[str, str]]] = defaultdict(list)  # shipment -> (time, location)
        self.holder: dict[str, str] = {}  # shipment -> last place that held it (never a transporter)
        for ev in evs:
            kind = ev_mod.kind_of(ev)
            if kind == ev_mod.LOT_PRODUCED:
                where = _id(ev, "bizLocation")
                for q in _quantities(ev, "outputQuantityList", "quantityList"):
                    self._learn(q, ev.get(f"{ev_mod.NS}:product"), (self.place(where), ""))
            elif kind == ev_mod.INPUT_RECEIVED:
                supplier = next((s["source"] for s in ev.get("sourceList") or ()), "")
                for q in _quantities(ev, "quantityList"):
                    self._learn(q, ev.get(f"{ev_mod.NS}:product"), ("", supplier))
            elif kind == ev_mod.LOT_PACKED:
                self.packed[ev["parentID"]] += _quantities(ev, "childQuantityList")
            elif kind == ev_mod.SHIPMENT_MOVED and ev.get("bizStep") == "receiving":
                for shipment in ev.get("epcList") or ():
                    self.receipts[shipment].append((ev["eventTime"], _id(ev, "bizLocation")))

    def _learn(self, q: Mapping[str, Any], product: str | None, origin: tuple[str, str]) -> None:
        lot = ev_mod.lot_of(q["epcClass"])
        if product:
            self.product.setdefault(lot, product)
        self.origin.setdefault(lot, origin)

    def place(self, uri: str) -> str:
        return self.describe.get(uri, ev_mod.name_of(uri)) if uri else ""

    def row(self, ev: Mapping[str, Any], cte: str, q: Mapping[str, Any], location: str, **kdes: str) -> dict[str, Any]:
        lot = ev_mod.lot_of(q["epcClass"])
        source, reference = self.origin.get(lot, ("", ""))
        gtin = q["epcClass"][len(ev_mod.LGTIN):].rsplit(".", 1)[0]
        doc_type, doc_number = _business_document(ev)
        row = {CTE: cte, TLC: lot, PRODUCT: self.product.get(lot, f"GTIN {gtin}"), QUANTITY: q.get("quantity"),
               UNIT: q.get("uom", ""), LOCATION: location, DATE: ev["eventTime"][:10], TIME: ev["eventTime"][11:],
               PREVIOUS_SOURCE: "", SUBSEQUENT_RECIPIENT: "", TLC_SOURCE: source, TLC_SOURCE_REFERENCE: reference,
               INPUT_TLCS: "", REFERENCE_TYPE: doc_type, REFERENCE_NUMBER: doc_number}
        row.update(kdes)
        row["_event"] = ev
        return row

    def received_input(self, ev: Mapping[str, Any]) -> list[dict[str, Any]]:
        supplier = next((s["source"] for s in ev.get("sourceList") or ()), "")
        where = self.place(_id(ev, "bizLocation"))
        return [self.row(ev, RECEIVING, q, where, **{PREVIOUS_SOURCE: self.place(supplier)})
                for q in _quantities(ev, "quantityList")]

    def transformed(self, ev: Mapping[str, Any]) -> list[dict[str, Any]]:
        inputs = "; ".join(ev_mod.lot_of(q["epcClass"]) for q in _quantities(ev, "inputQuantityList"))
        return [self.row(ev, TRANSFORMATION, q, self.place(_id(ev, "bizLocation")), **{INPUT_TLCS: inputs})
                for q in _quantities(ev, "outputQuantityList", "quantityList")]

    def moved(self, ev: Mapping[str, Any]) -> list[dict[str, Any]]:
        here = _id(ev, "bizLocation")
        previous = next((s["source"] for s in ev.get("sourceList") or ()), "")
        rows = []
        for shipment in ev.get("epcList") or ():
            held_by = self.holder.get(shipment, previous)
            if ev.get("bizStep") == "shipping":
                to = next((loc for t, loc in self.receipts[shipment] if t > ev["eventTime"]), "")
                kdes = {SUBSEQUENT_RECIPIENT: self.place(to)}
                rows += [self.row(ev, SHIPPING, q, self.place(held_by or here), **kdes) for q in self.packed[shipment]]
                continue
            if ev.get("bizStep") == "receiving":
                for q in self.packed[shipment]:
                    row = self.row(ev, RECEIVING, q, self.place(here), **{PREVIOUS_SOURCE: self.place(held_by)})
                    row["_key"] = (shipment, ev["eventTime"], row[TLC])
                    rows.append(row)
            self.holder[shipment] = here
        return rows

    def delivered(self, ev: Mapping[str, Any]) -> list[tuple[tuple[str, str, str], dict[str, Any]]]:
        shipment = ev.get("parentID", "")
        customer = next((d["destination"] for d in ev.get("destinationList") or ()), "")
        here = _id(ev, "readPoint") or _id(ev, "bizLocation")
        location = ", ".join(p for p in (self.place(customer), self.place(here)) if p)
        out = []
        for q in _quantities(ev, "quantityList"):
            row = self.row(ev, RECEIVING, q, location)
            if shipment in self.holder and self.holder[shipment] != here:
                row[PREVIOUS_SOURCE] = self.place(self.holder[shipment])
            out.append(((shipment, ev["eventTime"], row[TLC]), row))
        return out

    @staticmethod
    def reference_events(rows: list[dict[str, Any]]) -> None:
        """Point rows without a business document at their EPCIS event, by its CBV event hash."""
        sources = [row.pop("_event") for row in rows]
        todo = [(row, ev) for row, ev in zip(rows, sources, strict=True) if not row[REFERENCE_NUMBER]]
        unique = list({_key(ev): ev for _, ev in todo if "eventID" not in ev}.values())
        # eventIDs depend on the events only, never on the document around them.
        hashed = epcis_document(unique, created="1970-01-01T00:00:00.000Z")["epcisBody"]["eventList"]
        ids = {_key(ev): ev["eventID"] for ev in hashed}
        for row, ev in todo:
            row[REFERENCE_TYPE] = _EVENT_DOCUMENT
            row[REFERENCE_NUMBER] = ev.get("eventID") or ids[_key(ev)]


def _key(ev: Mapping[str, Any]) -> str:
    return repr(sorted((k, repr(v)) for k, v in ev.items() if k != "eventID"))


def _id(ev: Mapping[str, Any], field: str) -> str:
    return (ev.get(field) or {}).get("id", "")


def _quantities(ev: Mapping[str, Any], *fields: str) -> list[dict[str, Any]]:
    for field in fields:
        qs = [q for q in ev.get(field) or () if str(q.get("epcClass", "")).startswith(ev_mod.LGTIN)]
        if qs:
            return qs
    return []


def _business_document(ev: Mapping[str, Any]) -> tuple[str, str]:
    for bt in ev.get("bizTransactionList") or ():
        kind = str(bt.get("type", "")).rsplit(":", 1)[-1].rsplit("-", 1)[-1]
        return _DOCUMENT_TYPES.get(kind, kind or "Business transaction"), ev_mod.name_of(bt["bizTransaction"])
    return "", ""

"""Provenance events, shaped as GS1 EPCIS 2.0 events with CBV 2.0 vocabulary.

Each constructor returns a plain dict that *is* an EPCIS 2.0 event (JSON-LD without the document's
``@context``), ready for ``Ledger.append``. qctrace's own facts (QC results, anomaly episodes, data
gaps, committed data files, hold/release/recall) ride on standard events as extension fields in
the ``qctrace:`` namespace, so any EPCIS 2.0 consumer can read the business part and ignore ours.
``qctrace:kind`` names the event for indexes and filters; it is inside the hashed body, so an index
column can always be checked against it.

Identifiers: lots are LGTIN classes (``urn:epc:class:lgtin:<company prefix>.<item ref>.<lot>``), so
the quantity lists carry them as EPCIS expects. Shipments, devices, places and parties have no GS1
keys in the simulated plant, so they are ``urn:qctrace:<type>:<name>`` URIs (a deployment with
SSCCs and GLNs would put ``urn:epc:id:sscc:…`` / ``urn:epc:id:sgln:…`` there instead).

Genealogy lives in the events themselves: ``links_of`` derives the directed edges ("material flows
from A to B") that the trace index stores, and verification re-derives them from the hashed bodies.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from qctrace.errors import InvalidEvent

# qctrace:kind values
LOT_PRODUCED = "lot_produced"  # TransformationEvent (inputs -> lot) or ObjectEvent ADD (no inputs)
INPUT_RECEIVED = "input_received"  # ObjectEvent receiving of a supplier's lot
QC_RESULT = "qc_result"  # ObjectEvent inspecting at the end of a lot
ANOMALY_EPISODE = "anomaly_episode"  # ObjectEvent inspecting, with the episode (and sensor data)
DATA_GAP = "data_gap"  # ObjectEvent: readings of a source could not be collected
LOT_PACKED = "lot_packed"  # AggregationEvent: a lot packed into a shipment
LOGGER_ATTACHED = "logger_attached"  # AssociationEvent: a temperature logger travels with a shipment
SHIPMENT_MOVED = "shipment_moved"  # ObjectEvent shipping/receiving/storing: custody changes hands
LOT_DELIVERED = "lot_delivered"  # TransactionEvent: the lot sold and delivered to a customer
DATA_COMMITTED = "data_committed"  # ObjectEvent: a Parquet file with its SHA-256 and row count
LOT_HELD = "lot_held"
LOT_RELEASED = "lot_released"
LOT_RECALLED = "lot_recalled"
# ISA-18.2 alarm state changes (ObjectEvent inspecting, with qctrace:alarm and qctrace:by)
ALARM_RAISED = "alarm_raised"
ALARM_CLEARED = "alarm_cleared"
ALARM_ACKNOWLEDGED = "alarm_acknowledged"
ALARM_SHELVED = "alarm_shelved"
ALARM_UNSHELVED = "alarm_unshelved"
ALARM_REMOVED = "alarm_removed"  # out of service
ALARM_RESTORED = "alarm_restored"  # back in service
ALARM_KINDS = (ALARM_RAISED, ALARM_CLEARED, ALARM_ACKNOWLEDGED, ALARM_SHELVED, ALARM_UNSHELVED, ALARM_REMOVED,
               ALARM_RESTORED)

KINDS = (LOT_PRODUCED, INPUT_RECEIVED, QC_RESULT, ANOMALY_EPISODE, DATA_GAP, LOT_PACKED, LOGGER_ATTACHED,
         SHIPMENT_MOVED, LOT_DELIVERED, DATA_COMMITTED, LOT_HELD, LOT_RELEASED, LOT_RECALLED, *ALARM_KINDS)
EPCIS_TYPES = ("ObjectEvent", "AggregationEvent", "TransformationEvent", "TransactionEvent", "AssociationEvent")

NS = "qctrace"
NS_URI = "https://qctrace.dev/epcis/"
"""The JSON-LD namespace of qctrace's extension fields (declared in the export's ``@context``)."""

LGTIN = "urn:epc:class:lgtin:"
_GTIN = re.compile(r"^\d{6,12}\.\d{0,7}$")
_LOT_CHARS = re.compile(r"^[!%-?A-Z_a-z\"]{1,20}$")  # GS1 AI (10): up to 20 of the CSET 82 characters


def iso(ns: int) -> str:
    """RFC 3339 UTC with millisecond precision, the EPCIS eventTime format."""
    dt = datetime.fromtimestamp(ns // 1_000_000_000, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + f".{(ns // 1_000_000) % 1000:03d}Z"


# ---------------------------------------------------------------- identifiers

def lot_class(lot: str, gtin: str) -> str:
    """The LGTIN class URI of a lot of the product ``gtin`` (written ``<company prefix>.<item ref>``)."""
    if not _GTIN.match(gtin) or len(gtin) != 14:
        raise InvalidEvent(f"GTIN {gtin!r}: write it as '<company prefix>.<indicator+item ref>', 13 digits and"
                           " one dot, e.g. '0614141.107346'")
    if not _LOT_CHARS.match(lot):
        raise InvalidEvent(f"lot {lot!r}: a GS1 lot number is 1-20 characters of the GS1 AI encodable set")
    return f"{LGTIN}{gtin}.{lot}"


def lot_of(epc_class: str) -> str:
    """The lot number inside an LGTIN class URI."""
    if not epc_class.startswith(LGTIN):
        raise InvalidEvent(f"{epc_class!r} is not an LGTIN class (urn:epc:class:lgtin:…)")
    return epc_class[len(LGTIN):].split(".", 2)[2]


def _urn(kind: str, name: str) -> str:
    return f"urn:qctrace:{kind}:{name}"


def shipment_id(name: str) -> str:
    return _urn("shipment", name)


def device_id(name: str) -> str:
    return _urn("device", name)


def location_id(name: str) -> str:
    return _urn("loc", name)


def party_id(name: str) -> str:
    return _urn("party", name)


def name_of(uri: str) -> str:
    """The readable name at the end of a qctrace URI or an LGTIN class."""
    if uri.startswith(LGTIN):
        return lot_of(uri)
    return uri.split(":", 3)[3] if uri.startswith("urn:qctrace:") else uri


# ---------------------------------------------------------------- helpers

def _base(kind: str, type_: str, at_ns: int, **fields: Any) -> dict[str, Any]:
    ev = {"type": type_, "eventTime": iso(at_ns), "eventTimeZoneOffset": "+00:00", f"{NS}:kind": kind}
    ev.update({k: v for k, v in fields.items() if v is not None})
    return ev


def _qty(classes: Iterable[str], quantity: float | None = None, uom: str | None = None) -> list[dict[str, Any]]:
    """Quantity elements; ``uom`` is a UN/ECE Recommendation 20 code (EA each, KGM kilogram)."""
    if quantity is None:
        return [{"epcClass": c} for c in classes]
    return [{"epcClass": c, "quantity": quantity, **({"uom": uom} if uom else {})} for c in classes]


def _line(site: str, line: str) -> dict[str, Any]:
    return {"bizLocation": {"id": location_id(site)}, "readPoint": {"id": location_id(f"{site}/{line}")}}


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


# ---------------------------------------------------------------- production and QC

def lot_produced(lot: str, gtin: str, site: str, line: str, at_ns: int, inputs: Sequence[str] = (),
                 equipment: Sequence[str] = (), product: str | None = None, quantity: float | None = None,
                 uom: str | None = None) -> dict[str, Any]:
    """A lot started on a line. With input lots (LGTIN classes) it is an EPCIS TransformationEvent."""
    out = lot_class(lot, gtin)
    extra = {f"{NS}:equipment": [device_id(d) for d in equipment] or None, f"{NS}:product": product}
    if inputs:
        return _base(LOT_PRODUCED, "TransformationEvent", at_ns, inputQuantityList=_qty(inputs),
                     outputQuantityList=_qty([out], quantity, uom), bizStep="commissioning", disposition="active",
                     **_line(site, line), **extra)
    return _base(LOT_PRODUCED, "ObjectEvent", at_ns, action="ADD", epcList=[], quantityList=_qty([out], quantity, uom),
                 bizStep="commissioning", disposition="active", **_line(site, line), **extra)


def input_received(lot: str, gtin: str, supplier: str, site: str, at_ns: int, material: str | None = None,
                   quantity: float | None = None, uom: str | None = None) -> dict[str, Any]:
    """A supplier's lot arrived at the plant (FSMA 204 'receiving' CTE)."""
    return _base(INPUT_RECEIVED, "ObjectEvent", at_ns, action="OBSERVE", epcList=[],
                 quantityList=_qty([lot_class(lot, gtin)], quantity, uom), bizStep="receiving",
                 disposition="in_progress",
                 readPoint={"id": location_id(site)}, bizLocation={"id": location_id(site)},
                 sourceList=[{"type": "owning_party", "source": party_id(supplier)}],
                 destinationList=[{"type": "owning_party", "destination": party_id(site)}],
                 **{f"{NS}:product": material})


def qc_result(lot: str, gtin: str, site: str, line: str, at_ns: int, readings: int, flagged: int) -> dict[str, Any]:
    """The lot finished on its line: how many readings, how many flagged."""
    return _base(QC_RESULT, "ObjectEvent", at_ns, action="OBSERVE", epcList=[],
                 quantityList=_qty([lot_class(lot, gtin)]), bizStep="inspecting",
                 disposition="conformant" if flagged == 0 else "non_conformant", **_line(site, line),
                 **{f"{NS}:qc": {"readings": readings, "flagged": flagged}})


def anomaly_episode(lot: str | None, gtin: str | None, sensor: str, start_ns: int, end_ns: int, flags: int,
                    rules: str, min_value: float, max_value: float, readings: int,
                    unit: str | None = None, sensor_type: str | None = None) -> dict[str, Any]:
    """Consecutive flagged readings of one sensor. ``sensor_type`` (e.g. ``gs1:Temperature``) adds an
    EPCIS sensorElementList, which is how cold-chain excursions are exchanged."""
    site, line = sensor.split("/")[:2]
    extra: dict[str, Any] = {}
    if sensor_type is not None:
        report = {"type": sensor_type, "minValue": _finite(min_value), "maxValue": _finite(max_value),
                  "uom": unit}
        extra["sensorElementList"] = [{
            "sensorMetadata": {"startTime": iso(start_ns), "endTime": iso(end_ns),
                               "deviceID": device_id("/".join(sensor.split("/")[:3]))},
            "sensorReport": [{k: v for k, v in report.items() if v is not None}],
        }]
    return _base(ANOMALY_EPISODE, "ObjectEvent", end_ns, action="OBSERVE", epcList=[],
                 quantityList=_qty([lot_class(lot, gtin)]) if lot and gtin else [], bizStep="inspecting",
                 **_line(site, line), **extra, **{f"{NS}:anomaly": {k: v for k, v in {
                     "sensor": sensor, "start": iso(start_ns), "end": iso(end_ns), "flags": flags, "rules": rules,
                     "min": _finite(min_value), "max": _finite(max_value), "readings": readings}.items()
                     if v is not None}})


def data_gap(source: str, start_ns: int, end_ns: int, reason: str) -> dict[str, Any]:
    """Readings of ``source`` could not be collected between ``start`` and ``end`` (source time)."""
    site, line = source.split("/")[:2]
    return _base(DATA_GAP, "ObjectEvent", end_ns, action="OBSERVE", epcList=[], bizStep="inspecting",
                 **_line(site, line),
                 **{f"{NS}:gap": {"source": source, "start": iso(start_ns), "end": iso(end_ns),
                                  "reason": reason[:500]}})


def data_committed(path: str, sha256: str, rows: int, at_ns: int, sources: Sequence[str] = (),
                   replaces: Sequence[str] = ()) -> dict[str, Any]:
    """A Parquet file as written: an auditor proves later that no reading in it has changed.
    ``replaces`` names the files a compacted file took the place of (it holds exactly their rows);
    from then on those files may be gone."""
    if not re.fullmatch(r"[0-9a-f]{64}", sha256):
        raise InvalidEvent(f"data_committed: sha256 must be 64 lowercase hex digits, got {sha256!r}")
    data: dict[str, Any] = {"path": path, "sha256": sha256, "rows": rows, "sources": sorted(sources)}
    if replaces:
        data["replaces"] = sorted(replaces)
    return _base(DATA_COMMITTED, "ObjectEvent", at_ns, action="OBSERVE", epcList=[], bizStep="inspecting",
                 **{f"{NS}:data": data})


# ---------------------------------------------------------------- custody and shipping

def lot_packed(lot: str, gtin: str, shipment: str, location: str, at_ns: int, quantity: float | None = None,
               uom: str | None = None) -> dict[str, Any]:
    return _base(LOT_PACKED, "AggregationEvent", at_ns, parentID=shipment_id(shipment), action="ADD",
                 childEPCs=[], childQuantityList=_qty([lot_class(lot, gtin)], quantity, uom), bizStep="packing",
                 disposition="in_progress", readPoint={"id": location_id(location)},
                 bizLocation={"id": location_id(location)})


def logger_attached(shipment: str, logger: str, location: str, at_ns: int) -> dict[str, Any]:
    return _base(LOGGER_ATTACHED, "AssociationEvent", at_ns, parentID=shipment_id(shipment), action="ADD",
                 childEPCs=[device_id(logger)], bizStep="installing", readPoint={"id": location_id(location)})


_STAGE_STEP = {"packing": ("packing", "in_progress"), "truck": ("shipping", "in_transit"),
               "distribution_centre": ("receiving", "in_progress"), "store": ("receiving", "sellable_accessible")}


def shipment_moved(shipment: str, stage: str, location: str, at_ns: int, previous: str | None = None) -> dict[str, Any]:
    """Custody of a shipment moved to ``location`` (from ``previous``): FSMA 204 shipping/receiving."""
    step, disposition = _STAGE_STEP.get(stage, ("storing", "in_progress"))
    extra: dict[str, Any] = {f"{NS}:stage": stage}
    if previous is not None:
        extra["sourceList"] = [{"type": "location", "source": location_id(previous)}]
    extra["destinationList"] = [{"type": "location", "destination": location_id(location)}]
    return _base(SHIPMENT_MOVED, "ObjectEvent", at_ns, action="OBSERVE", epcList=[shipment_id(shipment)],
                 bizStep=step, disposition=disposition, readPoint={"id": location_id(location)},
                 bizLocation={"id": location_id(location)}, **extra)


def lot_delivered(lot: str, gtin: str, shipment: str, customer: str, location: str, at_ns: int,
                  quantity: float | None = None, uom: str | None = None) -> dict[str, Any]:
    """The lot reached its customer: a TransactionEvent naming the delivery."""
    return _base(LOT_DELIVERED, "TransactionEvent", at_ns, action="ADD", parentID=shipment_id(shipment),
                 epcList=[], quantityList=_qty([lot_class(lot, gtin)], quantity, uom),
                 bizTransactionList=[{"type": "desadv", "bizTransaction": _urn("desadv", shipment)}],
                 bizStep="receiving", disposition="sellable_accessible", readPoint={"id": location_id(location)},
                 destinationList=[{"type": "owning_party", "destination": party_id(customer)}])


# ---------------------------------------------------------------- holds and recalls

def _status(kind: str, disposition: str, lot_classes: Sequence[str], by: str, reason: str, at_ns: int,
            **extra: Any) -> dict[str, Any]:
    if not lot_classes:
        raise InvalidEvent(f"{kind}: name at least one lot")
    if not by:
        raise InvalidEvent(f"{kind}: say who did it (user name)")
    return _base(kind, "ObjectEvent", at_ns, action="OBSERVE", epcList=[], quantityList=_qty(lot_classes),
                 bizStep="holding" if kind == LOT_HELD else "inspecting", disposition=disposition,
                 **{f"{NS}:by": by, f"{NS}:reason": reason[:2000]}, **extra)


def lot_held(lot_classes: Sequence[str], by: str, reason: str, at_ns: int) -> dict[str, Any]:
    return _status(LOT_HELD, "non_sellable_other", lot_classes, by, reason, at_ns)


def lot_released(lot_classes: Sequence[str], by: str, reason: str, at_ns: int) -> dict[str, Any]:
    return _status(LOT_RELEASED, "active", lot_classes, by, reason, at_ns)


def lot_recalled(lot_classes: Sequence[str], by: str, reason: str, at_ns: int,
                 scope: dict[str, list[str]]) -> dict[str, Any]:
    """A recall of the named lots with its computed scope (shipments, locations, customers)."""
    return _status(LOT_RECALLED, "recalled", lot_classes, by, reason, at_ns,
                   **{f"{NS}:scope": {k: sorted(v) for k, v in scope.items()}})


# ---------------------------------------------------------------- alarms

def alarm_event(kind: str, alarm: dict[str, Any], by: str, at_ns: int, lot: str | None = None,
                gtin: str | None = None, comment: str = "") -> dict[str, Any]:
    """An alarm state change (ISA-18.2) and who made it. ``alarm`` is the alarm as it is afterwards
    (id, sensor, rule, priority, state, ...); the raise names the lot, so a lot's trace shows its alarms."""
    if kind not in ALARM_KINDS:
        raise InvalidEvent(f"{kind!r} is not an alarm event kind ({', '.join(ALARM_KINDS)})")
    if not by:
        raise InvalidEvent(f"{kind}: say who did it (user name)")
    if not alarm.get("id") or not alarm.get("sensor"):
        raise InvalidEvent(f"{kind}: the alarm needs an id and a sensor, got {str(alarm)[:200]}")
    site, line = [*alarm["sensor"].split("/"), ""][:2]
    where = _line(site, line) if line else {"readPoint": {"id": location_id(site)}}
    return _base(kind, "ObjectEvent", at_ns, action="OBSERVE", epcList=[],
                 quantityList=_qty([lot_class(lot, gtin)]) if lot and gtin else [], bizStep="inspecting",
                 **where, **{f"{NS}:alarm": {k: v for k, v in alarm.items() if v is not None}, f"{NS}:by": by,
                             f"{NS}:comment": comment[:2000] or None})


# ---------------------------------------------------------------- reading events back

def kind_of(ev: dict[str, Any]) -> str:
    return ev.get(f"{NS}:kind", "")


def lots_in(ev: dict[str, Any]) -> list[str]:
    """Every lot an event names, outputs first (the first is the event's primary lot)."""
    out: list[str] = []
    for key in ("outputQuantityList", "quantityList", "childQuantityList", "inputQuantityList"):
        for q in ev.get(key) or ():
            c = q.get("epcClass", "")
            if c.startswith(LGTIN) and lot_of(c) not in out:
                out.append(lot_of(c))
    return out


def links_of(ev: dict[str, Any]) -> list[tuple[str, str]]:
    """Directed genealogy edges (from, to) an event states: material or custody flows from → to.

    Nodes are URIs: lots as LGTIN classes, shipments, places, parties, devices. Forward trace
    follows edges, backward trace follows them reversed.
    """
    kind = kind_of(ev)
    where = (ev.get("readPoint") or {}).get("id")
    if kind == LOT_PRODUCED:
        outs = [q["epcClass"] for q in ev.get("outputQuantityList") or ev.get("quantityList") or ()]
        ins = [q["epcClass"] for q in ev.get("inputQuantityList") or ()]
        srcs = ins + ([where] if where else []) + list(ev.get(f"{NS}:equipment") or ())
        return [(s, o) for o in outs for s in srcs]
    if kind == INPUT_RECEIVED:
        lots = [q["epcClass"] for q in ev.get("quantityList") or ()]
        return [(s["source"], lot) for s in ev.get("sourceList") or () for lot in lots]
    if kind == LOT_PACKED:
        return [(q["epcClass"], ev["parentID"]) for q in ev.get("childQuantityList") or ()]
    if kind == LOGGER_ATTACHED:
        return [(c, ev["parentID"]) for c in ev.get("childEPCs") or ()]
    if kind == SHIPMENT_MOVED:
        return [(e, d["destination"]) for e in ev.get("epcList") or () for d in ev.get("destinationList") or ()]
    if kind == LOT_DELIVERED:
        return [(ev["parentID"], d["destination"]) for d in ev.get("destinationList") or ()]
    return []


_EVENT_TIME = re.compile(r"^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])T([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d{1,9})?Z$")
_REQUIRED = {"ObjectEvent": ("action",), "AggregationEvent": ("action",), "TransactionEvent": ("action",),
             "AssociationEvent": ("action",), "TransformationEvent": ()}


def validate(ev: Any) -> None:
    """Refuse what cannot be a qctrace EPCIS event, before anything is written. (The ledger also
    refuses an event whose lots and links cannot be read; see ``Ledger.append_many``.)"""
    if not isinstance(ev, dict):
        raise InvalidEvent(f"an event is a JSON object, got {type(ev).__name__}")
    t = ev.get("type")
    if t not in _REQUIRED:
        raise InvalidEvent(f"event type {t!r} is not one of the EPCIS 2.0 event types {', '.join(EPCIS_TYPES)}")
    missing = [k for k in ("eventTime", "eventTimeZoneOffset", f"{NS}:kind", *_REQUIRED[t]) if k not in ev]
    if missing:
        raise InvalidEvent(f"{t} is missing {', '.join(missing)}: {str(ev)[:200]}")
    if ev[f"{NS}:kind"] not in KINDS:
        raise InvalidEvent(f"unknown qctrace:kind {ev[f'{NS}:kind']!r} (known: {', '.join(KINDS)})")
    if not isinstance(ev["eventTime"], str) or not _EVENT_TIME.match(ev["eventTime"]):
        raise InvalidEvent(f"eventTime {ev['eventTime']!r} is not RFC 3339 UTC like 2026-11-02T06:00:00.000Z")
    if "action" in ev and ev["action"] not in ("ADD", "OBSERVE", "DELETE"):
        raise InvalidEvent(f"action {ev['action']!r} is not ADD, OBSERVE or DELETE")

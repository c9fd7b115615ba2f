"""RFC 8785 (JCS) canonical JSON: the exact bytes that are hashed, stored, and verified as stored.

``rfc8785`` is the reference for what the bytes must be. It is pure Python and costs ~25 µs an
event, more than the whole append budget, so CPython's C encoder (sorted keys, no whitespace, no
ASCII escaping) writes first, and its output is kept when it cannot differ from JCS: all ASCII
(so key order by UTF-16 code units equals Python's), and no number that the two format
differently: an integral float (``1.0`` vs ``1``), an exponent (``1e-07`` vs ``1e-7``), or 16+
digits (beyond what an IEEE double holds exactly). Anything else is re-encoded by ``rfc8785``; a
false alarm (such text inside a string) only costs time. A property test checks both paths agree.
"""

from __future__ import annotations

import json
import re
from typing import Any

import rfc8785

from qctrace.errors import InvalidEvent

_dumps = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


# Three searches, not one alternation: each starts with a literal or a small class that the regex
# engine scans for quickly, where one pattern led by \d costs ~10 µs on digit-rich events.
_INTEGRAL_FLOAT = re.compile(r"\.0(?!\d)")
_EXPONENT = re.compile(r"e[-+]\d\d")  # CPython writes exponents with at least two digits
_LONG_INT = re.compile(r"[:,\[]-?\d{16}")


def _may_differ(text: str) -> bool:
    return (not text.isascii() or (".0" in text and _INTEGRAL_FLOAT.search(text) is not None)
            or _EXPONENT.search(text) is not None or _LONG_INT.search(text) is not None)


def canonical_bytes(obj: Any) -> bytes:
    """The RFC 8785 serialisation of ``obj``; raises ``InvalidEvent`` for what JSON cannot hold."""
    try:
        text = _dumps(obj)
    except (TypeError, ValueError):
        text = None  # NaN, infinity, or not JSON: rfc8785 says which
    if text is not None and not _may_differ(text):
        return text.encode("ascii")
    try:
        return rfc8785.dumps(obj)
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as exc:
        raise InvalidEvent(f"event is not canonical-JSON serialisable: {exc}") from None

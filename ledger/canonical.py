"""RFC 8785 (JCS) canonical JSON: the exact bytes that are hashed, stored, and verified as stored.

``rfc8785`` is the reference for what the bytes must be. It is pure Python and costs ~25 µs an
event, half the append budget, so events whose every number and string CPython's C encoder already
writes the JCS way (integers within ±2⁵³, non-integral floats in [1e-4, 1e16), ASCII keys) take the
C path, and anything else (integral floats, exponents, non-ASCII keys, where the two differ) goes
through ``rfc8785``. A property test checks the two paths agree on arbitrary JSON.
"""

from __future__ import annotations

import json
from typing import Any

import rfc8785

from qctrace.errors import InvalidEvent

_INT_LIMIT = 2**53
_dumps = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def _fast_ok(obj: Any) -> bool:
    t = type(obj)
    if t is str or t is bool or obj is None:
        return True
    if t is int:
        return -_INT_LIMIT < obj < _INT_LIMIT
    if t is float:
        a = abs(obj)
        return 1e-4 <= a < 1e16 and not obj.is_integer()
    if t is dict:
        return all(type(k) is str and k.isascii() and _fast_ok(v) for k, v in obj.items())
    if t is list or t is tuple:
        return all(_fast_ok(v) for v in obj)
    return False


def canonical_bytes(obj: Any) -> bytes:
    """The RFC 8785 serialisation of ``obj``; raises ``InvalidEvent`` for what JSON cannot hold."""
    if _fast_ok(obj):
        return _dumps(obj).encode("utf-8")
    try:
        return rfc8785.dumps(obj)
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as exc:
        raise InvalidEvent(f"event is not canonical-JSON serialisable: {exc}") from None

"""The fast canonical path writes exactly what the RFC 8785 reference implementation writes."""

from __future__ import annotations

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.canonical import canonical_bytes
from qctrace.errors import InvalidEvent

_scalars = (st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1)
            | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12))
_json = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=20)


@settings(max_examples=600)
@given(_json)
def test_canonical_bytes_equal_the_rfc8785_reference(value):
    assert canonical_bytes(value) == rfc8785.dumps(value)


@pytest.mark.parametrize("value", [{"a": float("nan")}, {"a": float("inf")}, {"a": 2**60}, {"a": object()}])
def test_what_json_cannot_hold_is_refused(value):
    with pytest.raises(InvalidEvent, match="canonical-JSON"):
        canonical_bytes(value)


def test_keys_sort_by_utf16_code_units_not_code_points():
    # U+FB01 sorts after U+1F600 in UTF-16 (0xFB01 > 0xD83D) but before it by code point.
    assert canonical_bytes({"\U0001F600": 1, "\uFB01": 2}) == rfc8785.dumps({"\U0001F600": 1, "\uFB01": 2})
    assert list(__import__("json").loads(canonical_bytes({"\U0001F600": 1, "\uFB01": 2}))) == ["\U0001F600", "\uFB01"]

"""Why a reading is red: one sentence per rule that fired, with the reading's own numbers.

The dashboard shows these on hover and the CLI prints them; compliance staff need each judgement
explained, not a bit mask.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from qctrace.schema import Flag

_TEXT: dict[Flag, str] = {
    Flag.SPEC_LOW: "below the lower specification limit",
    Flag.SPEC_HIGH: "above the upper specification limit",
    Flag.EWMA_Z: "far from its recent level (EWMA z-score {ewma_z:+.1f})",
    Flag.BAD_QUALITY: "the device reported Bad quality; the value is not judged",
    Flag.NOT_FINITE: "not a number (NaN or infinite)",
    Flag.NELSON_1: "beyond 3 sigma of the centre line (Nelson rule 1, z {spc_z:+.1f})",
    Flag.NELSON_2: "ninth point in a row on one side of the centre line (Nelson rule 2)",
    Flag.NELSON_3: "sixth point in a row steadily rising or falling (Nelson rule 3)",
    Flag.NELSON_4: "fourteenth point in a row alternating up and down (Nelson rule 4)",
    Flag.NELSON_5: "two of three points beyond 2 sigma on one side (Nelson rule 5)",
    Flag.NELSON_6: "four of five points beyond 1 sigma on one side (Nelson rule 6)",
    Flag.NELSON_7: "fifteenth point in a row within 1 sigma: suspiciously little variation (Nelson rule 7)",
    Flag.NELSON_8: "eighth point in a row beyond 1 sigma on either side (Nelson rule 8)",
    Flag.CUSUM_HIGH: "sustained upward shift or drift (CUSUM {cusum:.1f} sigma)",
    Flag.CUSUM_LOW: "sustained downward shift or drift (CUSUM {cusum:.1f} sigma)",
    Flag.RATE: "changed faster than the sensor's maximum rate",
    Flag.SPIKE: "an isolated spike (robust z {robust_z:+.1f} against the running median)",
    Flag.STUCK: "the same value many times in a row: the sensor may be frozen",
    Flag.GAP: "arrived after a silence of {gap_s:.0f} s, longer than allowed",
    Flag.BAND_LOW: "below the product's band",
    Flag.BAND_HIGH: "above the product's band",
    Flag.BUDGET: "the shipment's excursion budget is used up ({excursion_s:.0f} s out of band so far)",
    Flag.DOOR_OPEN: "a door has been open longer than allowed",
    Flag.STALE: "the sensor went silent",
}


class _Nan(dict):
    def __missing__(self, key: str) -> float:
        return math.nan


def explain(flags: int, scores: Mapping[str, float] | None = None) -> list[str]:
    """One sentence per set bit, in bit order; numbers come from ``scores`` (missing ones show nan)."""
    values = _Nan(scores or {})
    return [f"{bit.name}: {_TEXT[bit].format_map(values)}" for bit in Flag if bit and bit in Flag(int(flags))
            and bit in _TEXT]

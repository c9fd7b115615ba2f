"""How a line's recent flags become OK / warning / alarm, and how old its data is.

Pure functions, so the rule a supervisor sees on a tile is unit-testable without Streamlit.
"""

from __future__ import annotations

import enum
import math
from datetime import UTC, datetime

import pandas as pd

from qctrace.schema import Flag

ALARM_FLAGS = Flag.SPEC_LOW | Flag.SPEC_HIGH | Flag.NOT_FINITE
"""Product out of specification (or no usable value): stop and look. Other flags only warn."""

STALE_AFTER_S = 10.0
"""Data older than this (by receive time) means the pipeline or a reader has probably stopped."""


class Level(enum.Enum):
    OK = "OK"
    WARNING = "warning"
    ALARM = "alarm"


def classify(flagged: int, flags: int) -> Level:
    """A line's level from its flagged count and the OR of its flags in the status window.

    A spec-limit or not-finite flag is an alarm because product is out of specification; a
    statistical (EWMA) or bad-quality flag alone is a warning: the process drifts or a sensor is
    unreliable, but no limit is known to be broken.
    """
    if flagged <= 0:
        return Level.OK
    return Level.ALARM if Flag(int(flags)) & ALARM_FLAGS else Level.WARNING


def age_seconds(newest: pd.Timestamp | datetime | None, now: datetime | None = None) -> float | None:
    """Seconds from ``newest`` (a receive timestamp) to ``now``; ``None`` when there is none."""
    if newest is None or pd.isna(newest):
        return None
    ts = pd.Timestamp(newest)
    if ts.tzinfo is None:
        ts = ts.tz_localize(UTC)
    now_ts = pd.Timestamp(now if now is not None else datetime.now(UTC))
    return max(0.0, (now_ts - ts).total_seconds())


def describe_age(seconds: float | None) -> str:
    """``data is 3 s old`` — whole seconds, because the page refreshes once a second."""
    if seconds is None or not math.isfinite(seconds):
        return "no data yet"
    if seconds >= 3600:
        return f"data is {seconds / 3600:.1f} h old"
    return f"data is {seconds:.0f} s old"


def format_ts(ts: pd.Timestamp | datetime | None, with_date: bool = True) -> str:
    """A UTC timestamp to the millisecond (or just ``HH:MM:SS`` where space is short)."""
    if ts is None or pd.isna(ts):
        return "—"
    t = pd.Timestamp(ts)
    t = t.tz_localize(UTC) if t.tzinfo is None else t.tz_convert(UTC)
    if not with_date:
        return t.strftime("%H:%M:%S")
    return t.strftime("%Y-%m-%d %H:%M:%S.") + f"{t.microsecond // 1000:03d} UTC"

"""Where the dashboard's data comes from, and the cached loaders that read it.

Every page calls these instead of touching files, so that caching and error handling live in one
place: live readings are cached for one second (the control chart refreshes every second and
several browser tabs share one query), ledger reads for a few seconds, and the full-chain
verification a little longer because it hashes every event.

SQL follows ``ingest.query``: a fresh in-memory DuckDB connection per query and every value,
including the file glob, bound as a parameter and never formatted into the SQL text.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import streamlit as st

from ingest.query import lot_summary, query
from ledger import Ledger
from qctrace.config import Config, load_config
from qctrace.errors import LedgerError, LedgerIntegrityError

log = logging.getLogger(__name__)

DATA_DIR_KEY = "data_dir"
"""Session-state key holding the data directory; tests set it directly."""
CONFIG_KEY = "config_path"
"""Session-state key holding the configuration file (``None``: the shipped demo configuration)."""

DEFAULT_DATA_DIR = "demo-data"
LIVE_TTL_S = 1.0
LEDGER_TTL_S = 5.0
VERIFY_TTL_S = 10.0
STATUS_WINDOW_S = 60.0
"""Status tiles judge a line by its flagged readings in this much of the newest source time."""

_SOURCE = "{SOURCE}"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The options after ``--`` on the ``streamlit run`` line; anything unknown is ignored."""
    parser = argparse.ArgumentParser(prog="qctrace-dashboard", add_help=False)
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    parser.add_argument("--config", default=None)
    args, _unknown = parser.parse_known_args(list(argv))
    return args


def _from_session(key: str) -> Any:
    try:
        return st.session_state.get(key)
    except Exception:  # no script run context (plain import): fall back to argv
        return None


def data_dir() -> Path:
    """The data directory: from the session (set by ``app.py`` or a test), else from ``sys.argv``."""
    value = _from_session(DATA_DIR_KEY)
    return Path(value) if value else Path(parse_args(sys.argv[1:]).data_dir)


def config_path() -> str | None:
    value = _from_session(CONFIG_KEY)
    return str(value) if value else parse_args(sys.argv[1:]).config


def readings_root() -> Path:
    return data_dir() / "readings"


def ledger_path() -> Path:
    return data_dir() / "ledger.sqlite"


@st.cache_resource(show_spinner=False)
def settings(path: str | None = None) -> Config:
    """The validated configuration (spec limits); raises ``ConfigError`` naming file and key."""
    return load_config(path)


def spec_limits(sensor_key: str) -> tuple[float | None, float | None]:
    """(lsl, usl) for ``site/line/device/sensor``; ``None`` where the configuration sets no limit."""
    lsl, usl, *_ = settings(config_path()).detect.for_sensor(sensor_key)
    return (lsl if math.isfinite(lsl) else None, usl if math.isfinite(usl) else None)


def _query(root: Path, sql: str, params: dict[str, Any]) -> pd.DataFrame:
    """``ingest.query.query`` as a DataFrame for Streamlit; empty when there is no data yet."""
    table = query(root, sql, params)
    return table.to_pandas() if table.num_columns else pd.DataFrame()


@st.cache_data(ttl=LIVE_TTL_S, show_spinner=False)
def line_overview(root: str, window_s: float = STATUS_WINDOW_S) -> pd.DataFrame:
    """Per (site, line): readings, newest ts/recv_ts, and flagged count and OR of flags in the window."""
    return _query(Path(root), f"""
        WITH r AS (SELECT site, line, ts, recv_ts, flags FROM {_SOURCE}),
        m AS (SELECT site, line, count(*) AS readings, max(ts) AS last_ts, max(recv_ts) AS last_recv
              FROM r GROUP BY site, line)
        SELECT m.site, m.line, m.readings, m.last_ts, m.last_recv,
               count(*) FILTER (WHERE r.flags <> 0 AND epoch_ns(r.ts) > epoch_ns(m.last_ts) - $window_ns)
                   AS flagged_recent,
               coalesce(bit_or(r.flags) FILTER (WHERE epoch_ns(r.ts) > epoch_ns(m.last_ts) - $window_ns), 0)
                   AS flags_recent
        FROM r JOIN m ON r.site = m.site AND r.line = m.line
        GROUP BY m.site, m.line, m.readings, m.last_ts, m.last_recv
        ORDER BY m.site, m.line""", {"window_ns": int(window_s * 1e9)})


@st.cache_data(ttl=LIVE_TTL_S, show_spinner=False)
def recent_readings(root: str, site: str, line: str, window_s: float) -> pd.DataFrame:
    """The newest ``window_s`` seconds (source time) of one line, per sensor oldest first.

    Compares ``epoch_ns`` values: DuckDB 2 cannot subtract an INTERVAL from a TIMESTAMP_NS.
    """
    return _query(Path(root), f"""
        WITH r AS (SELECT ts, recv_ts, device, sensor, value, quality, flags, lot FROM {_SOURCE}
                   WHERE site = $site AND line = $line)
        SELECT * FROM r WHERE epoch_ns(ts) > (SELECT epoch_ns(max(ts)) FROM r) - $window_ns
        ORDER BY device, sensor, ts""", {"site": site, "line": line, "window_ns": int(window_s * 1e9)})


@st.cache_data(ttl=LEDGER_TTL_S, show_spinner=False)
def line_sensors(root: str, site: str, line: str) -> list[str]:
    """Every ``site/line/device/sensor`` key the line has ever reported, sorted."""
    found = _query(Path(root), f"""
        SELECT DISTINCT device, sensor FROM {_SOURCE} WHERE site = $site AND line = $line ORDER BY ALL""",
                   {"site": site, "line": line})
    if found.empty:
        return []
    return [f"{site}/{line}/{d}/{s}" for d, s in zip(found["device"], found["sensor"], strict=True)]


@st.cache_data(ttl=LEDGER_TTL_S, show_spinner=False)
def lot_readings(root: str, lot: str) -> pd.DataFrame:
    """Per sensor of a lot: readings, flagged, first/last ts and min/mean/max (``ingest.query.lot_summary``)."""
    table = lot_summary(Path(root), lot)
    return table.to_pandas() if table.num_columns else pd.DataFrame()


@dataclass(frozen=True, slots=True)
class ChainStatus:
    """Outcome of a full ledger verification, as a value: ``st.cache_data`` cannot cache a raise."""

    state: Literal["verified", "broken", "unavailable"]
    message: str = ""
    events: int = 0
    head: str = ""
    bad_index: int | None = None  # first bad event when broken; everything before it verified

    def event_label(self, idx: int) -> str:
        """What this check says about event ``idx``.

        Verification stops at the first bad event, so from there on nothing is vouched for. An
        event newer than a (cached) successful check is "not yet checked", not suspicious.
        """
        if self.state == "broken":
            return "ok" if self.bad_index is not None and idx < self.bad_index else "NOT VERIFIED"
        if self.state == "verified" and idx < self.events:
            return "ok"
        return "not yet checked"


@st.cache_data(ttl=VERIFY_TTL_S, show_spinner="Verifying the ledger's hash chain…")
def verify_ledger(path: str) -> ChainStatus:
    try:
        with Ledger(Path(path), readonly=True) as led:
            report = led.scan()
    except LedgerIntegrityError as exc:
        log.warning("dashboard.verify failed: %s", exc)
        return ChainStatus("broken", str(exc), bad_index=exc.index)
    except LedgerError as exc:
        return ChainStatus("unavailable", str(exc))
    return ChainStatus("verified", events=report.events, head=report.head)


@st.cache_data(ttl=LEDGER_TTL_S, show_spinner=False)
def ledger_lots(path: str) -> list[str]:
    """Lots in order of their first event; empty when there is no ledger yet."""
    try:
        with Ledger(Path(path), readonly=True) as led:
            return led.lots()
    except LedgerError as exc:
        log.info("dashboard.lots unavailable: %s", exc)
        return []


@dataclass(frozen=True, slots=True)
class LotEvent:
    """One stored event of a lot; ``body`` is ``None`` when the stored bytes are not JSON."""

    idx: int
    kind: str
    event_time: str
    hash: str
    body: dict[str, Any] | None


@st.cache_data(ttl=LEDGER_TTL_S, show_spinner=False)
def lot_events(path: str, lot: str) -> list[LotEvent]:
    out: list[LotEvent] = []
    try:
        with Ledger(Path(path), readonly=True) as led:
            for ev in led.events(lot=lot):
                try:
                    body = ev.as_dict()
                except ValueError:
                    body = None
                out.append(LotEvent(ev.idx, ev.kind, ev.event_time, ev.hash.hex(), body))
    except LedgerError as exc:
        log.info("dashboard.events unavailable: %s", exc)
    return out

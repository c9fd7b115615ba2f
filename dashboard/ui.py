"""Small rendering helpers shared by the pages.

Streamlit renders Markdown (never raw HTML unless told to, which we never do) in alerts and
captions. Text that comes from data — site, line and lot names, error messages that quote paths —
is passed through ``md_escape`` so it shows literally and cannot restyle the page or forge a link.
"""

from __future__ import annotations

import re

import streamlit as st

from dashboard import data
from dashboard.data import ChainStatus
from dashboard.status import STALE_AFTER_S, Level, age_seconds, describe_age, format_ts

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]<>()#+\-.!|~$:])")

_TILE = {
    Level.OK: (st.success, ":material/check_circle:"),
    Level.WARNING: (st.warning, ":material/warning:"),
    Level.ALARM: (st.error, ":material/error:"),
}


def md_escape(text: str) -> str:
    """Backslash-escape every Markdown punctuation character, so ``text`` renders literally."""
    return _MD_SPECIAL.sub(r"\\\1", str(text))


def status_tile(name: str, level: Level, flagged: int, rules: str, age_s: float | None) -> None:
    """One line's tile: colour and label by level, the flag count and rules of the last minute."""
    render, icon = _TILE[level]
    why = f" ({md_escape(rules)})" if rules else ""
    render(f"**{md_escape(name)}** — **{level.value}**  \n"
           f"{flagged} flagged in the last minute{why}  \n{describe_age(age_s)}", icon=icon)


def chain_badge(chain: ChainStatus) -> None:
    """Green when the whole hash chain verifies, red with the first bad event when it does not."""
    if chain.state == "verified":
        st.success(f"chain verified: {chain.events} events, head {chain.head[:12]}…", icon=":material/verified:")
    elif chain.state == "broken":
        st.error(f"ledger integrity check failed: {md_escape(chain.message)}  \n"
                 "Events from the first bad one on are marked NOT VERIFIED below and are not evidence.",
                 icon=":material/gpp_bad:")
    else:
        st.info(f"No ledger to verify yet: {md_escape(chain.message)}", icon=":material/info:")


def staleness_banner() -> None:
    """Say since when ingest has committed nothing, when it looks down; the page goes on with what is stored."""
    last = data.ingest_last_commit(str(data.data_dir()))
    if last is None:
        st.info("Ingest has not committed any readings to this data directory yet.", icon=":material/hourglass:")
        return
    age = age_seconds(last)
    if age is not None and age > STALE_AFTER_S:
        st.warning(f"Ingest looks down: nothing committed since {format_ts(last)} ({describe_age(age)})."
                   " This page shows what was stored until then.", icon=":material/schedule:")

"""Line quality page: a status tile per line, live control charts of the chosen line, and the alarm list.

Tiles, charts and alarms are fragments with ``run_every``: they re-run on their own, so the charts
move without reloading the page and without resetting the widgets above them. Only the charts on
screen (one page of sensors) are queried, so a line with 500 sensors costs what six cost.
"""

from __future__ import annotations

import math

import pandas as pd
import streamlit as st

from dashboard import actions, auth, charts, data, session, status, trace, ui
from qctrace.errors import QctraceError
from qctrace.schema import flag_names

REFRESH = 1.0
ALARM_REFRESH = 2.0
CHARTS_PER_PAGE = 6


def _lines(overview: pd.DataFrame) -> tuple[tuple[str, str], ...]:
    if overview.empty:
        return ()
    return tuple(zip(overview["site"].astype(str), overview["line"].astype(str), strict=True))


@st.fragment(run_every=REFRESH)
def status_tiles(root: str, known: tuple[tuple[str, str], ...]) -> None:
    """A tile per line; reruns the whole page when lines appear, so the selector offers them."""
    overview = data.line_overview(root, data.STATUS_WINDOW_S)
    if _lines(overview) != known:
        st.rerun()
    if overview.empty:
        st.info(f"No readings yet under {ui.md_escape(root)}. Start the pipeline (`qctrace demo`) or check"
                " `--data-dir`; this page picks the data up as soon as it arrives.", icon=":material/hourglass:")
        return
    cols = st.columns(min(len(overview), 4))
    for i, row in enumerate(overview.itertuples(index=False)):
        level = status.classify(int(row.flagged_recent), int(row.flags_recent))
        rules = flag_names(int(row.flags_recent)) if row.flagged_recent else ""
        with cols[i % len(cols)]:
            ui.status_tile(f"{row.site}/{row.line}", level, int(row.flagged_recent), rules,
                           status.age_seconds(row.last_recv))


@st.fragment(run_every=REFRESH)
def live_charts(root: str, site: str, line: str, keys: tuple[str, ...], window_s: float) -> None:
    """Newest reading, staleness and one control chart per sensor on this page of sensors."""
    readings = data.recent_readings(root, site, line, window_s, keys)
    if readings.empty:
        st.info("No readings for these sensors in the window.", icon=":material/hourglass:")
        return
    readings = readings.assign(key=site + "/" + line + "/" + readings["device"].astype(str) + "/"
                               + readings["sensor"].astype(str))
    newest_ts, newest_recv = readings["ts"].max(), readings["recv_ts"].max()
    age = status.age_seconds(newest_recv)
    flagged = int((readings["flags"] != 0).sum())
    c1, c2, c3 = st.columns(3)
    c1.metric("Newest reading (source time, UTC)", status.format_ts(newest_ts, with_date=False))
    c2.metric("Data age (receive time)", "—" if age is None else f"{age:.0f} s")
    c3.metric(f"Flagged in the last {window_s:.0f} s", f"{flagged} of {len(readings)}")
    st.caption(f"Newest reading {status.format_ts(newest_ts)} · {status.describe_age(age)}")
    if age is not None and age > status.STALE_AFTER_S:
        st.warning(f"No new readings for this line since {status.format_ts(newest_recv)}"
                   f" ({status.describe_age(age)}): is the pipeline running?", icon=":material/schedule:")
    cols = st.columns(2 if len(keys) > 1 else 1)
    for i, key in enumerate(keys):
        one = readings[readings["key"] == key]
        lsl, usl = data.spec_limits(key)
        n_flagged = int((one["flags"] != 0).sum())
        with cols[i % len(cols)]:
            count = f":red[**{n_flagged} flagged**]" if n_flagged else "0 flagged"
            st.markdown(f"**{ui.md_escape(key)}** · {count}")
            if one.empty:
                st.caption("No readings in the window.")
                continue
            st.plotly_chart(charts.control_chart(one, key, lsl, usl), key=f"chart:{key}",
                            config={"displaylogo": False})


@st.fragment(run_every=ALARM_REFRESH)
def alarm_list(user: auth.User) -> None:
    """Active alarms with an acknowledge button, or (before alarm management) the latest episodes."""
    ops = actions.alarm_ops()
    if ops is None:
        st.caption("Alarm management is not installed: these are the latest anomaly episodes from the ledger"
                   " (read-only).")
        episodes = trace.anomalies_table(data.events_of_kind(str(data.ledger_path()), ("anomaly_episode",), 50))
        if episodes.empty:
            st.caption("No anomaly episode recorded yet.")
        else:
            st.dataframe(episodes.iloc[::-1], hide_index=True, key="episodes")
        return
    try:
        alarms = data.alarms(str(data.data_dir()), data.config_path())
    except QctraceError as exc:
        st.error(f"Alarms unavailable: {ui.md_escape(str(exc))}")
        return
    shown = [a for a in alarms if a.state != "NORMAL"]
    st.caption(f"{sum(a.state.startswith('UNACK') for a in shown)} unacknowledged of {len(shown)} alarms")
    if not shown:
        st.success("No alarms.", icon=":material/check_circle:")
        return
    frame = pd.DataFrame([{"priority": a.priority, "state": a.state, "sensor": a.sensor, "rule": a.rule,
                           "raised": status.format_ts(pd.Timestamp(a.raised_ns, tz="UTC")),
                           "message": a.message, "acked by": a.acked_by or "", "id": a.id} for a in shown])
    st.dataframe(frame, hide_index=True, key="alarms")
    may_ack = user.role in auth.ACTIONS["acknowledge"]
    unacked = [a.id for a in shown if a.state.startswith("UNACK")]
    if not unacked:
        return
    c1, c2, c3 = st.columns([3, 3, 1], vertical_alignment="bottom")
    alarm_id = c1.selectbox("Alarm to acknowledge", unacked, key="ack_id",
                            format_func=lambda i: next(f"{a.sensor} · {a.rule} · {a.state}" for a in shown
                                                       if a.id == i))
    comment = c2.text_input("Comment (optional)", key="ack_comment")
    if c3.button("Acknowledge", key="ack", disabled=not may_ack, type="primary"):
        try:
            view = actions.acknowledge(alarm_id, comment)
        except QctraceError as exc:
            st.error(ui.md_escape(str(exc)), icon=":material/block:")
            return
        data.alarms.clear()
        st.success(f"Acknowledged by {ui.md_escape(user.name)}: now {ui.md_escape(view.state)}")


def render() -> None:
    user = session.require_page("line_quality")
    st.title("Line quality")
    ui.staleness_banner()
    root = str(data.readings_root())
    overview = data.line_overview(root, data.STATUS_WINDOW_S)
    lines = _lines(overview)
    st.caption(f"Status over the last {data.STATUS_WINDOW_S:.0f} s of source time: alarm = a spec limit broken"
               " or a non-finite value, warning = statistical or bad-quality flags only.")
    status_tiles(root, lines)
    if lines:
        st.subheader("Control charts")
        c1, c2, c3, c4 = st.columns([2, 3, 1, 2])
        site, line = c1.selectbox("Line", lines, format_func=lambda sl: f"{sl[0]}/{sl[1]}", key="lq_line")
        sensors = data.line_sensors(root, site, line)
        needle = c2.text_input("Filter sensors", key="lq_filter", placeholder="e.g. seal_temp")
        if needle:
            sensors = [s for s in sensors if needle.lower() in s.lower()]
        pages = max(1, math.ceil(len(sensors) / CHARTS_PER_PAGE))
        page = c3.number_input(f"Page (of {pages})", min_value=1, max_value=pages, value=1, step=1, key="lq_page")
        window_s = c4.select_slider("Window (s of source time)", options=[30, 60, 120, 300, 600, 1800], value=120,
                                    key="lq_window")
        start = (int(page) - 1) * CHARTS_PER_PAGE
        keys = tuple(sensors[start:start + CHARTS_PER_PAGE])
        shown = f"{start + 1 if keys else 0}–{start + len(keys)}"
        st.caption(f"{len(sensors)} sensors on {ui.md_escape(site + '/' + line)}; showing {shown}")
        if keys:
            live_charts(root, site, line, keys, float(window_s))
    st.subheader("Alarms")
    alarm_list(user)


render()

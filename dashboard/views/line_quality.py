"""Line quality page: a status tile per line, then a live control chart of the chosen line.

The tiles and the chart are fragments with ``run_every``: they re-run once a second on their own,
so the chart moves without reloading the page and without resetting the widgets above it.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import charts, data, status, ui
from qctrace.schema import flag_names

ALL_SENSORS = "All sensors"
REFRESH = 1.0


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
def live_chart(root: str, site: str, line: str, sensor: str, window_s: float) -> None:
    """Newest reading, staleness and one control chart per sensor of the line."""
    readings = data.recent_readings(root, site, line, window_s)
    if readings.empty:
        st.info("No readings for this line yet.", icon=":material/hourglass:")
        return
    readings = readings.assign(key=site + "/" + line + "/" + readings["device"] + "/" + readings["sensor"])
    newest_ts, newest_recv = readings["ts"].max(), readings["recv_ts"].max()
    age = status.age_seconds(newest_recv)
    flagged = int((readings["flags"] != 0).sum())
    c1, c2, c3 = st.columns(3)
    c1.metric("Newest reading (source time, UTC)", status.format_ts(newest_ts, with_date=False))
    c2.metric("Data age (receive time)", "—" if age is None else f"{age:.0f} s")
    c3.metric(f"Flagged in the last {window_s:.0f} s", f"{flagged} of {len(readings)}")
    st.caption(f"Newest reading {status.format_ts(newest_ts)} · {status.describe_age(age)}")
    if age is not None and age > status.STALE_AFTER_S:
        st.warning(f"No new readings for {age:.0f} s: is the pipeline running?", icon=":material/schedule:")

    keys = sorted(readings["key"].unique())
    if sensor != ALL_SENSORS:
        keys = [k for k in keys if k == sensor]
        if not keys:
            st.info("This sensor has no readings in the window.")
            return
    cols = st.columns(2 if len(keys) > 1 else 1)
    for i, key in enumerate(keys):
        lsl, usl = data.spec_limits(key)
        one = readings[readings["key"] == key]
        fig = charts.control_chart(one, key, lsl, usl)
        n_flagged = int((one["flags"] != 0).sum())
        with cols[i % len(cols)]:
            count = f":red[**{n_flagged} flagged**]" if n_flagged else "0 flagged"
            st.markdown(f"**{ui.md_escape(key)}** · {count}")
            st.plotly_chart(fig, key=f"chart:{key}", config={"displaylogo": False})


def render() -> None:
    st.title("Line quality")
    root = str(data.readings_root())
    overview = data.line_overview(root, data.STATUS_WINDOW_S)
    lines = _lines(overview)
    st.caption(f"Status over the last {data.STATUS_WINDOW_S:.0f} s of source time: alarm = a spec limit broken"
               " or a non-finite value, warning = statistical (EWMA) or bad-quality flags only.")
    status_tiles(root, lines)
    if not lines:
        return

    st.subheader("Control chart")
    c1, c2, c3 = st.columns([2, 3, 2])
    site, line = c1.selectbox("Line", lines, format_func=lambda sl: f"{sl[0]}/{sl[1]}", key="lq_line")
    sensor = c2.selectbox("Sensor", [ALL_SENSORS, *data.line_sensors(root, site, line)], key="lq_sensor")
    window_s = c3.select_slider("Window (s of source time)", options=[30, 60, 120, 300, 600, 1800], value=120,
                                key="lq_window")
    live_chart(root, site, line, sensor, float(window_s))


render()

"""Lot trace page: whether the ledger can be trusted, then everything it and the readings say about a lot.

The verification badge comes first on purpose: a trace read from a ledger whose hash chain does
not verify is not evidence, and the reader must see that before the tables.
"""

from __future__ import annotations

import streamlit as st

from dashboard import data, trace, ui


def render() -> None:
    st.title("Lot trace")
    path = str(data.ledger_path())
    chain = data.verify_ledger(path)
    ui.chain_badge(chain)
    if chain.state == "unavailable":
        return

    lots = data.ledger_lots(path)
    if not lots:
        st.info("The ledger has no lots yet.", icon=":material/inventory_2:")
        return
    # Newest lot first: it is the one a supervisor asks about.
    lot = st.selectbox("Lot", list(reversed(lots)), key="lt_lot")
    if lot is None:
        return

    events = data.lot_events(path, lot)
    events_df = trace.events_table(events, chain)
    anomalies = trace.anomalies_table(events)
    summary = data.lot_readings(str(data.readings_root()), lot)

    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Ledger events", len(events_df))
    c2.metric("Anomaly episodes", len(anomalies))
    c3.metric("Readings", int(summary["readings"].sum()) if not summary.empty else 0)
    c4.metric("Flagged readings", int(summary["flagged"].sum()) if not summary.empty else 0)

    st.subheader("Ledger events")
    st.dataframe(events_df, hide_index=True, column_config={
        "idx": st.column_config.NumberColumn("idx", width="small"),
    })

    st.subheader("Anomaly episodes")
    if anomalies.empty:
        st.caption("No anomaly episode was recorded for this lot.")
    else:
        st.dataframe(anomalies, hide_index=True)

    st.subheader("Readings per sensor")
    if summary.empty:
        st.caption("No stored readings carry this lot.")
    else:
        st.dataframe(summary, hide_index=True, column_config={
            "sensor_key": st.column_config.TextColumn("sensor", width="medium"),
            "mean_value": st.column_config.NumberColumn("mean_value", format="%.4g"),
        })


render()

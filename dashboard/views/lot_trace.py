"""Trace page: whether the ledger can be trusted, then everything it and the readings say about a lot.

The verification badge comes first on purpose: a trace read from a ledger whose hash chain does
not verify is not evidence, and the reader must see that before the tables. Exports, holds and
recalls re-check the user's permission when the button is pressed (``dashboard.actions``).
"""

from __future__ import annotations

import streamlit as st

from dashboard import actions, data, genealogy, session, trace, ui
from qctrace.errors import QctraceError

EXPORTS = (("epcis", "EPCIS 2.0 (JSON-LD)"), ("fsma", "FSMA 204 spreadsheet (XLSX)"), ("bundle", "Audit bundle (zip)"),
           ("report", "Quality report (PDF)"))


def _badges(chain: data.ChainStatus, proof: data.Proof) -> None:
    c1, c2, c3 = st.columns(3)
    with c1:
        ui.chain_badge(chain)
    with c2:
        (st.success if proof.checkpoint_ok else st.warning)(
            f"**checkpoint signed**: {ui.md_escape(proof.checkpoint)}" if proof.checkpoint_ok
            else f"**checkpoint not proven**: {ui.md_escape(proof.checkpoint)}",
            icon=":material/signature:")
    with c3:
        (st.success if proof.anchored_ok else st.warning)(
            f"**root anchored**: {ui.md_escape(proof.anchored)}" if proof.anchored_ok
            else f"**not anchored**: {ui.md_escape(proof.anchored)}", icon=":material/link:")


def _lot_state(events: list[data.LotEvent]) -> str:
    state = ""
    for ev in events:
        if ev.kind in ("lot_held", "lot_released", "lot_recalled") and ev.body is not None:
            by = ev.body.get("qctrace:by", "?")
            state = {"lot_held": "ON HOLD", "lot_released": "released", "lot_recalled": "RECALLED"}[ev.kind]
            state = f"{state} by {by} at {ev.event_time} (event #{ev.idx}): {ev.body.get('qctrace:reason', '')}"
    return state


def _exports(lot: str) -> None:
    st.subheader("Exports")
    prepared = st.session_state.get("lt_exports")
    if st.button("Prepare exports of this lot", key="lt_prepare", icon=":material/download:"):
        try:
            st.session_state["lt_exports"] = prepared = {"lot": lot, **{k: actions.export(k, lot) for k, _ in EXPORTS}}
        except QctraceError as exc:
            st.error(ui.md_escape(str(exc)), icon=":material/block:")
            return
    if prepared and prepared.get("lot") == lot:
        cols = st.columns(len(EXPORTS))
        for col, (kind, label) in zip(cols, EXPORTS, strict=True):
            name, blob, mime = prepared[kind]
            col.download_button(label, blob, file_name=name, mime=mime, key=f"lt_dl_{kind}")


def _actions(lot: str) -> None:
    st.subheader("Hold or recall")
    c1, c2 = st.columns(2)
    with c1.form("hold"):
        reason = st.text_input("Reason for the hold", key="hold_reason")
        if st.form_submit_button("Put lot on hold", icon=":material/pause_circle:"):
            try:
                idx = actions.hold(lot, reason)
            except QctraceError as exc:
                st.error(ui.md_escape(str(exc)), icon=":material/block:")
            else:
                st.success(f"Lot {ui.md_escape(lot)} put on hold: ledger event #{idx}")
                data.lot_events.clear()
    with c2.form("recall"):
        reason = st.text_input("Reason for the recall", key="recall_reason")
        sure = st.checkbox("I understand a recall notifies everyone downstream", key="recall_sure")
        if st.form_submit_button("Start recall", type="primary", icon=":material/campaign:"):
            if not sure or not reason.strip():
                st.error("Give a reason and tick the box to start a recall.")
            else:
                try:
                    report = actions.recall(lot, reason)
                except QctraceError as exc:
                    st.error(ui.md_escape(str(exc)), icon=":material/block:")
                else:
                    scope = ", ".join(f"{len(v)} {k}" for k, v in report.scope.items())
                    st.success(f"Recall of {ui.md_escape(lot)} recorded as ledger event #{report.event_idx};"
                               f" scope: {ui.md_escape(scope)}. Exports in {ui.md_escape(str(report.files[0].parent))}")
                    data.lot_events.clear()


def render() -> None:
    session.require_page("trace")
    st.title("Trace")
    ui.staleness_banner()
    path = str(data.ledger_path())
    chain = data.verify_ledger(path)
    if chain.state == "unavailable":
        ui.chain_badge(chain)
        return
    lots = data.ledger_lots(path)
    if not lots:
        ui.chain_badge(chain)
        st.info("The ledger has no lots yet.", icon=":material/inventory_2:")
        return
    c1, c2 = st.columns([1, 2])
    needle = c1.text_input("Search lots", key="lt_search", placeholder="part of a lot code")
    matches = [x for x in reversed(lots) if needle.lower() in x.lower()]  # newest first
    if not matches:
        st.warning("No lot matches that search.")
        return
    lot = c2.selectbox(f"Lot ({len(matches)} matching)", matches, key="lt_lot")
    if lot is None:
        return
    _badges(chain, data.lot_proof(str(data.data_dir()), lot))

    events = data.lot_events(path, lot)
    if state := _lot_state(events):
        st.error(f"Lot {ui.md_escape(lot)} is {ui.md_escape(state)}", icon=":material/front_hand:")
    gen = data.genealogy(path, lot)
    anomalies = trace.anomalies_table(events)
    summary = data.lot_readings(str(data.readings_root()), lot)

    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Ledger events", len(events))
    c2.metric("Anomaly episodes", len(anomalies))
    c3.metric("Readings", int(summary["readings"].sum()) if not summary.empty else 0)
    c4.metric("Flagged readings", int(summary["flagged"].sum()) if not summary.empty else 0)

    st.subheader("Genealogy")
    if gen.error:
        st.warning(ui.md_escape(gen.error))
    else:
        c1, c2 = st.columns(2)
        for col, title, scope in ((c1, "Backward (where it came from)", gen.backward),
                                  (c2, "Forward (where it went)", gen.forward)):
            col.markdown(f"**{title}**")
            col.dataframe([{"kind": k, "names": ", ".join(v)} for k, v in scope.items()] or [{"kind": "—",
                          "names": "nothing recorded"}], hide_index=True, key=f"scope:{title}")
        st.graphviz_chart(genealogy.to_dot(gen))

    st.subheader("Ledger events")
    st.dataframe(trace.events_table(events, chain), hide_index=True, key="lt_events",
                 column_config={"idx": st.column_config.NumberColumn("idx", width="small")})
    st.subheader("Anomaly episodes")
    if anomalies.empty:
        st.caption("No anomaly episode was recorded for this lot.")
    else:
        st.dataframe(anomalies, hide_index=True, key="lt_anomalies")
    st.subheader("Readings per sensor")
    if summary.empty:
        st.caption("No stored readings carry this lot.")
    else:
        st.dataframe(summary, hide_index=True, key="lt_summary", column_config={
            "sensor_key": st.column_config.TextColumn("sensor", width="medium"),
            "mean_value": st.column_config.NumberColumn("mean_value", format="%.4g"),
        })
    _exports(lot)
    _actions(lot)


render()

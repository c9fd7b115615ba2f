"""Ledger page: the chain's state, every signed checkpoint and anchor, and a full verification on demand.

The quick check (hash chain and Merkle nodes, cached) runs on every visit; the full verification
is what `qctrace verify` does (signatures, rollback, anchors on the chain, Parquet hashes), so it
runs only when asked, with a progress bar per step.
"""

from __future__ import annotations

import streamlit as st

from dashboard import actions, data, session, ui
from qctrace.errors import LedgerIntegrityError, QctraceError


def _verify() -> None:
    bar = st.progress(0.0, text="starting…")

    def progress(step: str, done: int, total: int) -> None:
        bar.progress(min(1.0, (done + 1) / max(total, 1)), text=f"verifying {step}: {done + 1} of {total}")

    try:
        report = actions.verify(progress)
    except LedgerIntegrityError as exc:
        bar.empty()
        st.error(f"**Verification failed**: {ui.md_escape(str(exc))}", icon=":material/gpp_bad:")
        return
    except QctraceError as exc:
        bar.empty()
        st.error(ui.md_escape(str(exc)), icon=":material/block:")
        return
    bar.progress(1.0, text="done")
    st.success(f"**Ledger verified**: {report.events} events, {report.checkpoints} signed checkpoints,"
               f" {report.anchors} anchors on chain, {report.data_files} data files", icon=":material/verified:")
    st.code("\n".join(report.lines()), language=None)


def render() -> None:
    session.require_page("ledger")
    st.title("Ledger")
    ui.staleness_banner()
    chain = data.verify_ledger(str(data.ledger_path()))
    ui.chain_badge(chain)
    if chain.state == "unavailable":
        return
    cps = data.checkpoints(str(data.data_dir()))
    c1, c2, c3 = st.columns(3)
    c1.metric("Events", chain.events)
    c2.metric("Signed checkpoints", len(cps))
    c3.metric("Anchored", int((cps["tx"] != "not anchored").sum()) if not cps.empty else 0)
    st.subheader("Checkpoints and anchors")
    if cps.empty:
        st.caption("No signed checkpoint yet (`qctrace checkpoint`).")
    else:
        st.dataframe(cps, hide_index=True, key="checkpoints")
    st.subheader("Full verification")
    st.caption("Chain and Merkle tree, every checkpoint signature (not rolled back), every anchor on the chain,"
               " every Parquet file against its recorded SHA-256 — what `qctrace verify` runs.")
    if st.button("Run full verification", key="verify", type="primary", icon=":material/fact_check:"):
        _verify()


render()

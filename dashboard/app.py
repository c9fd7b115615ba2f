"""Dashboard entry script: ``streamlit run dashboard/app.py -- --data-dir DIR [--config FILE]``.

Streamlit passes the words after ``--`` in ``sys.argv``. They are stored in the session once, so
every page reads one data directory through ``dashboard.data`` and tests can set it directly.
A session that is not logged in sees only the login form; a logged-in one sees the pages its
role may open (``dashboard.auth.PAGES``), and each page checks again itself.
Pages live in ``views/`` (not ``pages/``, which Streamlit would also pick up on its own).
"""

from __future__ import annotations

import importlib
import sys
import threading
from pathlib import Path

import streamlit as st

from dashboard import auth, data, session, ui
from qctrace.errors import ConfigError
from qctrace.metrics import dashboard_metrics

HERE = Path(__file__).resolve().parent

PAGES = (  # (key in auth.PAGES, file, title, icon)
    ("line_quality", "line_quality.py", "Line quality", ":material/monitoring:"),
    ("cold_chain", "cold_chain.py", "Cold chain", ":material/ac_unit:"),
    ("trace", "lot_trace.py", "Trace", ":material/account_tree:"),
    ("ledger", "ledger_view.py", "Ledger", ":material/verified:"),
)


@st.cache_resource(show_spinner=False)
def _warm_up(readings: str) -> threading.Thread:
    """Once per server: import the pages' heavy libraries and read the Parquet footers in the
    background while the first user logs in, so their first page does not pay for it."""

    def run() -> None:
        import pandas as pd

        from dashboard import catalog, charts

        for name in ("qctrace.alarm_ops", "qctrace.ledger_ops"):
            importlib.import_module(name)
        # Plotly loads its validators on first use (about a second): draw one throwaway chart.
        charts.control_chart(pd.DataFrame({"ts": pd.to_datetime([0, 1], utc=True), "value": [1.0, 2.0],
                                           "flags": [0, 4]}), "warm-up", 0.0, 3.0).to_json()
        catalog.files(Path(readings))

    t = threading.Thread(target=run, name="dashboard-warm-up", daemon=True)
    t.start()
    return t


def main() -> None:
    st.set_page_config(page_title="qctrace", layout="wide")
    args = data.parse_args(sys.argv[1:])
    st.session_state.setdefault(data.DATA_DIR_KEY, str(Path(args.data_dir).resolve()))
    st.session_state.setdefault(data.CONFIG_KEY, args.config)
    try:
        metrics_cfg = data.settings(data.config_path()).metrics
    except ConfigError as exc:
        st.error(ui.md_escape(str(exc)))
        st.stop()
    _warm_up(str(data.readings_root()))
    user = session.current_user()
    if user is None:
        st.navigation([st.Page(session.login_form, title="Log in", url_path="login", icon=":material/login:")],
                      position="hidden").run()
        return
    pages = [st.Page(HERE / "views" / file, title=title, url_path=key, icon=icon)
             for key, file, title, icon in PAGES if auth.can_open(user, key)]
    page = st.navigation(pages)
    with st.sidebar:
        st.caption(f"Logged in as **{ui.md_escape(user.name)}** ({ui.md_escape(user.role)})")
        if st.button("Log out", key="logout", icon=":material/logout:"):
            session.logout()
            st.rerun()
        st.caption(f"Data directory: {ui.md_escape(str(data.data_dir()))}")
    # page renders on /metrics ([metrics] dashboard_port, 0 = off), one server per Streamlit process
    with dashboard_metrics(metrics_cfg.host, metrics_cfg.dashboard_port).rendering(page.url_path):
        page.run()


main()

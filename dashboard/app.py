"""Dashboard entry script: ``streamlit run dashboard/app.py -- --data-dir DIR [--config FILE]``.

Streamlit passes the words after ``--`` in ``sys.argv``. They are stored in the session once, so
every page reads one data directory through ``dashboard.data`` and tests can set it directly.
Pages live in ``views/`` (not ``pages/``, which Streamlit would also pick up on its own).
"""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

from dashboard import data, ui
from qctrace.errors import ConfigError

HERE = Path(__file__).resolve().parent


def main() -> None:
    st.set_page_config(page_title="qctrace", layout="wide")
    args = data.parse_args(sys.argv[1:])
    st.session_state.setdefault(data.DATA_DIR_KEY, str(Path(args.data_dir).resolve()))
    st.session_state.setdefault(data.CONFIG_KEY, args.config)
    try:
        data.settings(data.config_path())
    except ConfigError as exc:
        st.error(ui.md_escape(str(exc)))
        st.stop()
    page = st.navigation([
        st.Page(HERE / "views" / "line_quality.py", title="Line quality", url_path="line_quality",
                icon=":material/monitoring:", default=True),
        st.Page(HERE / "views" / "lot_trace.py", title="Lot trace", url_path="lot_trace",
                icon=":material/account_tree:"),
    ])
    st.sidebar.caption(f"Data directory: {ui.md_escape(str(data.data_dir()))}")
    page.run()


main()

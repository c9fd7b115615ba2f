"""The Streamlit dashboard: a live control chart per line and a lot trace over the verified ledger.

It is read-only: it opens the Parquet dataset through DuckDB and the ledger with
``Ledger(readonly=True)``, so running it can never change what ingest wrote. ``app.py`` is the
entry script (``streamlit run dashboard/app.py -- --data-dir DIR``); the pages live in ``views/``.
"""

__all__: list[str] = []

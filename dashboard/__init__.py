"""The Streamlit dashboard: line quality, cold chain, lot trace and ledger, behind a login with roles.

It reads: the Parquet dataset through DuckDB (only the files and sensors a page shows, found from
the files' footers by ``catalog``) and the ledger with ``Ledger(readonly=True)``. The only writes
are the actions in ``actions`` (acknowledge, hold, recall), each re-checking the user's permission
when it runs and recorded in the ledger with their name. ``app.py`` is the entry script
(``streamlit run dashboard/app.py -- --data-dir DIR [--config FILE]``); the pages live in ``views/``.
"""

__all__: list[str] = []

"""The dashboard's few writes and exports, each re-checking the user's permission when it runs.

Every function takes the action's name, calls ``session.act`` (which reloads the configuration
and raises ``PermissionDenied``), then calls the one library function that does the work and
records it in the ledger with the user's name. Nothing here is cached.
"""

from __future__ import annotations

import importlib
import logging
import tempfile
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from dashboard import data, session
from qctrace.config import Config

if TYPE_CHECKING:
    from qctrace import ledger_ops

log = logging.getLogger(__name__)


def _cfg() -> Config:
    """The configuration as on disk now, with the session's data directory."""
    from qctrace.config import load_config

    return load_config(data.config_path()).with_overrides(data_dir=data.data_dir())


def alarm_ops() -> ModuleType | None:
    """``qctrace.alarm_ops`` when alarm management is installed, else ``None`` (the page then lists
    anomaly episodes from the ledger, which cannot be acknowledged)."""
    try:
        return importlib.import_module("qctrace.alarm_ops")
    except ModuleNotFoundError:
        return None


def acknowledge(alarm_id: str, comment: str = "") -> object:
    user = session.act("acknowledge")
    ops = alarm_ops()
    if ops is None:
        raise RuntimeError("alarm management (qctrace.alarm_ops) is not installed")
    view = ops.acknowledge(_cfg(), alarm_id, user.name, comment)
    log.info("dashboard.ack alarm=%s user=%s", alarm_id, user.name)
    return view


def hold(lot: str, reason: str) -> int:
    from qctrace import ledger_ops

    user = session.act("hold")
    idx = ledger_ops.hold(_cfg(), lot, user.name, reason)
    log.info("dashboard.hold lot=%s user=%s event=%d", lot, user.name, idx)
    return idx


def recall(lot: str, reason: str) -> ledger_ops.RecallReport:
    from qctrace import ledger_ops

    user = session.act("recall")
    report = ledger_ops.recall(_cfg(), lot, user.name, reason)
    log.info("dashboard.recall lot=%s user=%s event=%d", lot, user.name, report.event_idx)
    return report


def export(kind: str, lot: str) -> tuple[str, bytes, str]:
    """(file name, bytes, MIME type) of a lot's EPCIS 2.0 document, FSMA 204 spreadsheet, audit bundle
    or quality report (PDF: control charts, capability, episodes, alarms, ledger proofs).

    Exports only read the ledger, but they are evidence handed to outsiders, so they need the
    trace permission at the moment they are made.
    """
    from qctrace import ledger_ops

    session.act("export")
    cfg = _cfg()
    with tempfile.TemporaryDirectory(prefix="qctrace-export-") as tmp:
        if kind == "epcis":
            out, mime = Path(tmp) / f"{lot}-epcis.json", "application/ld+json"
            ledger_ops.export_epcis(cfg, out, lot)
        elif kind == "fsma":
            out, mime = Path(tmp) / f"{lot}-fsma204.xlsx", \
                "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
            ledger_ops.export_fsma(cfg, out, lot)
        elif kind == "bundle":
            out, mime = Path(tmp) / f"{lot}-audit-bundle.zip", "application/zip"
            ledger_ops.export_bundle(cfg, out, lot)
        elif kind == "report":
            from qctrace.report import write_report

            out, mime = Path(tmp) / f"{lot}-quality-report.pdf", "application/pdf"
            write_report(cfg, lot, "pdf", out)
        else:
            raise ValueError(f"unknown export {kind!r}: epcis, fsma, bundle or report")
        return out.name, out.read_bytes(), mime


def verify(progress: ledger_ops.Progress) -> ledger_ops.AuditReport:
    """The full verification `qctrace verify` runs (chain, Merkle, checkpoints, anchors, Parquet files)."""
    from qctrace import ledger_ops

    session.act("verify")
    return ledger_ops.verify(_cfg(), progress=progress)

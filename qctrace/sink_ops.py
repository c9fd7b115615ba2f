"""Dataset maintenance as the CLI runs it: compaction and retention, with their ledger events.

Ingest knows nothing of the ledger; here the two meet. Each file compaction writes becomes a
``data_committed`` event naming the files it replaces, and each retention run's manifest one that
names the files it dropped, so ``qctrace verify`` still proves every reading it can find and
knows why the others are gone. The lots retention must keep come from the ledger: held or
recalled, with no later release.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import date

from ingest.commit_record import CommittedFile
from ingest.compact import CompactResult, compact
from ingest.retention import RetentionResult, apply_retention
from ledger import Ledger
from ledger import events as ev
from qctrace.config import Config
from qctrace.errors import ConfigError
from qctrace.ledger_ops import READINGS_DIR, ledger_path

Progress = Callable[[str, int, int], None]


def protected_lots(led: Ledger) -> set[str]:
    """Lots on hold or recalled and not released since (in ledger order)."""
    kinds = (ev.LOT_HELD, ev.LOT_RECALLED, ev.LOT_RELEASED)
    stored = sorted((e for k in kinds for e in led.events(kind=k)), key=lambda e: e.idx)
    out: set[str] = set()
    for e in stored:
        lots = set(ev.lots_in(e.as_dict()))
        out = out - lots if e.kind == ev.LOT_RELEASED else out | lots
    return out


def _record(led: Ledger) -> Callable[[list[CommittedFile]], None]:
    def record(files: list[CommittedFile]) -> None:
        led.append_many([ev.data_committed(f.path, f.sha256, f.rows, time.time_ns(), replaces=f.replaces)
                         for f in files])
    return record


def run_compaction(cfg: Config, progress: Progress | None = None) -> CompactResult:
    s = cfg.sink
    with Ledger(ledger_path(cfg.data_dir)) as led:
        return compact(cfg.data_dir / READINGS_DIR, cfg.data_dir / "ingest", s.compact_min_files,
                       s.compact_target_rows, s.retired_grace_s, s.row_group_rows, progress, _record(led))


def run_retention(cfg: Config, dry_run: bool = False, days: int | None = None, today: date | None = None,
                  progress: Progress | None = None) -> RetentionResult:
    days = days if days is not None else cfg.sink.retention_days
    if days is None:
        raise ConfigError("retention: no age configured; set [sink] retention_days in the configuration"
                          " (or pass --days N)")
    with Ledger(ledger_path(cfg.data_dir)) as led:
        record = _record(led)
        return apply_retention(cfg.data_dir / READINGS_DIR, cfg.data_dir / "ingest", days, protected_lots(led),
                               dry_run, cfg.sink.retired_grace_s, today, progress, lambda m: record([m]))

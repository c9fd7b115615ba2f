"""`qctrace status`: the health of a running deployment at a glance, and the data directory's state.

Each configured process (demo, edge, ingest, simulator) serves ``/health`` (qctrace/metrics.py);
this asks each and prints one row per process with what is wrong in words. When nothing answers,
the data directory still tells the story: when ingest last committed, what the edge spools hold,
how far the ledger is checkpointed and anchored. Files are only read: a spool or dataset is never
opened for writing here, so running ``status`` next to live processes is safe.
"""

from __future__ import annotations

import json
import sqlite3
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qctrace.config import Config
from qctrace.ledger_ops import checkpoint_dir, ledger_path


@dataclass
class ProcessHealth:
    name: str
    url: str
    status: str  # ok | degraded | down | not running
    problems: list[str] = field(default_factory=list)
    uptime_s: float | None = None


def configured_urls(cfg: Config) -> dict[str, str]:
    m = cfg.metrics
    ports = {"demo": m.demo_port, "edge": m.edge_port, "ingest": m.ingest_port, "sim": m.sim_port,
             "dashboard": m.dashboard_port}
    return {name: f"http://{m.host}:{port}" for name, port in ports.items() if port}


def probe(name: str, url: str, timeout_s: float = 2.0) -> ProcessHealth:
    """One process's /health; a process that does not answer is "not running", with the reason."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=timeout_s) as r:
            rep = json.loads(r.read())
    except urllib.error.HTTPError as exc:  # 503: the process answers and says it is down
        try:
            rep = json.loads(exc.read())
        except ValueError:
            return ProcessHealth(name, url, "down", [f"HTTP {exc.code} from /health"])
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return ProcessHealth(name, url, "not running", [f"no answer: {reason}"])
    problems = [f"{comp}: {p}" for comp, c in rep.get("components", {}).items() for p in c.get("problems", [])]
    return ProcessHealth(rep.get("process", name), url, str(rep.get("status", "down")), problems,
                         rep.get("uptime_s"))


def _ago(ts: float) -> str:
    s = max(0.0, time.time() - ts)
    return f"{s:.0f} s ago" if s < 120 else f"{s / 60:.0f} min ago" if s < 7200 else f"{s / 3600:.1f} h ago"


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) + f" ({_ago(ts)})"


def data_dir_view(data_dir: Path) -> list[tuple[str, str]]:
    """What the files say, without opening anything for writing."""
    rows: list[tuple[str, str]] = [("data directory", str(data_dir) + ("" if data_dir.is_dir() else " (missing)"))]
    commit = data_dir / "ingest" / "commit.json"
    rows.append(("last commit", _when(commit.stat().st_mtime) if commit.exists() else "none yet"))
    spools = sorted((data_dir / "edge").glob("*/spool")) if (data_dir / "edge").is_dir() else []
    for sp in spools:
        segs = sorted(sp.glob("seg-*"))
        size = sum(p.stat().st_size for p in segs)
        oldest = min((p.stat().st_mtime for p in segs), default=None)
        rows.append((f"spool {sp.parent.name}", f"{len(segs)} segment(s), {size / 2**20:.1f} MiB on disk"
                     + (f", oldest segment written {_ago(oldest)}" if oldest and size else "")))
    if not spools:
        rows.append(("spool", "none"))
    lp = ledger_path(data_dir)
    if lp.exists():
        try:
            with sqlite3.connect(f"file:{lp}?mode=ro", uri=True, timeout=5) as db:
                n = db.execute("SELECT max(idx) FROM events").fetchone()[0]
            events = 0 if n is None else int(n) + 1
        except sqlite3.Error as exc:
            events = -1
            rows.append(("ledger", f"{lp}: unreadable ({exc})"))
        if events >= 0:
            rows.append(("ledger", f"{events} events, {lp.stat().st_size / 2**20:.1f} MiB"))
    else:
        rows.append(("ledger", "none yet"))
    cps = checkpoint_dir(data_dir)
    notes = sorted(cps.glob("*.note"), key=lambda p: int(p.name.split(".")[0])) if cps.is_dir() else []
    rows.append(("last checkpoint", f"size {notes[-1].name.split('.')[0]}, {_when(notes[-1].stat().st_mtime)}"
                 if notes else "none"))
    anchors = sorted(cps.glob("*.anchor.json"), key=lambda p: int(p.name.split(".")[0])) if cps.is_dir() else []
    rows.append(("last anchored", f"size {anchors[-1].name.split('.')[0]}, {_when(anchors[-1].stat().st_mtime)}"
                 if anchors else "never"))
    return rows


def table(rows: list[ProcessHealth]) -> str:
    w = max([len(r.name) for r in rows] + [7])
    uw = max([len(r.url) for r in rows] + [3])
    out = [f"{'PROCESS':<{w}}  {'STATUS':<11}  {'URL':<{uw}}  PROBLEMS"]
    for r in rows:
        out.append(f"{r.name:<{w}}  {r.status:<11}  {r.url:<{uw}}  {'; '.join(r.problems) or '-'}")
    return "\n".join(out)


def exit_code(rows: list[ProcessHealth], explicit: bool) -> int:
    """1 when a process says it is down, or (for URLs named on the command line) does not answer."""
    bad = {"down"} | ({"not running"} if explicit else set())
    return 1 if any(r.status in bad for r in rows) else 0


def as_json(rows: list[ProcessHealth], data: list[tuple[str, str]] | None) -> dict[str, Any]:
    return {"processes": [r.__dict__ for r in rows], "data_dir": dict(data) if data else None}

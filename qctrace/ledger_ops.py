"""Ledger operations behind the CLI: init, checkpoint, anchor, verify, trace, recall.

Where things live under the data directory::

    ledger.sqlite          events, Merkle nodes, trace indexes, checkpoints, anchor receipts
    checkpoints/           every signed checkpoint (<size>.note) and anchor receipt, outside the database
    keys/                  the Ed25519 signing key (0600) and the public verifier keys
    chain/                 the in-process eth-tester chain (when no rpc_url is configured)
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ledger import Ledger
from ledger.anchor import AnchorReceipt, Chain, open_chain
from ledger.audit import AuditReport, Progress, verify_ledger
from ledger.keys import SIGNER_FILE, init_keys, load_signer, load_verifiers
from ledger.note import Verifier
from ledger.publish import anchor_checkpoint, make_checkpoint
from ledger.trace import Trace, describe, trace
from qctrace.config import Config
from qctrace.errors import LedgerError

LEDGER_FILE = "ledger.sqlite"
READINGS_DIR = "readings"


def ledger_path(data_dir: Path) -> Path:
    return data_dir / LEDGER_FILE


def keys_dir(data_dir: Path) -> Path:
    return data_dir / "keys"


def checkpoint_dir(data_dir: Path) -> Path:
    return data_dir / "checkpoints"


def chain_dir(data_dir: Path) -> Path:
    return data_dir / "chain"


def init(cfg: Config) -> str:
    """Create the signing key (first run only); returns the public verifier key to give auditors."""
    return init_keys(keys_dir(cfg.data_dir), cfg.ledger.key_name)


def ensure_keys(cfg: Config) -> None:
    """The demo's first run creates the key `qctrace init` would; an existing key is never replaced."""
    if not (keys_dir(cfg.data_dir) / SIGNER_FILE).exists():
        init(cfg)


def open_anchor_chain(cfg: Config) -> Chain:
    a = cfg.ledger.anchor
    key = os.environ.get(a.private_key_env) if a.rpc_url else None
    return open_chain(a.rpc_url or None, chain_dir(cfg.data_dir), key, timeout=a.timeout_s)


class Checkpointer:
    """Signs a checkpoint whenever ``every`` events were appended since the last one."""

    def __init__(self, cfg: Config, led: Ledger) -> None:
        self.every = cfg.ledger.checkpoint_every
        self.led = led
        self.dir = checkpoint_dir(cfg.data_dir)
        self.signer = load_signer(keys_dir(cfg.data_dir))
        cps = led.checkpoints()
        self.last = cps[-1][0] if cps else 0

    def maybe(self) -> None:
        if self.every and len(self.led) - self.last >= self.every:
            self.now()

    def now(self) -> int:
        size, _ = make_checkpoint(self.led, self.signer, self.dir)
        self.last = size
        return size


def checkpoint(cfg: Config) -> int:
    with Ledger(ledger_path(cfg.data_dir)) as led:
        return Checkpointer(cfg, led).now()


def anchor(cfg: Config) -> tuple[int, AnchorReceipt]:
    """Sign a checkpoint of the current ledger (if it has none yet) and anchor it on the chain."""
    with Ledger(ledger_path(cfg.data_dir)) as led:
        size = Checkpointer(cfg, led).now()
        with open_anchor_chain(cfg) as chain:
            return size, anchor_checkpoint(led, chain, checkpoint_dir(cfg.data_dir), size)


def verify(cfg: Config, trusted_keys: Sequence[str] = (), extra_checkpoints: Sequence[bytes] = (),
           anchors: bool = True, data: bool = True, progress: Progress | None = None) -> AuditReport:
    """Everything ``qctrace verify`` checks. ``trusted_keys`` (verifier strings) replace the keys in
    DATA_DIR/keys: an auditor brings the key they were given, not the one next to the data."""
    verifiers = [Verifier.parse(k) for k in trusted_keys] if trusted_keys else _local_verifiers(cfg)
    with Ledger(ledger_path(cfg.data_dir), readonly=True) as led:
        chain = open_anchor_chain(cfg) if anchors and (led.anchors() or _anchor_files(cfg)) else None
        try:
            report = verify_ledger(led, verifiers, checkpoint_dir=checkpoint_dir(cfg.data_dir),
                                   extra_checkpoints=extra_checkpoints, chain=chain,
                                   data_root=cfg.data_dir / READINGS_DIR if data else None, progress=progress)
        finally:
            if chain is not None:
                chain.close()
    if not anchors:
        report.skipped.append("anchors not checked (--no-anchors)")
    return report


def _anchor_files(cfg: Config) -> bool:
    d = checkpoint_dir(cfg.data_dir)
    return d.is_dir() and any(d.glob("*.anchor.json"))


def _local_verifiers(cfg: Config) -> list[Verifier]:
    try:
        return load_verifiers(keys_dir(cfg.data_dir))
    except LedgerError:
        return []


@dataclass
class LotReport:
    backward: Trace
    forward: Trace
    readings: list[dict]
    elapsed_ms: float

    def lines(self) -> list[str]:
        out = [f"lot {self.backward.lot}  (traced in {self.elapsed_ms:.1f} ms)"]
        for title, t in (("backward (where it came from)", self.backward), ("forward (where it went)", self.forward)):
            out.append(f"{title}:")
            scope = t.scope()
            if not scope:
                out.append("  nothing recorded")
            for group, names in scope.items():
                out.append(f"  {group:<10} {', '.join(names)}")
        events = {e.idx: e for e in (*self.backward.events, *self.forward.events)}
        out.append(f"events ({len(events)}):")
        for e in sorted(events.values(), key=lambda e: e.idx):
            d = describe(e)
            out.append(f"  #{d['idx']:<6} {d['time']}  {d['kind']:<16} {d['where']:<16} {d['details']}")
        if self.readings:
            out.append("readings:")
            for r in self.readings:
                out.append(f"  {r['sensor_key']:<40} {r['readings']:>7} readings {r['flagged']:>5} flagged"
                           f"  min {r['min_value']:.3f}  mean {r['mean_value']:.3f}  max {r['max_value']:.3f}")
        return out


def trace_lot(cfg: Config, lot: str, backward: bool = True, forward: bool = True) -> LotReport:
    from ingest.query import lot_summary

    with Ledger(ledger_path(cfg.data_dir), readonly=True) as led:
        t0 = time.perf_counter()
        b = trace(led, lot, forward=False) if backward else Trace(lot, False)
        f = trace(led, lot, forward=True) if forward else Trace(lot, True)
        ms = (time.perf_counter() - t0) * 1e3
    readings_dir = cfg.data_dir / READINGS_DIR
    readings = lot_summary(readings_dir, lot).to_pylist() if readings_dir.is_dir() else []
    return LotReport(b, f, readings, ms)


Say = Callable[[str], None]

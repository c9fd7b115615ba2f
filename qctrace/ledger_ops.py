"""Ledger operations behind the CLI: init, checkpoint, anchor, verify, trace, recall.

Where things live under the data directory::

    ledger.sqlite          events, Merkle nodes, trace indexes, checkpoints, anchor receipts
    ledger.sqlite-anchor.lock  held by the one process that anchors for this ledger (ledger.anchoring)
    checkpoints/           every signed checkpoint (<size>.note) and anchor receipt, outside the database
    keys/                  the Ed25519 signing key (0600) and the public verifier keys
    chain/                 the in-process eth-tester chain (when no rpc_url is configured)

Anchoring jobs (one per checkpoint: pending, sent, mined, final) live in the ledger's SQLite file,
table ``anchor_jobs``; see ``ledger.anchoring``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ledger import Ledger
from ledger.audit import AuditReport, Progress, verify_ledger
from ledger.bundle import BundleSummary
from ledger.keys import SIGNER_FILE, init_keys, load_signer, load_verifiers
from ledger.note import Verifier
from ledger.publish import anchor_files, make_checkpoint
from ledger.trace import Trace, describe, trace
from qctrace.config import Config
from qctrace.durable import atomic_write
from qctrace.errors import LedgerError

if TYPE_CHECKING:  # web3 costs ~1 s to import; only anchoring needs it
    from ledger.anchor import AnchorReceipt, Chain
    from ledger.anchor_jobs import AnchorJob
    from ledger.anchoring import Anchorer, AnchorPolicy

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
    from ledger.anchor import open_chain

    return open_chain(a.rpc_url or None, chain_dir(cfg.data_dir), key, timeout=a.timeout_s)


def anchor_policy(cfg: Config) -> AnchorPolicy:
    from ledger.anchoring import AnchorPolicy

    a = cfg.ledger.anchor
    return AnchorPolicy(confirmations=a.confirmations, expected_chain_id=a.chain_id, stuck_after_s=a.stuck_after_s,
                        poll_s=a.poll_s, retry_max_s=a.retry_max_s)


def start_anchorer(cfg: Config) -> Anchorer | None:
    """The background anchorer for ingest (None when ``[ledger.anchor] auto = false``), started.

    Hand it to the :class:`Checkpointer`; ``stop()`` it at shutdown. It connects to the chain in its
    own thread: starting it costs ingest nothing, even with the node down.
    """
    if not cfg.ledger.anchor.auto:
        return None
    from ledger.anchoring import Anchorer

    return Anchorer(ledger_path(cfg.data_dir), checkpoint_dir(cfg.data_dir), lambda: open_anchor_chain(cfg),
                    anchor_policy(cfg)).start()


class Checkpointer:
    """Signs a checkpoint whenever ``every`` events were appended since the last one, and hands each
    one to the ``anchorer`` (if any), which anchors it in the background: never on ingest's time."""

    def __init__(self, cfg: Config, led: Ledger, anchorer: Anchorer | None = None) -> None:
        self.every = cfg.ledger.checkpoint_every
        self.led = led
        self.dir = checkpoint_dir(cfg.data_dir)
        self.signer = load_signer(keys_dir(cfg.data_dir))
        self.anchorer = anchorer
        cps = led.checkpoints()
        self.last = cps[-1][0] if cps else 0

    def maybe(self) -> None:
        if self.every and len(self.led) - self.last >= self.every:
            self.now()

    def now(self) -> int:
        size, _ = make_checkpoint(self.led, self.signer, self.dir)
        self.last = size
        if self.anchorer is not None:
            self.anchorer.submit(size)
        return size


def checkpoint(cfg: Config) -> int:
    with Ledger(ledger_path(cfg.data_dir)) as led:
        return Checkpointer(cfg, led).now()


def anchor(cfg: Config, progress: Callable[[str], None] | None = None) -> tuple[int, AnchorReceipt]:
    """Sign a checkpoint of the current ledger (if it has none yet) and wait until its anchor is final.

    The same state machine as ingest's background anchorer: if another process holds the anchor
    lock, this waits for it to finish the job; a checkpoint already anchored is not anchored again.
    ``progress`` hears each change (sent, mined, final).
    """
    from ledger.anchoring import anchor_until_final

    with Ledger(ledger_path(cfg.data_dir)) as led:
        size = Checkpointer(cfg, led).now()
    receipt = anchor_until_final(ledger_path(cfg.data_dir), checkpoint_dir(cfg.data_dir),
                                 lambda: open_anchor_chain(cfg), anchor_policy(cfg), size,
                                 wait_s=cfg.ledger.anchor.wait_s, progress=progress)
    return size, receipt


def anchoring_status(cfg: Config) -> list[AnchorJob]:
    """Every checkpoint's anchoring job (read-only): ``job.status`` is pending, sent, mined, final or
    ``error: ...``; ``job.describe()`` says it in a line."""
    from ledger.anchor_jobs import read_jobs

    return read_jobs(ledger_path(cfg.data_dir))


def verify(cfg: Config, trusted_keys: Sequence[str] = (), extra_checkpoints: Sequence[bytes] = (),
           anchors: bool = True, data: bool = True, progress: Progress | None = None) -> AuditReport:
    """Everything ``qctrace verify`` checks. ``trusted_keys`` (verifier strings) replace the keys in
    DATA_DIR/keys: an auditor brings the key they were given, not the one next to the data."""
    verifiers = [Verifier.parse(k) for k in trusted_keys] if trusted_keys else _local_verifiers(cfg)
    with Ledger(ledger_path(cfg.data_dir), readonly=True) as led:
        chain = open_anchor_chain(cfg) if anchors and (led.anchors() or anchor_files(checkpoint_dir(cfg.data_dir))) \
            else None
        try:
            report = verify_ledger(led, verifiers, checkpoint_dir=checkpoint_dir(cfg.data_dir),
                                   extra_checkpoints=extra_checkpoints, chain=chain,
                                   data_root=cfg.data_dir / READINGS_DIR if data else None, progress=progress,
                                   no_chain_reason="--no-anchors",
                                   no_key_hint=f"{keys_dir(cfg.data_dir)} holds none. Pass --trusted-key with the"
                                   " verifier key the ledger's owner gave you (`qctrace keys public` prints it)")
        finally:
            if chain is not None:
                chain.close()
    return report


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
    proof: str = ""
    mkt: dict[str, float] | None = None

    def lines(self) -> list[str]:
        out = [f"lot {self.backward.lot}  (traced in {self.elapsed_ms:.1f} ms)"]
        if self.proof:
            out.append(f"proof: {self.proof}")
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
                mkt = (self.mkt or {}).get(r["sensor_key"])
                out.append(f"  {r['sensor_key']:<40} {r['readings']:>7} readings {r['flagged']:>5} flagged"
                           f"  min {r['min_value']:.3f}  mean {r['mean_value']:.3f}  max {r['max_value']:.3f}"
                           + (f"  MKT {mkt:.2f}" if mkt is not None else ""))
        return out


def trace_lot(cfg: Config, lot: str, backward: bool = True, forward: bool = True) -> LotReport:
    from ingest.query import lot_mkt, lot_summary

    with Ledger(ledger_path(cfg.data_dir), readonly=True) as led:
        t0 = time.perf_counter()
        b = trace(led, lot, forward=False) if backward else Trace(lot, False)
        f = trace(led, lot, forward=True) if forward else Trace(lot, True)
        ms = (time.perf_counter() - t0) * 1e3
        proof = prove_events(led, [*b.events, *f.events], _local_verifiers(cfg))
    readings_dir = cfg.data_dir / READINGS_DIR
    readings = lot_summary(readings_dir, lot).to_pylist() if readings_dir.is_dir() else []
    mkt = lot_mkt(readings_dir, lot, cfg.detect.delta_h) if readings else {}
    return LotReport(b, f, readings, ms, proof, mkt)


def prove_events(led: Ledger, events: Sequence, verifiers: Sequence[Verifier]) -> str:
    """Check each event's RFC 9162 inclusion proof against the latest signed checkpoint; say what holds.

    Raises (``BadSignature``, ``RootMismatch``) when a proof or the checkpoint fails: a trace is not
    shown as proven when it is not.
    """
    from ledger.checkpoint import open_checkpoint
    from ledger.merkle import verify_inclusion

    cps = led.checkpoints()
    if not cps:
        return "no signed checkpoint yet: these events are not proven (`qctrace checkpoint`)"
    if not verifiers:
        return "no trusted key to check the checkpoint with (`qctrace init`, or verify --trusted-key)"
    cp = open_checkpoint(cps[-1][1], verifiers)
    if led.root(cp.size) != cp.root:
        from qctrace.errors import RootMismatch

        raise RootMismatch(f"signed checkpoint at size {cp.size} does not match the ledger's root: run"
                           " `qctrace verify`", expected=cp.root.hex(), computed=led.root(cp.size).hex())
    unique = {e.idx: e for e in events}
    inside = [e for e in unique.values() if e.idx < cp.size]
    for e in inside:
        verify_inclusion(e.leaf, e.idx, cp.size, led.inclusion_proof(e.idx, cp.size), cp.root)
    newer = len(unique) - len(inside)
    return (f"{len(inside)} events included in the signed checkpoint at size {cp.size} (root {cp.root.hex()[:16]}…)"
            + (f"; {newer} newer events await the next checkpoint" if newer else ""))



# ---------------------------------------------------------------- recall and exports

def _scope_events(led: Ledger, lot: str | None) -> tuple[list[dict], set[str] | None]:
    """All events (lot None), or a lot's backward and forward genealogy: its events and the lots in it."""
    import json

    if lot is None:
        return [json.loads(e.body) for e in led.events()], None
    b, f = trace(led, lot, forward=False), trace(led, lot, forward=True)
    lots = {lot, *b.nodes.get("lots", []), *f.nodes.get("lots", [])}
    idx = {e.idx for e in (*b.events, *f.events)}
    for x in lots:
        idx |= {e.idx for e in led.events(lot=x)}
    return [json.loads(e.body) for e in led.events_at(idx)], lots


def export_epcis(cfg: Config, out: Path, lot: str | None = None) -> int:
    """An EPCIS 2.0 JSON-LD document (validated against the GS1 schema) of the ledger or of a lot's
    genealogy; returns the number of events."""
    import json

    from ledger.epcis import epcis_document, validate_document

    with Ledger(ledger_path(cfg.data_dir), readonly=True) as led:
        evs, _ = _scope_events(led, lot)
    doc = epcis_document(evs)
    validate_document(doc)
    atomic_write(out, json.dumps(doc, indent=1, ensure_ascii=False).encode("utf-8"))
    return len(evs)


def export_fsma(cfg: Config, out: Path, lot: str | None = None, start: str | None = None,
                end: str | None = None) -> int:
    """The FSMA 204 sortable spreadsheet (CSV, or XLSX when ``out`` ends in .xlsx); returns rows."""
    from ledger.fsma import fsma_rows, select, write_csv, write_xlsx

    with Ledger(ledger_path(cfg.data_dir), readonly=True) as led:
        evs, lots = _scope_events(led, lot)
    rows = select(fsma_rows(evs), lots=lots, start=start, end=end)
    out.parent.mkdir(parents=True, exist_ok=True)
    (write_xlsx if out.suffix.lower() == ".xlsx" else write_csv)(rows, out)
    return len(rows)


@dataclass
class RecallReport:
    lot: str
    scope: dict[str, list[str]]
    event_idx: int
    files: list[Path]

    def lines(self) -> list[str]:
        out = [f"recall of lot {self.lot} recorded as ledger event #{self.event_idx}", "scope:"]
        out += [f"  {k:<10} {len(v):>4}  {', '.join(v)}" for k, v in self.scope.items()]
        out += ["exported:", *(f"  {p}" for p in self.files)]
        return out


def recall(cfg: Config, lot: str, by: str, reason: str, out_dir: Path | None = None) -> RecallReport:
    """Compute everything downstream of ``lot``, record the recall (signed into the next checkpoint),
    and export the scope: scope.json and scope.csv, the FSMA 204 spreadsheet, the EPCIS document."""
    import csv
    import json

    from ledger import events as ev_mod
    from ledger.trace import lot_classes, recall_scope

    out_dir = out_dir or cfg.data_dir / "recalls" / lot
    with Ledger(ledger_path(cfg.data_dir)) as led:
        scope = recall_scope(led, lot)
        stored = led.append(ev_mod.lot_recalled(lot_classes(led, scope["lots"]), by, reason, time.time_ns(),
                                                scope))
        Checkpointer(cfg, led).now()
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(out_dir / "scope.json", json.dumps({"lot": lot, "by": by, "reason": reason,
                                                      "ledger_event": stored.idx, "scope": scope},
                                                     indent=1, ensure_ascii=False).encode("utf-8"))
    with open(out_dir / "scope.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["kind", "name"])
        for k, names in scope.items():
            for name in names:
                w.writerow([k.rstrip("s"), name])
    files = [out_dir / "scope.json", out_dir / "scope.csv", out_dir / "fsma204.csv", out_dir / "fsma204.xlsx",
             out_dir / "epcis.json"]
    export_fsma(cfg, files[2], lot)
    export_fsma(cfg, files[3], lot)
    export_epcis(cfg, files[4], lot)
    return RecallReport(lot, scope, stored.idx, files)


def hold(cfg: Config, lot: str, by: str, reason: str) -> int:
    """Put ``lot`` on hold (a ``lot_held`` event naming who and why); returns the event's index.

    A hold stops a lot from shipping while it is investigated; unlike a recall it computes no scope
    and exports nothing, so it is cheap enough to use on suspicion.
    """
    from ledger import events as ev_mod
    from ledger.trace import lot_classes

    if not reason.strip():
        raise LedgerError(f"hold of lot {lot}: say why (the reason is recorded in the ledger)")
    with Ledger(ledger_path(cfg.data_dir)) as led:
        return led.append(ev_mod.lot_held(lot_classes(led, [lot]), by, reason, time.time_ns())).idx


def export_bundle(cfg: Config, out: Path, lot: str | None = None) -> BundleSummary:
    """The audit bundle (zip): events, checkpoints, proofs, public keys and a stand-alone verifier.

    (Restored: `qctrace export bundle` calls it; commit 9246163 dropped it by accident.)
    """
    from ledger.bundle import write_bundle

    keys = [str(v) for v in load_verifiers(keys_dir(cfg.data_dir))]
    with Ledger(ledger_path(cfg.data_dir), readonly=True) as led:
        return write_bundle(led, out, keys, lot=lot, checkpoint_dir=checkpoint_dir(cfg.data_dir))

"""Signed checkpoints and their anchors, kept twice: in the ledger and as files beside it.

A checkpoint kept only inside the SQLite file would roll back with it. Each one is therefore also
written to ``checkpoint_dir`` (one ``<size>.note`` per checkpoint, written atomically and never
rewritten), where a copy of the data directory, a backup or an auditor keeps it; and its anchor
receipt goes to ``<size>.anchor.json`` beside it. Verification reads both places, so a ledger that
is shorter than any checkpoint ever signed is caught.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from ledger.checkpoint import Checkpoint, sign_checkpoint
from ledger.note import Signer
from ledger.store import Ledger
from qctrace.durable import atomic_write
from qctrace.errors import LedgerError

if TYPE_CHECKING:  # web3 costs ~1 s to import; only anchoring needs it
    from ledger.anchor import AnchorReceipt, Chain

log = logging.getLogger(__name__)

ANCHOR_PREFIX = b"qctrace-anchor/1\n"


def anchor_payload(checkpoint_text: str) -> bytes:
    """What goes on chain for a checkpoint: a tag and the checkpoint's body (origin, size, root)."""
    return ANCHOR_PREFIX + checkpoint_text.encode("utf-8")


def checkpoint_file(checkpoint_dir: Path, size: int) -> Path:
    return checkpoint_dir / f"{size:012d}.note"


def make_checkpoint(led: Ledger, signer: Signer, checkpoint_dir: Path) -> tuple[int, bytes]:
    """Sign the ledger's current tree head; returns (size, signed note). Idempotent per size."""
    size = len(led)
    existing = dict(led.checkpoints())
    if size in existing:
        return size, existing[size]
    cp = Checkpoint(origin=signer.name, size=size, root=led.root(size))
    note = sign_checkpoint(cp, signer)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(checkpoint_file(checkpoint_dir, size), note)
    led.add_checkpoint(size, note)
    log.info("ledger.checkpoint size=%d root=%s", size, cp.root.hex())
    return size, note


def checkpoint_payload(led: Ledger, size: int) -> bytes:
    """The bytes that go on chain for the signed checkpoint of ``size`` (its body, without signatures)."""
    note = dict(led.checkpoints()).get(size)
    if note is None:
        raise LedgerError(f"{led.path}: no checkpoint of size {size}; `qctrace checkpoint` signs one")
    return anchor_payload(note.decode("utf-8").split("\n\n", 1)[0] + "\n")


def record_anchor(led: Ledger, checkpoint_dir: Path, size: int, receipt: AnchorReceipt) -> None:
    """Keep a final anchor receipt in the ledger and as ``<size>.anchor.json`` beside the checkpoint.

    Idempotent: ``ledger.anchoring`` may record the same receipt again after a crash between the two.
    """
    led.add_anchor(size, receipt.to_dict())
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(checkpoint_dir / f"{size:012d}.anchor.json", json.dumps(receipt.to_dict(), indent=1).encode())
    log.info("ledger.anchor size=%d tx=%s block=%d", size, receipt.tx_hash, receipt.block_number)


def anchor_checkpoint(led: Ledger, chain: Chain, checkpoint_dir: Path, size: int | None = None, *,
                      confirmations: int | None = None, wait_s: float = 900.0) -> AnchorReceipt:
    """Anchor the checkpoint of ``size`` (default: the latest) on ``chain`` and wait until it is final.

    Goes through ``ledger.anchoring`` like the background anchorer, so a checkpoint already anchored
    (or in flight, from this or another process) is never anchored a second time.
    """
    from ledger.anchoring import AnchorPolicy, anchor_until_final

    cps = dict(led.checkpoints())
    size = max(cps, default=None) if size is None else size
    if size not in cps:
        what = "no signed checkpoint yet" if size is None else f"no checkpoint of size {size}"
        raise LedgerError(f"{led.path}: {what}; `qctrace checkpoint` signs one")
    return anchor_until_final(led.path, checkpoint_dir, lambda: chain, AnchorPolicy(confirmations=confirmations),
                              size, wait_s=wait_s, owns_chain=False)


def checkpoint_files(checkpoint_dir: Path) -> list[tuple[Path, bytes]]:
    if not checkpoint_dir.is_dir():
        return []
    return [(p, p.read_bytes()) for p in sorted(checkpoint_dir.glob("*.note"))]


def anchor_files(checkpoint_dir: Path) -> list[tuple[int, dict]]:
    if not checkpoint_dir.is_dir():
        return []
    files = sorted(checkpoint_dir.glob("*.anchor.json"))
    return [(int(p.name.split(".")[0]), json.loads(p.read_text())) for p in files]


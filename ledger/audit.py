"""Full verification of a ledger, as an auditor runs it: every check, in the order that explains best.

1. The chain, the leaf hashes, the derived index columns and the stored Merkle nodes (one scan of
   the stored bytes; see ``Ledger.scan``).
2. Every signed checkpoint, from the ledger and from the checkpoint files beside it (and any the
   auditor brings): the signature with a trusted key (all signatures before anything else), the
   size no larger than the ledger (else it was rolled back), and the root equal to the tree's root
   at that size (else the ledger changed, or, when another trusted checkpoint of that size or
   larger matches the ledger, the keys signed two histories: a fork). Errors name the checkpoint.
3. Every anchor receipt: the transaction is on the chain and carries that checkpoint.
4. Every ``data_committed`` event: the Parquet file still hashes to what the ledger recorded.

Each step raises the first failure with what is wrong and where; ``progress`` is told the step.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ledger.checkpoint import Checkpoint, open_checkpoint
from ledger.events import DATA_COMMITTED, NS
from ledger.note import Verifier
from ledger.publish import anchor_files, anchor_payload, checkpoint_files
from ledger.store import Ledger
from qctrace.durable import sha256_file
from qctrace.errors import (
    AnchorMismatch,
    BadSignature,
    DataFileChanged,
    LedgerIntegrityError,
    RolledBack,
    RootMismatch,
)

if TYPE_CHECKING:  # web3 costs ~1 s to import; only anchoring needs it
    from ledger.anchor import Chain

Progress = Callable[[str, int, int], None]


@dataclass
class AuditReport:
    events: int
    head: str
    root: str
    checkpoints: int = 0
    latest_checkpoint: int | None = None
    anchors: int = 0
    data_files: int = 0
    skipped: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"chain      OK  {self.events} events, head {self.head}",
               f"merkle     OK  root {self.root}"]
        out.append(f"checkpoints OK {self.checkpoints} signed, latest at size {self.latest_checkpoint}"
                   if self.checkpoints else "checkpoints --  none signed yet (`qctrace checkpoint`)")
        out.append(f"anchors    OK  {self.anchors} on chain" if self.anchors else "anchors    --  none")
        out.append(f"data files OK  {self.data_files} Parquet files match their recorded SHA-256")
        out += [f"skipped        {s}" for s in self.skipped]
        return out


def verify_ledger(led: Ledger, verifiers: Sequence[Verifier], *, checkpoint_dir: Path | None = None,
                  extra_checkpoints: Sequence[bytes] = (), chain: Chain | None = None,
                  data_root: Path | None = None, progress: Progress | None = None,
                  check_index: bool = True, no_chain_reason: str = "no chain given",
                  no_key_hint: str = "pass the trusted verifier keys") -> AuditReport:
    def tell(step: str) -> Callable[[int, int], None]:
        return lambda done, total: progress(step, done, total) if progress else None

    scan = led.scan(tell("events"), check_index=check_index)
    report = AuditReport(events=scan.events, head=scan.head, root=scan.root.hex())

    # 2. checkpoints: signature, not rolled back, root matches
    notes: list[tuple[str, bytes]] = [(f"ledger checkpoint at size {s}", n) for s, n in led.checkpoints()]
    if checkpoint_dir is not None:
        notes += [(str(p), n) for p, n in checkpoint_files(checkpoint_dir)]
    notes += [(f"checkpoint #{i + 1} given", n) for i, n in enumerate(extra_checkpoints)]
    if notes and not verifiers:
        raise BadSignature(f"the ledger has {len(notes)} signed checkpoints but no key to check them with:"
                           f" {no_key_hint}")
    # Every signature first: a forged checkpoint is named as forged, not as a rollback or a fork.
    opened = [(where, _open(where, note, verifiers)) for where, note in notes]
    verified: dict[int, Checkpoint] = {}
    for k, (where, cp) in enumerate(opened):
        tell("checkpoints")(k, len(opened))
        if cp.size > scan.events:
            raise RolledBack(f"{where}: signed for {cp.size} events, but the ledger holds only {scan.events}:"
                             f" events #{scan.events}..#{cp.size - 1} were removed (rolled back or truncated)",
                             index=scan.events, expected=str(cp.size), computed=str(scan.events))
        root = led.root(cp.size)
        if root != cp.root:
            raise RootMismatch(_root_mismatch(where, cp, opened, led, scan.events), index=None,
                               expected=cp.root.hex(), computed=root.hex())
        verified[cp.size] = cp
    report.checkpoints = len(verified)
    report.latest_checkpoint = max(verified) if verified else None

    # 3. anchors
    receipts = dict(led.anchors())
    if checkpoint_dir is not None:
        receipts.update(dict(anchor_files(checkpoint_dir)))
    if receipts and chain is None:
        report.skipped.append(f"{len(receipts)} anchors not checked ({no_chain_reason})")
    elif receipts:
        for k, (size, data) in enumerate(sorted(receipts.items())):
            tell("anchors")(k, len(receipts))
            cp = verified.get(size)
            if cp is None:
                raise AnchorMismatch(f"anchor of size {size}: no signed checkpoint of that size to match it",
                                     index=None)
            from ledger.anchor import AnchorReceipt

            chain.verify(AnchorReceipt.from_dict(data), anchor_payload(cp.to_text()))
        report.anchors = len(receipts)

    # 4. data files
    if data_root is None:
        report.skipped.append("data files not checked (no dataset given)")
    else:
        committed = list(led.events(kind=DATA_COMMITTED))
        # A file a later compacted file replaces may be gone: that file holds its rows (and its
        # own event its hash). Anything else missing is a finding.
        replaced = {p for ev in committed for p in json.loads(ev.body)[f"{NS}:data"].get("replaces", ())}
        for k, ev in enumerate(committed):
            tell("data files")(k, len(committed))
            d = json.loads(ev.body)[f"{NS}:data"]
            path = data_root / d["path"]
            if not path.is_file() and d["path"] in replaced:
                continue
            if not path.is_file():
                raise DataFileChanged(f"event #{ev.idx}: data file {path} is missing (it held {d['rows']} readings)",
                                      index=ev.idx, expected=d["sha256"], computed="")
            h = sha256_file(path)
            if h != d["sha256"]:
                raise DataFileChanged(f"event #{ev.idx}: data file {path} changed after it was committed",
                                      index=ev.idx, expected=d["sha256"], computed=h)
        report.data_files = len(committed)
    return report


def _open(where: str, note: bytes, verifiers: Sequence[Verifier]) -> Checkpoint:
    """``open_checkpoint``, its error (same type) saying which checkpoint it is about."""
    try:
        return open_checkpoint(note, verifiers)
    except LedgerIntegrityError as e:  # BadSignature, or a signed body that is not a checkpoint
        raise type(e)(f"{where}: {e}", index=e.index, expected=e.expected, computed=e.computed) from e


def _root_mismatch(where: str, cp: Checkpoint, opened: Sequence[tuple[str, Checkpoint]], led: Ledger,
                   events: int) -> str:
    """Why ``cp`` disagrees with the ledger, as far as the other signed checkpoints tell.

    A trusted checkpoint at the same or a larger size that the ledger matches commits to other
    first ``cp.size`` events than ``cp`` does: the keys signed two histories (a fork). One at a
    smaller size that the ledger matches narrows down where the histories part."""
    agree = [(w, o) for w, o in opened if o.size <= events and led.root(o.size) == o.root]
    head = f"{where}: the signed root for size {cp.size} is not the ledger's root at that size"
    later = [(w, o) for w, o in agree if o.size >= cp.size]
    if later:
        w, o = min(later, key=lambda wo: wo[1].size)
        return (f"{where}: fork: the signed root for size {cp.size} is not the ledger's root at that size, yet"
                f" {w} (size {o.size}), signed by a trusted key too, matches the ledger: trusted keys signed two"
                f" different histories of events #0..#{cp.size - 1}")
    earlier = [(w, o) for w, o in agree if o.size < cp.size]
    if earlier:
        w, o = max(earlier, key=lambda wo: wo[1].size)
        return (f"{head}; the ledger still matches {w} (size {o.size}): either events #{o.size}..#{cp.size - 1}"
                " were changed after it was signed, or it was signed over another history (a fork)")
    return (f"{head}: events #0..#{cp.size - 1} were changed since it was signed, or it was signed over another"
            " history (a fork)")

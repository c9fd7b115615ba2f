"""The audit bundle: one zip an auditor verifies offline, with Python and ``cryptography`` only.

An auditor should not have to install qctrace, reach our database or trust our code to check our
ledger. So the bundle carries the exact stored event bytes, every signed checkpoint, the Merkle
proofs that tie them together, the public keys, and its own small verifier
(:mod:`ledger.bundle_verifier`, copied in as ``verify_bundle.py``). Layout::

    manifest.json        format, kind, created, origin, sizes, and the SHA-256 of every other member
    README.txt           what the auditor runs and what each check proves, in plain words
    verify_bundle.py     the standalone verifier
    keys.txt             the verifier key strings (convenience only: trust comes from a key given out of band)
    events.jsonl         one JSON object a line: idx, chain hash hex, body (the stored canonical JSON as a
                         string), and in a lot bundle its RFC 9162 inclusion proof {size, path}
    checkpoints/<size:012d>.note   every signed checkpoint (ledger table and checkpoint files, one per size)
    consistency.json     RFC 9162 consistency proofs between consecutive checkpoints
    anchors.json         anchor receipts, as data: the verifier cannot reach a chain offline

A *full* bundle holds every event, so the verifier recomputes the chain and the Merkle root at every
checkpoint size. A *lot* bundle holds only the lot's backward and forward trace, each event with an
inclusion proof against the latest checkpoint. Trace events newer than that checkpoint cannot be
proven; rather than refuse (the operator may not be able to sign on demand) we leave them out and
name them in the summary and the manifest, so the verifier says which events are missing and why.

Before writing, every checkpoint is opened with the given keys and compared with the ledger, so a
bundle that would fail its own verifier is refused here with the reason, not shipped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

from ledger.checkpoint import Checkpoint, open_checkpoint
from ledger.note import Verifier
from ledger.publish import ANCHOR_PREFIX, anchor_files, checkpoint_files
from ledger.store import Ledger, StoredEvent
from ledger.trace import trace
from qctrace.errors import LedgerError, LedgerIntegrityError

__all__ = ["FORMAT", "VERIFIER_SOURCE", "BundleSummary", "write_bundle"]

log = logging.getLogger(__name__)

FORMAT = "qctrace-audit-bundle/1"
VERIFIER_SOURCE = Path(__file__).with_name("bundle_verifier.py")
"""The verifier shipped in every bundle as ``verify_bundle.py``."""


@dataclass(frozen=True)
class BundleSummary:
    """What went into a bundle; ``unproven`` lists trace events left out as newer than the latest checkpoint."""

    path: Path
    kind: str  # "full" or "lot"
    lot: str | None
    origin: str
    ledger_size: int
    events: int
    checkpoints: list[int]
    proof_size: int
    anchors: int
    unproven: list[int] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)  # member name -> SHA-256 hex


def write_bundle(led: Ledger, out: Path, verifier_keys: list[str], *, lot: str | None = None,
                 checkpoint_dir: Path | None = None) -> BundleSummary:
    """Write an audit bundle zip to ``out`` (atomically) and summarise it.

    ``verifier_keys`` are the public key strings that signed the checkpoints (e.g. from
    ``ledger.keys.load_verifiers``); they go into the bundle for convenience, and every checkpoint
    must open with one of them. Raises LedgerError when there is no signed checkpoint to prove
    anything against, or when a checkpoint does not match this ledger.
    """
    if not verifier_keys:
        raise LedgerError("write_bundle needs the verifier keys that signed the checkpoints"
                          " (ledger.keys.load_verifiers(key_dir))")
    verifiers = [Verifier.parse(k) for k in verifier_keys]
    size_now = len(led)
    cps = _checkpoints(led, verifiers, checkpoint_dir, size_now)
    if not cps:
        raise LedgerError(f"{led.path}: no signed checkpoint, so a bundle could prove nothing;"
                          " run `qctrace checkpoint` first")
    origins = {cp.origin for cp, _ in cps.values()}
    if len(origins) != 1:
        raise LedgerError(f"{led.path}: checkpoints name several logs {sorted(origins)}; one bundle covers one log")
    latest = max(cps)

    unproven: list[int] = []
    if lot is None:
        events = list(led.events())
        lines = [_event_line(ev) for ev in events]
    else:
        idx = {ev.idx for forward in (False, True) for ev in trace(led, lot, forward).events}
        unproven = sorted(i for i in idx if i >= latest)
        events = led.events_at(i for i in idx if i < latest)
        lines = [_event_line(ev, {"size": latest, "path": [h.hex() for h in led.inclusion_proof(ev.idx, latest)]})
                 for ev in events]
        if unproven:
            log.warning("bundle.unproven lot=%s events=%s checkpoint=%d", lot, unproven, latest)

    sizes = sorted(cps)
    consistency = [{"old": a, "new": b, "proof": [h.hex() for h in led.consistency_proof(a, b)]}
                   for a, b in pairwise(sizes) if a > 0]
    anchors = _anchors(led, checkpoint_dir, cps)

    members: dict[str, bytes] = {
        "verify_bundle.py": VERIFIER_SOURCE.read_bytes(),
        "keys.txt": "".join(f"{v}\n" for v in verifiers).encode(),
        "events.jsonl": "".join(line + "\n" for line in lines).encode("ascii"),
        "consistency.json": _json(consistency),
        "anchors.json": _json([{"size": s, "receipt": r} for s, r in sorted(anchors.items())]),
        **{f"checkpoints/{s:012d}.note": note for s, (_, note) in sorted(cps.items())},
    }
    kind = "full" if lot is None else "lot"
    origin = origins.pop()
    members["README.txt"] = _readme(kind, lot, origin, latest, len(events), unproven).encode()
    files = {name: hashlib.sha256(data).hexdigest() for name, data in sorted(members.items())}
    manifest = {"format": FORMAT, "kind": kind, "lot": lot, "created": datetime.now(UTC).isoformat(),
                "origin": origin, "ledger_size": size_now, "events": len(events), "checkpoints": sizes,
                "proof_size": latest, "unproven": unproven, "files": files}
    members["manifest.json"] = _json(manifest)
    _write_zip(out, members)
    log.info("bundle.written path=%s kind=%s events=%d checkpoints=%d", out, kind, len(events), len(sizes))
    return BundleSummary(path=out, kind=kind, lot=lot, origin=origin, ledger_size=size_now, events=len(events),
                         checkpoints=sizes, proof_size=latest, anchors=len(anchors), unproven=unproven,
                         files=files)


def _event_line(ev: StoredEvent, inclusion: dict[str, Any] | None = None) -> str:
    """One events.jsonl line; the body travels as a JSON string whose UTF-8 bytes are the stored bytes."""
    rec: dict[str, Any] = {"idx": ev.idx, "hash": ev.hash.hex(), "body": ev.body.decode("utf-8")}
    if inclusion is not None:
        rec["inclusion"] = inclusion
    line = json.dumps(rec, ensure_ascii=True, separators=(",", ":"))
    if json.loads(line)["body"].encode("utf-8") != ev.body:  # what the verifier will hash must be what we stored
        raise LedgerIntegrityError(f"event #{ev.idx}: its stored body does not survive the bundle's JSON encoding",
                                   index=ev.idx)
    return line


def _checkpoints(led: Ledger, verifiers: list[Verifier], checkpoint_dir: Path | None,
                 size_now: int) -> dict[int, tuple[Checkpoint, bytes]]:
    """Every signed checkpoint, one per size, each opened with ``verifiers`` and matched to the ledger."""
    notes = [(f"ledger checkpoint {s}", n) for s, n in led.checkpoints()]
    if checkpoint_dir is not None:
        notes += [(str(p), n) for p, n in checkpoint_files(checkpoint_dir)]
    out: dict[int, tuple[Checkpoint, bytes]] = {}
    for where, note in notes:
        try:
            cp = open_checkpoint(note, verifiers)
        except LedgerIntegrityError as e:
            raise LedgerError(f"{where}: {e}; pass every key that signed a checkpoint (ledger.keys.load_verifiers)"
                              " or run `qctrace verify`") from None
        if cp.size > size_now:
            raise LedgerError(f"{where}: signed for {cp.size} events but the ledger holds {size_now}: it was rolled"
                              " back; run `qctrace verify` before bundling")
        if led.root(cp.size) != cp.root:
            raise LedgerError(f"{where}: its root is not the ledger's root at size {cp.size}; run `qctrace verify`")
        out.setdefault(cp.size, (cp, note))
    return out


def _anchors(led: Ledger, checkpoint_dir: Path | None,
             cps: dict[int, tuple[Checkpoint, bytes]]) -> dict[int, dict[str, Any]]:
    receipts = dict(led.anchors())
    if checkpoint_dir is not None:
        receipts.update(dict(anchor_files(checkpoint_dir)))
    for size, r in receipts.items():
        if size not in cps:
            raise LedgerError(f"{led.path}: an anchor receipt for size {size} has no signed checkpoint of that size")
        want = hashlib.sha256(ANCHOR_PREFIX + cps[size][0].to_text().encode()).hexdigest()
        if r.get("payload_sha256") != want:
            raise LedgerError(f"{led.path}: the anchor receipt for size {size} is not for that checkpoint")
    return receipts


def _json(obj: Any) -> bytes:
    return (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode()


def _write_zip(out: Path, members: dict[str, bytes]) -> None:
    """Write to a temporary file and rename, so a crash never leaves a half bundle that looks complete."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as fh, zipfile.ZipFile(fh, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, data in members.items():
                zf.writestr(name, data)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _readme(kind: str, lot: str | None, origin: str, latest: int, events: int, unproven: list[int]) -> str:
    what = (f"every one of the {events} events of the ledger {origin!r}" if kind == "full" else
            f"the {events} events of the backward and forward trace of lot {lot!r} in the ledger {origin!r}")
    left_out = (f"\nEvents {unproven} of this trace are newer than the latest signed checkpoint (size {latest})"
                " and are NOT in this bundle: nothing signed covers them yet. Ask for a new bundle after the next"
                " checkpoint.\n") if unproven else ""
    event_check = (
        "   events     The hash chain is recomputed from the first event, and the Merkle root of the\n"
        "              events is rebuilt and compared with the root of every signed checkpoint. Proves\n"
        "              every event up to each checkpoint is byte for byte what was signed, none missing,\n"
        "              none added, none reordered. A checkpoint larger than the events present fails:\n"
        "              events were removed after signing (rollback).\n"
        if kind == "full" else
        "   events     Each event's RFC 9162 inclusion proof is followed from the SHA-256 of its exact\n"
        f"              bytes up to the signed root of checkpoint {latest}. Proves each event is, byte for\n"
        "              byte, at that position in the signed log. It does NOT prove the trace is complete\n"
        "              (an event left out cannot be seen without the whole log): ask for a full bundle.\n")
    return f"""qctrace audit bundle ({kind})
{"=" * (23 + len(kind))}

This bundle lets you check, offline, {what},
against the checkpoints the ledger's operator signed. Latest signed checkpoint: size {latest}.
{left_out}
WHAT YOU NEED
   Python 3.11 or newer and the `cryptography` package (pip install cryptography). No network,
   no qctrace. verify_bundle.py is short: read it.

WHAT TO RUN (in this directory, or give the zip's path as the first argument)
   python verify_bundle.py --trusted-key 'NAME+KEYID+BASE64KEY'

   Use the key string the operator gave you through another channel (signed letter, contract, a
   call where you read it back). Without --trusted-key the verifier uses keys.txt from this bundle,
   which only shows the bundle agrees with itself: whoever made the bundle could have made the key.

   It prints one line per check and a verdict. Exit status 0: every check passed. Exit status 1:
   a check failed; the line names the file, checkpoint or event and what is wrong.

WHAT EACH CHECK PROVES
   manifest   Every file hashes to the SHA-256 listed in manifest.json: nothing was damaged in
              transit. The manifest is not signed, so this alone does not stop deliberate
              tampering; the checks below do.
   keys       Which public keys are trusted for the signatures.
   checkpoint Each checkpoints/*.note carries an Ed25519 signature (C2SP signed-note format) by a
              trusted key over the log's name, its size and its Merkle root. Proves the operator
              committed to exactly that log content.
   consistency Between consecutive checkpoints, an RFC 9162 consistency proof shows the later log
              only appended to the earlier one: nothing signed before was rewritten or removed.
{event_check}   anchor     Each anchor receipt's payload hash equals that of its checkpoint. The transaction
              itself is NOT CHECKED OFFLINE: look up the printed tx hash on the named chain and check
              its input data hashes to the printed payload SHA-256.

FILES
   manifest.json, README.txt, verify_bundle.py, keys.txt, events.jsonl (one event a line: index,
   chain hash, the exact canonical JSON body as a string{", its inclusion proof" if kind == "lot" else ""}),
   checkpoints/*.note, consistency.json, anchors.json.
"""

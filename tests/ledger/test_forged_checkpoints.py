"""Forged and rolled-back checkpoints, through the audit path (``qctrace verify``, with and without
``--checkpoint FILE``): each is refused with its own error type and a message naming the checkpoint
and what is wrong with it.

Already covered in tests/qctrace/test_ledger_ops.py, and not repeated here:

- a ledger rolled back below a checkpoint whose file is still in DATA_DIR/checkpoints
  (``test_a_ledger_rolled_back_below_a_signed_checkpoint_is_detected``);
- a history rewritten and re-signed at the same size, caught by the kept checkpoint
  (``test_an_auditor_who_keeps_a_checkpoint_catches_a_rewritten_history``);
- a whole ledger whose checkpoints were signed by a key other than the one the auditor trusts
  (``test_a_checkpoint_signed_by_a_key_the_auditor_does_not_trust_fails``, type only).

What this module adds: a bit-flipped signature (in a checkpoint file, and in a kept checkpoint), a
kept checkpoint signed by a key not on the allow-list, a fork (a validly signed root inconsistent
with an earlier or a later checkpoint) and a shrinking tree only the auditor's kept checkpoint
remembers, each with its message.
"""

# ruff: noqa: F811
from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path

import pytest

from ledger import Ledger
from ledger import events as E
from ledger.checkpoint import Checkpoint, sign_checkpoint
from ledger.keys import load_signer
from ledger.note import Signer
from qctrace import ledger_ops
from qctrace.errors import BadSignature, RolledBack, RootMismatch
from tests.qctrace.test_ledger_ops import T0, _cli, _genealogy, cfg  # noqa: F401

# ``cfg`` is test_ledger_ops' fixture (a key and a 14-event ledger), imported so that parameters named
# ``cfg`` receive it: hence the file-wide F811 exemption above the imports.

GIVEN = "checkpoint #1 given"  # how verify names the first --checkpoint FILE


def _flip_signature_bit(note: bytes) -> bytes:
    """The note with one bit of its Ed25519 signature flipped (the key ID before it left intact)."""
    text, _, sigs = note.decode().rpartition("\n\n")
    first, _, rest = sigs.partition("\n")
    prefix, _, b64 = first.rpartition(" ")
    raw = bytearray(base64.b64decode(b64))
    raw[4 + 20] ^= 0x01
    return f"{text}\n\n{prefix} {base64.b64encode(bytes(raw)).decode()}\n{rest}".encode()


def _signer(cfg) -> Signer:
    return load_signer(ledger_ops.keys_dir(cfg.data_dir))


def _sign(led: Ledger, size: int, signer: Signer) -> bytes:
    return sign_checkpoint(Checkpoint(signer.name, size, led.root(size)), signer)


def _bodies(cfg) -> list[dict]:
    with Ledger(ledger_ops.ledger_path(cfg.data_dir), readonly=True) as led:
        return [json.loads(e.body) for e in led.events()]


def _with_qc_changed(bodies: list[dict]) -> list[dict]:
    """The same events, the first QC result reporting 7 more flagged units: another history."""
    out = json.loads(json.dumps(bodies))
    next(b for b in out if E.kind_of(b) == E.QC_RESULT)["qctrace:qc"]["flagged"] += 7
    return out


def _verify_fails(cfg, error: type, message: str, kept: list[Path]) -> None:
    """The library raises ``error`` with ``message``; the CLI exits 3 printing the same line."""
    with pytest.raises(error) as info:
        ledger_ops.verify(cfg, extra_checkpoints=[p.read_bytes() for p in kept])
    assert type(info.value) is error
    assert re.fullmatch(message, str(info.value)), str(info.value)
    res = _cli(cfg, "verify", *[a for p in kept for a in ("--checkpoint", str(p))])
    assert res.exit_code == 3, res.output
    assert f"error: {info.value}" in res.output


def test_a_bit_flipped_signature_in_a_checkpoint_file_is_refused_naming_the_file(cfg):
    ledger_ops.checkpoint(cfg)
    key = _signer(cfg).verifier.key_name
    path = next(ledger_ops.checkpoint_dir(cfg.data_dir).glob("*.note"))
    path.write_bytes(_flip_signature_bit(path.read_bytes()))
    _verify_fails(cfg, BadSignature, re.escape(f"{path}: invalid signature for key {key} on signature line 1: the"
                                               " note text or the signature was changed after signing; do not"
                                               " trust this note"), kept=[])


def test_a_bit_flipped_signature_in_a_kept_checkpoint_is_refused_naming_it(cfg, tmp_path):
    ledger_ops.checkpoint(cfg)
    key = _signer(cfg).verifier.key_name
    kept = tmp_path / "kept.note"
    kept.write_bytes(_flip_signature_bit(next(ledger_ops.checkpoint_dir(cfg.data_dir).glob("*.note")).read_bytes()))
    _verify_fails(cfg, BadSignature, re.escape(f"{GIVEN}: invalid signature for key {key} on signature line 1:")
                  + ".*changed after signing.*", kept=[kept])


def test_a_kept_checkpoint_signed_by_a_key_not_on_the_allow_list_is_refused_naming_the_key(cfg, tmp_path):
    ledger_ops.checkpoint(cfg)
    own = _signer(cfg)
    intruder = Signer.generate(own.name)  # same name, another key: only the key ID tells them apart
    kept = tmp_path / "kept.note"
    with Ledger(ledger_ops.ledger_path(cfg.data_dir), readonly=True) as led:
        kept.write_bytes(_sign(led, len(led), intruder))  # the true root: only the key is wrong
    _verify_fails(cfg, BadSignature, re.escape(
        f"{GIVEN}: no signature from a trusted key: note is signed by {intruder.verifier.key_name};"
        f" trusted keys: {own.verifier.key_name}.") + ".*", kept=[kept])


def test_a_kept_checkpoint_contradicted_by_a_later_signed_history_is_a_fork(cfg, tmp_path):
    """The operator rewrites event history under the kept checkpoint, grows it and signs again."""
    ledger_ops.checkpoint(cfg)  # size 14
    kept = tmp_path / "kept-14.note"
    kept.write_bytes(next(ledger_ops.checkpoint_dir(cfg.data_dir).glob("*.note")).read_bytes())
    bodies = _with_qc_changed(_bodies(cfg))
    shutil.rmtree(ledger_ops.checkpoint_dir(cfg.data_dir))
    path = ledger_ops.ledger_path(cfg.data_dir)
    for p in path.parent.glob("ledger.sqlite*"):
        p.unlink()
    with Ledger(path) as led:
        led.append_many(bodies + _genealogy(3, T0 + 9 * 10**9))
    assert ledger_ops.checkpoint(cfg) == 20
    assert _cli(cfg, "verify").exit_code == 0  # consistent with itself
    _verify_fails(cfg, RootMismatch, re.escape(
        f"{GIVEN}: fork: the signed root for size 14 is not the ledger's root at that size, yet ledger checkpoint"
        " at size 20 (size 20), signed by a trusted key too, matches the ledger: trusted keys signed two"
        " different histories of events #0..#13"), kept=[kept])


def test_a_validly_signed_root_inconsistent_with_the_ledgers_checkpoints_is_a_fork(cfg, tmp_path):
    """The key signs, for size 17, another history than the one its checkpoints at 14 and 20 hold."""
    ledger_ops.checkpoint(cfg)  # size 14
    honest = _bodies(cfg)
    with Ledger(ledger_ops.ledger_path(cfg.data_dir)) as led:
        led.append_many(_genealogy(3, T0 + 9 * 10**9))
    assert ledger_ops.checkpoint(cfg) == 20
    with Ledger(tmp_path / "branch.sqlite") as branch:
        branch.append_many(_with_qc_changed(honest) + _genealogy(3, T0 + 9 * 10**9))
        forged = tmp_path / "forged-17.note"
        forged.write_bytes(_sign(branch, 17, _signer(cfg)))
    _verify_fails(cfg, RootMismatch, re.escape(
        f"{GIVEN}: fork: the signed root for size 17 is not the ledger's root at that size, yet ledger checkpoint"
        " at size 20 (size 20), signed by a trusted key too, matches the ledger: trusted keys signed two"
        " different histories of events #0..#16"), kept=[forged])


def test_a_root_past_the_last_checkpoint_that_the_ledger_does_not_hold_says_where_they_part(cfg, tmp_path):
    """Signed over a branch that leaves the ledger after its checkpoint at 14: no later checkpoint
    proves a fork, so the message says which events differ and both possible causes."""
    ledger_ops.checkpoint(cfg)  # size 14
    honest = _bodies(cfg)
    with Ledger(ledger_ops.ledger_path(cfg.data_dir)) as led:
        led.append_many(_genealogy(3, T0 + 9 * 10**9))  # 20 events, no checkpoint past 14
    with Ledger(tmp_path / "branch.sqlite") as branch:
        branch.append_many(honest + _genealogy(4, T0 + 9 * 10**9))
        forged = tmp_path / "forged-20.note"
        forged.write_bytes(_sign(branch, 20, _signer(cfg)))
    _verify_fails(cfg, RootMismatch, re.escape(
        f"{GIVEN}: the signed root for size 20 is not the ledger's root at that size; the ledger still matches"
        " ledger checkpoint at size 14 (size 14): either events #14..#19 were changed after it was signed, or it"
        " was signed over another history (a fork)"), kept=[forged])


def test_a_shrunk_tree_only_the_kept_checkpoint_remembers_is_a_rollback(cfg, tmp_path):
    """The operator restores the ledger from before the last 6 events and deletes the newer
    checkpoint files: the data directory alone verifies, the auditor's kept checkpoint does not."""
    path = ledger_ops.ledger_path(cfg.data_dir)
    ledger_ops.checkpoint(cfg)  # size 14
    saved = path.read_bytes()
    with Ledger(path) as led:
        led.append_many(_genealogy(3, T0 + 9 * 10**9))
    assert ledger_ops.checkpoint(cfg) == 20
    kept = tmp_path / "kept-20.note"
    newest = max(ledger_ops.checkpoint_dir(cfg.data_dir).glob("*.note"))
    kept.write_bytes(newest.read_bytes())
    newest.unlink()
    for suffix in ("-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)
    path.write_bytes(saved)
    assert _cli(cfg, "verify").exit_code == 0  # nothing beside the data remembers size 20
    _verify_fails(cfg, RolledBack, re.escape(
        f"{GIVEN}: signed for 20 events, but the ledger holds only 14: events #14..#19 were removed (rolled back"
        " or truncated)"), kept=[kept])

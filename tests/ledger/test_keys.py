"""The signing key lives 0600 in a 0700 directory, is never overwritten, and rotation keeps old checkpoints valid."""

from __future__ import annotations

import os
import stat

import pytest

from ledger import keys
from ledger.checkpoint import Checkpoint, open_checkpoint, sign_checkpoint
from ledger.note import Signer, Verifier
from qctrace.errors import BadSignature, LedgerError

NAME = "qctrace.example/plant1"
ROOT = bytes(32)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def key_dir(tmp_path):
    d = tmp_path / "keys"
    keys.init_keys(d, NAME)
    return d


def test_init_creates_a_0600_private_key_in_a_0700_directory(tmp_path):
    d = tmp_path / "state" / "keys"
    vkey = keys.init_keys(d, NAME)
    assert _mode(d) == 0o700
    assert _mode(d / keys.SIGNER_FILE) == 0o600
    assert (d / keys.SIGNER_FILE).read_text().startswith(f"PRIVATE+KEY+{NAME}+")
    assert (d / keys.VERIFIER_FILE).read_text() == vkey + "\n"
    assert Verifier.parse(vkey).name == NAME
    assert keys.export_public(d) == vkey
    assert keys.load_verifiers(d) == [Verifier.parse(vkey)]
    assert keys.load_signer(d).verifier == Verifier.parse(vkey)


def test_init_keeps_the_private_key_0600_under_a_permissive_umask(tmp_path):
    old = os.umask(0)
    try:
        keys.init_keys(tmp_path / "k", NAME)
    finally:
        os.umask(old)
    assert _mode(tmp_path / "k") == 0o700
    assert _mode(tmp_path / "k" / keys.SIGNER_FILE) == 0o600


def test_init_tightens_an_existing_open_directory(tmp_path):
    d = tmp_path / "k"
    d.mkdir()
    d.chmod(0o755)
    keys.init_keys(d, NAME)
    assert _mode(d) == 0o700


def test_init_refuses_to_overwrite_an_existing_key(key_dir):
    before = (key_dir / keys.SIGNER_FILE).read_bytes()
    with pytest.raises(LedgerError, match="refusing to overwrite"):
        keys.init_keys(key_dir, NAME)
    assert (key_dir / keys.SIGNER_FILE).read_bytes() == before


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620])
def test_load_signer_refuses_a_key_others_can_access_and_says_how_to_fix_it(key_dir, mode):
    path = key_dir / keys.SIGNER_FILE
    path.chmod(mode)
    with pytest.raises(LedgerError) as info:
        keys.load_signer(key_dir)
    assert f"chmod 600 {path}" in str(info.value)
    path.chmod(0o600)
    keys.load_signer(key_dir)


def test_load_signer_refuses_a_symlinked_key(key_dir, tmp_path):
    real = tmp_path / "elsewhere.key"
    os.replace(key_dir / keys.SIGNER_FILE, real)
    (key_dir / keys.SIGNER_FILE).symlink_to(real)
    with pytest.raises(LedgerError, match="regular file"):
        keys.load_signer(key_dir)


@pytest.mark.parametrize("call", [keys.load_signer, keys.load_verifiers, keys.export_public])
def test_missing_keys_tell_the_user_to_run_qctrace_init(tmp_path, call):
    with pytest.raises(LedgerError, match="run `qctrace init`"):
        call(tmp_path / "nothing-here")


def test_a_private_key_that_does_not_match_the_public_key_is_refused(key_dir):
    (key_dir / keys.VERIFIER_FILE).write_text(str(Signer.generate(NAME).verifier) + "\n")
    with pytest.raises(LedgerError, match="rotation was interrupted"):
        keys.load_signer(key_dir)


def test_a_damaged_verifier_file_names_the_file_and_line(key_dir):
    (key_dir / keys.VERIFIER_FILE).write_text("not a key\n")
    with pytest.raises(LedgerError, match=rf"{keys.VERIFIER_FILE}:1: malformed verifier key"):
        keys.load_verifiers(key_dir)


def test_checkpoints_signed_before_a_rotation_still_verify_with_load_verifiers(key_dir):
    old_vkey = keys.export_public(key_dir)
    old_note = sign_checkpoint(Checkpoint(NAME, 10, ROOT), keys.load_signer(key_dir))

    new_vkey = keys.rotate(key_dir, NAME)

    assert new_vkey != old_vkey and keys.export_public(key_dir) == new_vkey
    assert keys.load_signer(key_dir).verifier == Verifier.parse(new_vkey)
    assert [str(v) for v in keys.load_verifiers(key_dir)] == [new_vkey, old_vkey]
    assert open_checkpoint(old_note, keys.load_verifiers(key_dir), origin=NAME).size == 10
    new_note = sign_checkpoint(Checkpoint(NAME, 11, ROOT), keys.load_signer(key_dir))
    assert open_checkpoint(new_note, keys.load_verifiers(key_dir), origin=NAME).size == 11
    # Only the history makes the old checkpoint valid: the current key alone refuses it.
    with pytest.raises(BadSignature):
        open_checkpoint(old_note, [Verifier.parse(new_vkey)])


def test_rotation_deletes_the_old_private_key_and_keeps_the_new_one_0600(key_dir):
    old_secret = (key_dir / keys.SIGNER_FILE).read_text()
    keys.rotate(key_dir, NAME)
    assert sorted(p.name for p in key_dir.iterdir()) == [keys.HISTORY_FILE, keys.SIGNER_FILE, keys.VERIFIER_FILE]
    assert (key_dir / keys.SIGNER_FILE).read_text() != old_secret
    assert old_secret.strip().split("+", 4)[4] not in "".join(p.read_text() for p in key_dir.iterdir())
    assert _mode(key_dir / keys.SIGNER_FILE) == 0o600


def test_every_rotation_adds_one_key_to_the_history_newest_first(key_dir):
    vkeys = [keys.export_public(key_dir)]
    for _ in range(3):
        vkeys.append(keys.rotate(key_dir, NAME))
    assert [str(v) for v in keys.load_verifiers(key_dir)] == vkeys[::-1]


def test_a_rotation_interrupted_after_publishing_the_new_key_is_finished_by_rotating_again(key_dir):
    staged = Signer.generate(NAME)
    old = keys.load_signer(key_dir)
    # The state a crash between steps 3 and 4 leaves behind.
    fd = os.open(key_dir / "signer.key.new", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    os.write(fd, staged.private_key_string().encode() + b"\n")
    os.close(fd)
    (key_dir / keys.HISTORY_FILE).write_text(f"{old.verifier}\n")
    (key_dir / keys.VERIFIER_FILE).write_text(f"{staged.verifier}\n")
    with pytest.raises(LedgerError, match="rotation was interrupted"):
        keys.load_signer(key_dir)

    assert keys.rotate(key_dir, NAME) == str(staged.verifier)
    assert keys.load_signer(key_dir).verifier == staged.verifier
    assert keys.load_verifiers(key_dir) == [staged.verifier, old.verifier]


def test_a_rotation_interrupted_before_publishing_asks_for_the_staged_key_to_be_deleted(key_dir):
    fd = os.open(key_dir / "signer.key.new", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    os.write(fd, Signer.generate(NAME).private_key_string().encode())
    os.close(fd)
    with pytest.raises(LedgerError, match=r"delete .*signer\.key\.new and rotate again"):
        keys.rotate(key_dir, NAME)
    assert keys.load_signer(key_dir)  # the active key is untouched

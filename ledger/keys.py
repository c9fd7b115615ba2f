"""The ledger's checkpoint signing key on disk, and the public keys that verify its past checkpoints.

Layout of ``key_dir`` (mode 0700)::

    signer.key    PRIVATE+KEY+name+hexid+base64(0x01||seed)   mode 0600, the active private key
    verifier.pub  name+hexid+base64(0x01||pubkey)              the active public key
    history.pub   one retired verifier key per line, oldest first (absent until the first rotation)
    signer.key.new  only while a rotation runs (or after it crashed; ``rotate`` finishes or explains)

The strings are Go's ``golang.org/x/mod/sumdb/note`` formats, so Go tools can read the keys.

Rotation deletes the old private key rather than moving it aside. Old checkpoints only need the
old *public* key (kept in ``history.pub``); a retired private key that still exists can only be used
to forge checkpoints that our own verifiers would accept. Unlinking is not secure erasure, but it
leaves nothing for a later backup or copy of ``key_dir`` to pick up.

Every retired public key stays trusted for every checkpoint, so rotation is for hygiene, not for
recovering from a stolen key: after a compromise, remove that key's line from ``history.pub`` and
re-sign the checkpoints you still need.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from ledger.note import Signer, Verifier
from qctrace.durable import fsync_dir
from qctrace.errors import LedgerError

__all__ = [
    "HISTORY_FILE",
    "SIGNER_FILE",
    "VERIFIER_FILE",
    "export_public",
    "init_keys",
    "load_signer",
    "load_verifiers",
    "rotate",
]

log = logging.getLogger(__name__)

SIGNER_FILE = "signer.key"
VERIFIER_FILE = "verifier.pub"
HISTORY_FILE = "history.pub"
_NEW_SUFFIX = ".new"


def _ensure_dir(key_dir: Path) -> None:
    key_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = stat.S_IMODE(key_dir.stat().st_mode)
    if mode != 0o700:
        # mkdir's mode is filtered by the umask, and a pre-existing directory may be wide open.
        log.warning("keys.dir_mode path=%s was=%o now=700", key_dir, mode)
        key_dir.chmod(0o700)


def _write_private(path: Path, signer: Signer) -> None:
    """Create ``path`` 0600 and write the secret; O_EXCL so an existing key is never overwritten."""
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, (signer.private_key_string() + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_public(path: Path, text: str) -> None:
    """Replace ``path`` atomically, so a crash leaves either the old or the new public key."""
    tmp = path.with_name(path.name + _NEW_SUFFIX)
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _no_key(key_dir: Path, what: str) -> LedgerError:
    return LedgerError(f"no ledger signing key: {what} in {key_dir}; run `qctrace init` to create one")


def init_keys(key_dir: Path, name: str) -> str:
    """Create the ledger's first signing key and return its verifier key string.

    ``name`` is the key name in signatures; C2SP asks that it match the checkpoint origin. Refuses
    to run where a key exists: replacing a key silently would orphan every checkpoint it signed.
    """
    key_dir = Path(key_dir)
    signer = Signer.generate(name)
    _ensure_dir(key_dir)
    path = key_dir / SIGNER_FILE
    try:
        _write_private(path, signer)
    except FileExistsError:
        raise LedgerError(
            f"a ledger signing key already exists at {path}; refusing to overwrite it."
            " To replace it while keeping old checkpoints verifiable, rotate it (ledger.keys.rotate)"
        ) from None
    _write_public(key_dir / VERIFIER_FILE, f"{signer.verifier}\n")
    fsync_dir(key_dir)
    log.info("keys.init dir=%s key=%s", key_dir, signer.verifier.key_name)
    return str(signer.verifier)


def _read_verifier_lines(path: Path) -> list[Verifier]:
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            out.append(Verifier.parse(line))
        except LedgerError as e:
            raise LedgerError(f"{path}:{n}: {e}") from None
    return out


def _current_verifier(key_dir: Path) -> Verifier:
    path = key_dir / VERIFIER_FILE
    if not path.exists():
        raise _no_key(key_dir, f"{VERIFIER_FILE} is missing")
    keys = _read_verifier_lines(path)
    if len(keys) != 1:
        raise LedgerError(f"{path} must hold exactly one verifier key, found {len(keys)}")
    return keys[0]


def _read_private(path: Path) -> Signer:
    """Read a private key file, refusing one that group or others can read or write."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise _no_key(path.parent, f"{path.name} is missing") from None
    except OSError as e:
        raise LedgerError(f"cannot open ledger signing key {path}: {e.strerror}; it must be a regular file") from None
    try:
        st = os.fstat(fd)  # on the open file, so the file checked is the file read
        if not stat.S_ISREG(st.st_mode):
            raise LedgerError(f"ledger signing key {path} is not a regular file")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise LedgerError(
                f"ledger signing key {path} is accessible by group or others (mode {mode:04o});"
                f" run `chmod 600 {path}` and check nobody copied it"
            )
        with os.fdopen(os.dup(fd), "r", encoding="utf-8") as f:
            text = f.read()
    finally:
        os.close(fd)
    try:
        return Signer.parse(text.strip())
    except LedgerError as e:
        raise LedgerError(f"{path}: {e}") from None


def load_signer(key_dir: Path) -> Signer:
    """Load the active private key (mode must be 0600 or stricter).

    Also refuses a key that does not match ``verifier.pub``: checkpoints it signed would not verify.
    """
    key_dir = Path(key_dir)
    signer = _read_private(key_dir / SIGNER_FILE)
    current = _current_verifier(key_dir)
    if current != signer.verifier:
        raise LedgerError(
            f"{key_dir / SIGNER_FILE} holds key {signer.verifier.key_name} but {key_dir / VERIFIER_FILE} names"
            f" {current.key_name}; a key rotation was interrupted. Run the rotation again (ledger.keys.rotate)"
            " to finish it"
        )
    return signer


def load_verifiers(key_dir: Path) -> list[Verifier]:
    """Every key that may have signed one of our checkpoints: the active one first, then the retired ones."""
    key_dir = Path(key_dir)
    found = [_current_verifier(key_dir)]
    history = key_dir / HISTORY_FILE
    if history.exists():
        found.extend(reversed(_read_verifier_lines(history)))
    return list(dict.fromkeys(found))


def export_public(key_dir: Path) -> str:
    """The active verifier key string, to hand to auditors; never touches the private key."""
    return str(_current_verifier(Path(key_dir)))


def rotate(key_dir: Path, name: str) -> str:
    """Make a new active key and return its verifier string; the old public key moves to history.

    Steps are ordered so a crash at any point leaves every signed checkpoint verifiable:
    the old public key is recorded before the old private key is replaced. If an earlier rotation
    crashed after publishing its key, this call finishes that rotation instead of making another key.
    """
    key_dir = Path(key_dir)
    staged = key_dir / (SIGNER_FILE + _NEW_SUFFIX)
    if staged.exists():
        return _finish_interrupted_rotation(key_dir, staged)
    old = load_signer(key_dir)
    new = Signer.generate(name)
    # 1. Write the new private key beside the old one.
    _write_private(staged, new)
    # 2. Append the old public key to the history, so its checkpoints keep verifying.
    history = key_dir / HISTORY_FILE
    retired = _read_verifier_lines(history) if history.exists() else []
    if old.verifier not in retired:
        with open(history, "a", encoding="utf-8") as f:
            f.write(f"{old.verifier}\n")
            f.flush()
            os.fsync(f.fileno())
    # 3. Publish the new public key.
    _write_public(key_dir / VERIFIER_FILE, f"{new.verifier}\n")
    # 4. Replace the old private key with the new one; the old secret is gone after this rename.
    os.replace(staged, key_dir / SIGNER_FILE)
    fsync_dir(key_dir)
    log.info("keys.rotate dir=%s old=%s new=%s", key_dir, old.verifier.key_name, new.verifier.key_name)
    return str(new.verifier)


def _finish_interrupted_rotation(key_dir: Path, staged: Path) -> str:
    """A crash left ``signer.key.new``: finish that rotation if it got as far as publishing the key.

    Before step 3 the staged key was never published, so nothing it could sign would verify; we
    refuse and ask for it to be deleted rather than guess. From step 3 on, only the rename is left.
    """
    new = _read_private(staged)
    if _current_verifier(key_dir) != new.verifier:
        raise LedgerError(
            f"{staged} is left from an interrupted rotation that never published its key;"
            f" delete {staged} and rotate again"
        )
    os.replace(staged, key_dir / SIGNER_FILE)
    fsync_dir(key_dir)
    log.info("keys.rotate_finished dir=%s new=%s", key_dir, new.verifier.key_name)
    return str(new.verifier)

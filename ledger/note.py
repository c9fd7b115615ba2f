"""C2SP signed notes (https://c2sp.org/signed-note) with Ed25519 keys.

A checkpoint is only worth something if an auditor with nothing but our public key can check it, with
any implementation. So this module follows the published format byte for byte, and interoperates with
Go's ``golang.org/x/mod/sumdb/note`` (its key strings, key IDs and signed notes are our test vectors).

Where the spec leaves room we take the strict side, so a note has exactly one encoding:

- base64 must be canonical (no stray padding bits), and key IDs in key strings lowercase hex;
- every signature from a known key is verified, and one bad one rejects the whole note (the spec's
  SHOULD); signatures from unknown keys are ignored, but at least one known key must have signed;
- at most :data:`MAX_SIGNATURES` signature lines (the spec requires accepting 16; Go allows 100).

Verification raises :class:`~qctrace.errors.BadSignature` and never returns ``False``. Malformed
key strings raise :class:`~qctrace.errors.LedgerError`: they come from configuration, not from a log.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from qctrace.errors import BadSignature, LedgerError

__all__ = [
    "ALG_ED25519",
    "MAX_SIGNATURES",
    "Note",
    "Signature",
    "Signer",
    "Verifier",
    "key_id",
    "open_note",
    "sign",
    "strict_b64decode",
]

ALG_ED25519 = 0x01
MAX_SIGNATURES = 100

_SIG_PREFIX = "— "
_HEX8 = re.compile(r"[0-9a-f]{8}")
_B64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")


def key_id(name: str, public_key: bytes, alg: int = ALG_ED25519) -> int:
    """The 32-bit key ID: SHA-256(name || 0x0A || alg || public key)[:4], big-endian.

    The ID only disambiguates keys sharing a name (e.g. across a rotation); it is not a fingerprint.
    """
    digest = hashlib.sha256(name.encode() + b"\n" + bytes([alg]) + public_key).digest()
    return int.from_bytes(digest[:4], "big")


def _name_problem(name: str) -> str | None:
    if not name:
        return "is empty"
    if "+" in name:
        return "contains '+'"
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        return "contains a space or control character"
    return None


def strict_b64decode(text: str) -> bytes | None:
    """Standard padded base64 that re-encodes to the same text, else None: one value, one spelling."""
    if len(text) % 4 or not _B64.fullmatch(text):
        return None
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if base64.b64encode(raw).decode() == text else None


def _split_key(kind: str, shown: str, parts: list[str]) -> tuple[str, int, bytes]:
    """Shared parsing of ``name+hexid+base64(alg||key)``; ``shown`` names the key in messages."""
    if len(parts) != 3:
        raise LedgerError(f"malformed {kind} key {shown}: want name+keyid+base64key (3 parts joined by '+')")
    name, hex_id, b64 = parts
    if (problem := _name_problem(name)) is not None:
        raise LedgerError(f"malformed {kind} key {shown}: key name {problem}")
    if not _HEX8.fullmatch(hex_id):
        raise LedgerError(f"malformed {kind} key {shown}: key ID {hex_id!r} is not 8 lowercase hex digits")
    raw = strict_b64decode(b64)
    if raw is None:
        raise LedgerError(f"malformed {kind} key {shown}: key material is not canonical base64")
    if len(raw) != 33 or raw[0] != ALG_ED25519:
        raise LedgerError(
            f"unsupported {kind} key {shown}: only Ed25519 (type byte 0x01 + 32 bytes) is supported,"
            f" got {len(raw)} bytes starting {raw[:1].hex() or 'empty'}"
        )
    return name, int(hex_id, 16), raw[1:]


@dataclass(frozen=True)
class Verifier:
    """A trusted public key. ``str(v)`` is the verifier key string ``name+hexid+base64(0x01||key)``."""

    name: str
    public_key: bytes
    key_id: int = field(init=False)

    def __post_init__(self) -> None:
        if (problem := _name_problem(self.name)) is not None:
            raise LedgerError(f"bad key name {self.name!r}: it {problem}")
        if len(self.public_key) != 32:
            raise LedgerError(f"an Ed25519 public key is 32 bytes, got {len(self.public_key)}")
        object.__setattr__(self, "key_id", key_id(self.name, self.public_key))

    @classmethod
    def parse(cls, vkey: str) -> Verifier:
        """Parse a verifier key string; a key ID that does not match the key is refused (typo or tampering)."""
        name, kid, pub = _split_key("verifier", repr(vkey), vkey.split("+", 2))
        v = cls(name, pub)
        if v.key_id != kid:
            raise LedgerError(
                f"verifier key {vkey!r}: key ID {kid:08x} does not match the key (computed {v.key_id:08x});"
                " the string is damaged, copy it again from `export_public`"
            )
        return v

    @property
    def key_name(self) -> str:
        """``name+hexid``: how errors and notes refer to this key."""
        return f"{self.name}+{self.key_id:08x}"

    def __str__(self) -> str:
        return f"{self.key_name}+{base64.b64encode(bytes([ALG_ED25519]) + self.public_key).decode()}"

    def verify(self, message: bytes, signature: bytes) -> None:
        """Raise BadSignature unless ``signature`` is this key's Ed25519 signature of ``message``."""
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(signature, message)
        except InvalidSignature:
            raise BadSignature(f"invalid signature for key {self.key_name}") from None


class Signer:
    """A private Ed25519 key with its name. Its repr never shows the seed, so it is safe to log."""

    __slots__ = ("_private", "name", "verifier")

    def __init__(self, name: str, seed: bytes) -> None:
        if len(seed) != 32:
            raise LedgerError(f"an Ed25519 seed is 32 bytes, got {len(seed)}")
        self._private = Ed25519PrivateKey.from_private_bytes(seed)
        pub = self._private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.name = name
        self.verifier = Verifier(name, pub)

    @classmethod
    def generate(cls, name: str) -> Signer:
        """A fresh key from the OS CSPRNG."""
        seed = Ed25519PrivateKey.generate().private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        return cls(name, seed)

    @classmethod
    def parse(cls, skey: str) -> Signer:
        """Parse Go's private key string ``PRIVATE+KEY+name+hexid+base64(0x01||seed)``.

        The message never echoes the string: it is a secret.
        """
        parts = skey.split("+", 4)
        if parts[:2] != ["PRIVATE", "KEY"]:
            raise LedgerError("malformed private key: it must start with PRIVATE+KEY+")
        name, kid, seed = _split_key("private", "(redacted)", parts[2:])
        signer = cls(name, seed)
        if signer.key_id != kid:
            raise LedgerError(
                f"private key {name}+{kid:08x}: key ID does not match the key (computed {signer.key_id:08x});"
                " the key file is damaged"
            )
        return signer

    @property
    def key_id(self) -> int:
        return self.verifier.key_id

    def private_key_string(self) -> str:
        """The secret in Go's format; named explicitly so it cannot leak through ``str()``."""
        seed = self._private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        return f"PRIVATE+KEY+{self.verifier.key_name}+{base64.b64encode(bytes([ALG_ED25519]) + seed).decode()}"

    def sign(self, message: bytes) -> bytes:
        """The raw 64-byte Ed25519 signature (deterministic, so notes are reproducible)."""
        return self._private.sign(message)

    def __repr__(self) -> str:
        return f"Signer({self.verifier.key_name!r})"


@dataclass(frozen=True)
class Signature:
    """One signature line: key name, key ID and the base64 text exactly as it appeared."""

    name: str
    key_id: int
    b64: str

    @property
    def key_name(self) -> str:
        return f"{self.name}+{self.key_id:08x}"


@dataclass(frozen=True)
class Note:
    """An opened note: its text, the signatures that verified, and those from keys we do not know."""

    text: str
    sigs: tuple[Signature, ...]
    unverified_sigs: tuple[Signature, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        """Names of the keys that verified, in note order, without repeats."""
        return tuple(dict.fromkeys(s.name for s in self.sigs))


def _text_problem(text: str) -> str | None:
    for i, c in enumerate(text):
        if (ord(c) < 0x20 and c != "\n") or ord(c) == 0x7F:
            return f"contains control character {c!r} at offset {i}"
    return None


def sign(text: str, *signers: Signer) -> bytes:
    """Sign ``text`` (which must end in a newline) with each signer; returns the note's bytes."""
    if not signers:
        raise LedgerError("sign() needs at least one signer")
    if not text.endswith("\n"):
        raise LedgerError("cannot sign: note text must end in a newline")
    if (problem := _text_problem(text)) is not None:
        raise LedgerError(f"cannot sign: note text {problem} (only newline is allowed)")
    body = text.encode()
    lines = []
    for s in signers:
        raw = s.key_id.to_bytes(4, "big") + s.sign(body)
        lines.append(f"{_SIG_PREFIX}{s.name} {base64.b64encode(raw).decode()}\n")
    return (text + "\n" + "".join(lines)).encode()


def _malformed(why: str) -> BadSignature:
    return BadSignature(f"malformed signed note: {why}")


def open_note(note: bytes | str, verifiers: Iterable[Verifier]) -> Note:
    """Check a signed note against trusted keys and return its text and signatures.

    Raises BadSignature if the note is malformed, if any signature from a known key fails, or if no
    known key signed it. Unknown keys are listed in ``Note.unverified_sigs`` and otherwise ignored.
    """
    if isinstance(note, str):
        note = note.encode()
    try:
        msg = note.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _malformed(f"not valid UTF-8 (byte {e.start})") from None
    if (problem := _text_problem(msg)) is not None:
        raise _malformed(problem)

    split = msg.rfind("\n\n")
    if split < 0:
        raise _malformed("no blank line separating the text from the signatures")
    text, block = msg[: split + 1], msg[split + 2 :]
    if not block:
        raise _malformed("no signature lines after the blank line")
    if not block.endswith("\n"):
        raise _malformed("the last signature line does not end in a newline")

    known: dict[tuple[str, int], Verifier] = {}
    for v in verifiers:
        other = known.setdefault((v.name, v.key_id), v)
        if other.public_key != v.public_key:
            # A 32-bit ID collision between two trusted keys: refuse to guess which one is meant.
            raise BadSignature(f"ambiguous key {v.key_name}: two different trusted keys share its name and ID")

    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise _malformed(f"{len(lines)} signature lines, more than the limit of {MAX_SIGNATURES}")

    body = text.encode()
    verified: dict[str, Signature] = {}
    unverified: dict[str, Signature] = {}
    for n, line in enumerate(lines, start=1):
        if not line.startswith(_SIG_PREFIX):
            raise _malformed(f"signature line {n} does not start with an em dash and a space ('— ')")
        name, sep, b64 = line[len(_SIG_PREFIX) :].partition(" ")
        if not sep or (problem := _name_problem(name)) is not None:
            raise _malformed(f"signature line {n}: key name {name!r} {problem or 'is not followed by a space'}")
        raw = strict_b64decode(b64)
        if raw is None:
            raise _malformed(f"signature line {n} ({name}): signature is not canonical base64")
        if len(raw) < 5:
            raise _malformed(f"signature line {n} ({name}): signature shorter than a key ID and one byte")
        sig = Signature(name, int.from_bytes(raw[:4], "big"), b64)
        v = known.get((sig.name, sig.key_id))
        if v is None:
            unverified.setdefault(line, sig)
            continue
        if line in verified:
            continue
        try:
            v.verify(body, raw[4:])
        except BadSignature as e:
            raise BadSignature(
                f"invalid signature for key {v.key_name} on signature line {n}: the note text or the signature"
                " was changed after signing; do not trust this note"
            ) from e
        verified[line] = sig

    if not verified:
        seen = ", ".join(s.key_name for s in unverified.values())
        trusted = ", ".join(v.key_name for v in known.values()) or "none"
        raise BadSignature(
            f"no signature from a trusted key: note is signed by {seen}; trusted keys: {trusted}."
            " If the ledger key was rotated, load the old public keys too (ledger.keys.load_verifiers)"
        )
    return Note(text, tuple(verified.values()), tuple(unverified.values()))

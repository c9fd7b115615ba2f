"""C2SP transparency-log checkpoints (https://c2sp.org/tlog-checkpoint): a signed Merkle tree head.

The body is three lines, origin, decimal tree size, base64 root hash, then optional extension lines,
each ending in a newline. We sign it as a C2SP signed note (:mod:`ledger.note`), so any tlog tool
(Go's sumdb/note, transparency-dev/formats) can check our checkpoints and we can check theirs.

Parsing is strict so that one checkpoint has one text: no leading zeros, ASCII digits only, a size
below 2**64, canonical base64 for a 32-byte SHA-256 root, no empty lines. A body that breaks these
raises :class:`~qctrace.errors.LedgerIntegrityError`; a signature problem raises its subclass
:class:`~qctrace.errors.BadSignature`.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ledger.note import Signer, Verifier, open_note, sign, strict_b64decode
from qctrace.errors import LedgerIntegrityError

__all__ = ["HASH_SIZE", "MAX_SIZE", "Checkpoint", "open_checkpoint", "sign_checkpoint"]

HASH_SIZE = 32  # RFC 6962 with SHA-256
MAX_SIZE = 2**64 - 1

_SIZE = re.compile(r"0|[1-9][0-9]*")


def _line_problem(what: str, line: str) -> str | None:
    if not line:
        return f"{what} is empty"
    for c in line:
        if ord(c) < 0x20 or ord(c) == 0x7F:
            return f"{what} contains control character {c!r}"
    return None


def _field_problem(origin: str, size: int, root: bytes, extensions: Sequence[str]) -> str | None:
    if (problem := _line_problem("origin", origin)) is not None:
        return problem
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= MAX_SIZE:
        return f"tree size {size!r} is not an integer in [0, 2**64)"
    if not isinstance(root, bytes) or len(root) != HASH_SIZE:
        return f"root hash must be {HASH_SIZE} bytes (SHA-256), got {len(root) if isinstance(root, bytes) else root!r}"
    for i, ext in enumerate(extensions):
        if (problem := _line_problem(f"extension line {i + 1}", ext)) is not None:
            return problem
    return None


@dataclass(frozen=True)
class Checkpoint:
    """A tree head: the log's ``origin``, its ``size`` in leaves, and the Merkle ``root`` at that size."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "extensions", tuple(self.extensions))
        if (problem := _field_problem(self.origin, self.size, self.root, self.extensions)) is not None:
            raise ValueError(f"invalid checkpoint: {problem}")

    def to_text(self) -> str:
        """The note body: one field per line, each ending in a newline."""
        lines = [self.origin, str(self.size), base64.b64encode(self.root).decode(), *self.extensions]
        return "".join(line + "\n" for line in lines)

    @classmethod
    def parse(cls, text: str | bytes) -> Checkpoint:
        """Parse a checkpoint body strictly; ``parse(cp.to_text()) == cp`` and nothing else parses to ``cp``."""
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError as e:
                raise _bad(f"not valid UTF-8 (byte {e.start})") from None
        if not text.endswith("\n"):
            raise _bad("the body does not end in a newline")
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise _bad(f"want at least 3 lines (origin, size, root hash), got {len(lines)}")
        origin, size_text, root_text, *extensions = lines
        if (problem := _line_problem("origin", origin)) is not None:
            raise _bad(problem)
        if not _SIZE.fullmatch(size_text):
            raise _bad(f"tree size {size_text!r} is not a decimal number without leading zeros or sign")
        size = int(size_text)
        if size > MAX_SIZE:
            raise _bad(f"tree size {size_text} does not fit in 64 bits")
        root = strict_b64decode(root_text)
        if root is None:
            raise _bad(f"root hash {root_text!r} is not canonical standard base64")
        if (problem := _field_problem(origin, size, root, extensions)) is not None:
            raise _bad(problem)
        return cls(origin, size, root, tuple(extensions))


def _bad(why: str) -> LedgerIntegrityError:
    return LedgerIntegrityError(f"malformed checkpoint: {why}")


def sign_checkpoint(cp: Checkpoint, signer: Signer) -> bytes:
    """The signed note for ``cp``. By convention (C2SP) the signer's key name is the origin."""
    return sign(cp.to_text(), signer)


def open_checkpoint(note: bytes | str, verifiers: Iterable[Verifier], origin: str | None = None) -> Checkpoint:
    """Verify a signed checkpoint and parse it; with ``origin``, also refuse a checkpoint of another log.

    Raises BadSignature when no trusted key signed it or a trusted key's signature fails, and
    LedgerIntegrityError when the signed body is not a checkpoint or is for a different origin.
    """
    cp = Checkpoint.parse(open_note(note, verifiers).text)
    if origin is not None and cp.origin != origin:
        raise LedgerIntegrityError(
            f"checkpoint is for log {cp.origin!r}, not {origin!r}: it was signed by a trusted key but for"
            " another log; check which ledger this checkpoint belongs to",
            expected=origin,
            computed=cp.origin,
        )
    return cp

"""Generate checkpoint_generated.json: our own strictness and tamper cases for signed checkpoints.

Run ``.venv/bin/python tests/vectors/ledger/gen_checkpoint_vectors.py`` after changing a case;
``tests/ledger/test_checkpoint.py`` fails if the checked-in JSON drifts from this output.

Signed cases use the published "Log" test key of transparency-dev/formats. Ed25519 is
deterministic, so the notes are stable, and any C2SP implementation reproduces them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).with_name("checkpoint_generated.json")
LOG_SKEY = "PRIVATE+KEY+Log+2271c621+AdEIq9FLRQni54Wg68T96VJO+iayOaulswav2DUMKgvQ"
LOG_SOURCE = "transparency-dev/formats log/note_test.go (key only)"
ROOT = base64.b64encode(hashlib.sha256(b"qctrace").digest()).decode()
SLASHY_ROOT = base64.b64encode(bytes([0xFB, 0xEF, 0xFF] * 10 + [0xFB, 0xEF])).decode()  # has '+' and '/'
EMPTY_ROOT = base64.b64encode(hashlib.sha256(b"").digest()).decode()  # RFC 6962 root of the empty tree


def _body(desc: str, text: str, want: dict[str, Any] | None = None) -> dict[str, Any]:
    case: dict[str, Any] = {"desc": desc, "text": text, "want_error": None if want else "LedgerIntegrityError"}
    if want:
        case["want"] = want
    return case


def _non_canonical(b64: str) -> str:
    """Same bytes, different text: set a padding bit the decoder would otherwise ignore."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    i = len(b64.rstrip("=")) - 1
    return b64[:i] + alphabet[alphabet.index(b64[i]) ^ 1] + b64[i + 1 :]


def _flip(data: bytes, at: int) -> bytes:
    out = bytearray(data)
    out[at] ^= 0x01
    return bytes(out)


def bodies() -> list[dict[str, Any]]:
    want = {"origin": "qctrace.example/plant1", "size": 42, "root_b64": ROOT, "extensions": []}
    return [
        _body("minimal checkpoint", f"qctrace.example/plant1\n42\n{ROOT}\n", want),
        _body("empty tree: size 0 and the SHA-256 of nothing", f"log\n0\n{EMPTY_ROOT}\n",
              {"origin": "log", "size": 0, "root_b64": EMPTY_ROOT, "extensions": []}),
        _body("largest 64-bit size", f"log\n18446744073709551615\n{ROOT}\n",
              {"origin": "log", "size": 2**64 - 1, "root_b64": ROOT, "extensions": []}),
        _body("extension lines are kept in order", f"log\n1\n{ROOT}\nx-one\nx two\n",
              {"origin": "log", "size": 1, "root_b64": ROOT, "extensions": ["x-one", "x two"]}),
        _body("origin with a space is allowed (clients must not assume URL form)", f"Moon Log\n1\n{ROOT}\n",
              {"origin": "Moon Log", "size": 1, "root_b64": ROOT, "extensions": []}),
        _body("size 2**64 does not fit", f"log\n18446744073709551616\n{ROOT}\n"),
        _body("leading zero in size", f"log\n042\n{ROOT}\n"),
        _body("size 00", f"log\n00\n{ROOT}\n"),
        _body("plus sign in size", f"log\n+42\n{ROOT}\n"),
        _body("space before size", f"log\n 42\n{ROOT}\n"),
        _body("underscore in size (Python int() would take it)", f"log\n4_2\n{ROOT}\n"),
        _body("non-ASCII digits in size (Python int() would take them)", f"log\n\u0664\u0662\n{ROOT}\n"),
        _body("empty size line", f"log\n\n{ROOT}\n"),
        _body("non-canonical base64 root (padding bit set)", f"log\n42\n{_non_canonical(ROOT)}\n"),
        _body("unpadded base64 root", f"log\n42\n{ROOT.rstrip('=')}\n"),
        _body("URL-safe base64 alphabet", f"log\n42\n{SLASHY_ROOT.replace('+', '-').replace('/', '_')}\n"),
        _body("root whose base64 has '+' and '/'", f"log\n42\n{SLASHY_ROOT}\n",
              {"origin": "log", "size": 42, "root_b64": SLASHY_ROOT, "extensions": []}),
        _body("root of 31 bytes", f"log\n42\n{base64.b64encode(bytes(31)).decode()}\n"),
        _body("root of 33 bytes", f"log\n42\n{base64.b64encode(bytes(33)).decode()}\n"),
        _body("empty root line", "log\n42\n\n"),
        _body("empty extension line", f"log\n42\n{ROOT}\n\n"),
        _body("empty extension line between two", f"log\n42\n{ROOT}\na\n\nb\n"),
        _body("carriage return line ending", f"log\r\n42\r\n{ROOT}\r\n"),
        _body("tab in origin", f"a\tlog\n42\n{ROOT}\n"),
        _body("empty body", ""),
    ]


def signed() -> list[dict[str, Any]]:
    from ledger.checkpoint import Checkpoint, sign_checkpoint
    from ledger.note import Signer

    signer = Signer.parse(LOG_SKEY)
    vkey = str(signer.verifier)
    root = base64.b64decode(ROOT)
    cp = Checkpoint("Log", 42, root, ("qctrace-anchor 0xabc",))
    note = sign_checkpoint(cp, signer)
    text_len = len(cp.to_text().encode())
    sig_line = note.decode().split("\n\n")[-1]
    b64 = sig_line.split(" ")[-1].strip()
    raw = base64.b64decode(b64)

    def case(desc: str, data: bytes, want_error: str | None, origin: str | None = "Log") -> dict[str, Any]:
        c: dict[str, Any] = {"desc": desc, "source": LOG_SOURCE, "note": data.decode(),
                             "verifiers": [vkey], "origin": origin, "want_error": want_error}
        if want_error is None:
            c["want"] = {"origin": cp.origin, "size": cp.size, "root_b64": ROOT, "extensions": list(cp.extensions)}
        return c

    def with_sig(raw_sig: bytes) -> bytes:
        return note.replace(b64.encode(), base64.b64encode(raw_sig))

    flipped_size = note.replace(b"\n42\n", b"\n43\n", 1)
    return [
        case("checkpoint signed with the Log key verifies", note, None),
        case("checkpoint verifies without an origin check", note, None, origin=None),
        case("one bit flipped in the origin", _flip(note, 0), "BadSignature"),
        case("tree size changed from 42 to 43", flipped_size, "BadSignature"),
        case("one bit flipped in the last text byte before the newline", _flip(note, text_len - 2), "BadSignature"),
        case("one bit flipped in the Ed25519 signature", with_sig(raw[:20] + _flip(raw[20:21], 0) + raw[21:]),
             "BadSignature"),
        case("signature truncated by one byte", with_sig(raw[:-1]), "BadSignature"),
        case("key ID changed: the signature is from an unknown key", with_sig(_flip(raw[:4], 3) + raw[4:]),
             "BadSignature"),
        case("em dash replaced by a hyphen", note.replace("— ".encode(), b"- "), "BadSignature"),
        case("blank line separator removed", note.replace(b"\n\n", b"\n"), "BadSignature"),
        case("trailing newline removed", note[:-1], "BadSignature"),
        case("signature base64 made non-canonical", note.replace(b64.encode(), _non_canonical(b64).encode()),
             "BadSignature"),
        case("wrong origin expected", note, "LedgerIntegrityError", origin="qctrace.example/other"),
    ]


def build() -> dict[str, Any]:
    return {
        "desc": "Checkpoint strictness and tamper cases made by gen_checkpoint_vectors.py; do not edit by hand",
        "bodies": bodies(),
        "signed": signed(),
    }


def render() -> str:
    return json.dumps(build(), indent=1, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
    OUT.write_text(render(), encoding="utf-8")

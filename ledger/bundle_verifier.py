#!/usr/bin/env python3
"""Offline verifier for a qctrace audit bundle (shipped inside the bundle as ``verify_bundle.py``).

It needs Python 3.11+ and the ``cryptography`` package, nothing else: no qctrace, no network. It
re-implements the few formats it checks (C2SP signed notes with Ed25519, tlog checkpoints, RFC 9162
Merkle proofs, the qctrace hash chain) from their specs, so an auditor can read the whole of what
they are trusting in one sitting instead of trusting the software that wrote the bundle.

    python verify_bundle.py [BUNDLE_DIR_OR_ZIP] [--trusted-key VKEY ...]

Prints one line per check and a verdict. Exit 0: every check passed; 1: the first failure, naming
the file, checkpoint or event and what is wrong; 2: bad usage.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import json
import re
import sys
import zipfile
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path, PurePosixPath

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

FORMAT = "qctrace-audit-bundle/1"
ANCHOR_PREFIX = b"qctrace-anchor/1\n"  # what an anchor transaction carries before the checkpoint text
GENESIS = bytes(32)  # the chain hash "before" event #0


class Failed(Exception):
    """A check failed; the message names where and what."""


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def leaf_hash(body: bytes) -> bytes:  # RFC 9162: 0x00 marks a leaf, so it can never pass for a node
    return sha256(b"\x00" + body)


def node_hash(left: bytes, right: bytes) -> bytes:
    return sha256(b"\x01" + left + right)


def b64(text: str, where: str) -> bytes:
    """Canonical standard base64 only, so one value has one spelling."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raw = None
    if raw is None or base64.b64encode(raw).decode() != text:
        raise Failed(f"{where}: {text[:20]!r}… is not canonical base64")
    return raw


def unhex(text: object, where: str) -> bytes:
    if not isinstance(text, str) or not re.fullmatch(r"[0-9a-f]{64}", text):
        raise Failed(f"{where}: {str(text)[:20]!r} is not a 64-digit lowercase hex SHA-256")
    return bytes.fromhex(text)


# ---------------------------------------------------------------- C2SP signed notes and checkpoints

class Key:
    """A verifier key string ``name+hexid+base64(0x01||ed25519 public key)``."""

    def __init__(self, vkey: str) -> None:
        parts = vkey.strip().split("+", 2)
        if len(parts) != 3:
            raise Failed(f"key {vkey!r}: want name+keyid+base64key")
        self.name, hex_id, material = parts
        raw = b64(material, f"key {vkey!r}")
        if len(raw) != 33 or raw[0] != 0x01:
            raise Failed(f"key {vkey!r}: not an Ed25519 key (type byte 0x01 + 32 bytes)")
        self.pub = raw[1:]
        self.id = sha256(self.name.encode() + b"\n\x01" + self.pub)[:4]  # C2SP key ID
        if hex_id != self.id.hex():
            raise Failed(f"key {vkey!r}: key ID {hex_id} does not match the key ({self.id.hex()}): damaged copy")
        self.label = f"{self.name}+{hex_id}"


def open_note(note: bytes, keys: list[Key], where: str) -> str:
    """The note's text, if a trusted key signed it. One bad signature from a trusted key fails the note."""
    try:
        msg = note.decode("utf-8")
    except UnicodeDecodeError:
        raise Failed(f"{where}: not UTF-8 text") from None
    split = msg.rfind("\n\n")
    if split < 0 or not msg.endswith("\n"):
        raise Failed(f"{where}: not a signed note (no blank line before the signature lines)")
    text, lines = msg[: split + 1], msg[split + 2 : -1].split("\n")
    signed_by, seen = [], []
    for n, line in enumerate(lines, start=1):
        if not line.startswith("— "):
            raise Failed(f"{where}: signature line {n} does not start with an em dash and a space")
        name, _, sig = line[2:].partition(" ")
        raw = b64(sig, f"{where}: signature line {n}")
        seen.append(f"{name}+{raw[:4].hex()}")
        for k in keys:
            if k.name == name and k.id == raw[:4]:
                try:
                    Ed25519PublicKey.from_public_bytes(k.pub).verify(raw[4:], text.encode())
                except InvalidSignature:
                    raise Failed(f"{where}: the signature by {k.label} does not verify: the checkpoint text or"
                                 " its signature was changed after signing") from None
                signed_by.append(k.label)
    if not signed_by:
        raise Failed(f"{where}: not signed by a trusted key (signed by {', '.join(seen) or 'nobody'}; trusted:"
                     f" {', '.join(k.label for k in keys)})")
    return text


def parse_checkpoint(text: str, where: str) -> tuple[str, int, bytes]:
    """tlog-checkpoint body: origin, decimal size, base64 root, then optional extension lines."""
    lines = text[:-1].split("\n")
    if len(lines) < 3 or not lines[0] or not re.fullmatch(r"0|[1-9][0-9]{0,19}", lines[1]):
        raise Failed(f"{where}: signed text is not a checkpoint (origin, size, root hash lines)")
    root = b64(lines[2], f"{where}: root hash")
    if len(root) != 32:
        raise Failed(f"{where}: root hash is {len(root)} bytes, not 32")
    return lines[0], int(lines[1]), root


# ---------------------------------------------------------------- RFC 9162 §2.1.3.2 and §2.1.4.2

def verify_inclusion(leaf: bytes, index: int, size: int, path: list[bytes], root: bytes, where: str) -> None:
    if not 0 <= index < size:
        raise Failed(f"{where}: index {index} is not inside a tree of size {size}")
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0:
            raise Failed(f"{where}: inclusion proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0 or r != root:
        raise Failed(f"{where}: the inclusion proof does not lead to the signed root of tree size {size}"
                     f" (got {r.hex()[:16]}…, signed {root.hex()[:16]}…): the event or its proof was changed")


def verify_consistency(m: int, n: int, root_m: bytes, root_n: bytes, path: list[bytes], where: str) -> None:
    if not 0 < m <= n:
        raise Failed(f"{where}: sizes {m} -> {n} are not 0 < old <= new: the log shrank")
    if m == n:
        if path or root_m != root_n:
            raise Failed(f"{where}: two different roots for the same size {m}: the log forked")
        return
    if not path:
        raise Failed(f"{where}: empty consistency proof")
    if m & (m - 1) == 0:  # the old tree is a perfect subtree: its own root starts the path
        path = [root_m, *path]
    fn, sn = m - 1, n - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise Failed(f"{where}: consistency proof is too long")
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0 or fr != root_m or sr != root_n:
        raise Failed(f"{where}: the consistency proof does not rebuild both signed roots: the log was rewritten"
                     f" below size {m}, or a checkpoint or the proof was changed")


# ---------------------------------------------------------------- the bundle

class Bundle:
    """Members of a bundle directory or zip; only files the manifest lists (and hashes) can be read."""

    def __init__(self, path: Path) -> None:
        self.zip = zipfile.ZipFile(path) if path.is_file() else None
        self.dir = path
        self.manifest = json.loads(self._raw("manifest.json"))
        if not isinstance(self.manifest, dict) or self.manifest.get("format") != FORMAT:
            raise Failed(f"manifest.json: not a {FORMAT} manifest; use the verifier that came with this bundle")

    def _raw(self, name: str) -> bytes:
        p = PurePosixPath(name)
        if p.is_absolute() or ".." in p.parts:
            raise Failed(f"manifest.json: member name {name!r} points outside the bundle")
        try:
            return self.zip.read(name) if self.zip else (self.dir / p).read_bytes()
        except (KeyError, OSError):
            raise Failed(f"{name}: missing from the bundle") from None

    def read(self, name: str) -> bytes:
        if name not in self.manifest["files"]:
            raise Failed(f"{name}: not listed in manifest.json, so it cannot be checked")
        return self._raw(name)


def verify(bundle: Bundle, trusted: list[str], out: list[str]) -> None:
    def ok(check: str, msg: str) -> None:
        out.append(f"OK    {check:<12} {msg}")
        print(out[-1])

    m = bundle.manifest
    for name, want in m["files"].items():
        got = hashlib.sha256(bundle._raw(name)).hexdigest()
        if got != want:
            raise Failed(f"{name}: SHA-256 is {got[:16]}…, manifest.json says {want[:16]}…: the file was changed"
                         " or damaged after the bundle was made")
    ok("manifest", f"{len(m['files'])} files match their SHA-256 ({m['kind']} bundle of {m['origin']!r},"
       f" made {m['created']})")

    if trusted:
        keys = [Key(k) for k in trusted]
        ok("keys", f"trusting {', '.join(k.label for k in keys)} (given on the command line)")
    else:
        keys = [Key(k) for k in bundle.read("keys.txt").decode().split("\n") if k.strip()]
        ok("keys", f"trusting the bundle's own keys.txt: {', '.join(k.label for k in keys)}")
        print("WARNING      keys.txt came with the bundle, so this run only shows the bundle agrees with itself;"
              " pass --trusted-key with the key you received from the ledger's operator out of band")

    roots: dict[int, bytes] = {}
    texts: dict[int, str] = {}
    for size in m["checkpoints"]:
        name = f"checkpoints/{size:012d}.note"
        texts[size] = open_note(bundle.read(name), keys, name)
        origin, got_size, roots[size] = parse_checkpoint(texts[size], name)
        if origin != m["origin"] or got_size != size:
            raise Failed(f"{name}: signed for log {origin!r} size {got_size}, not {m['origin']!r} size {size}")
        ok("checkpoint", f"size {size}: signature verifies, root {roots[size].hex()[:16]}…")
    if not roots:
        raise Failed("manifest.json: the bundle holds no signed checkpoint, so nothing in it is proven")

    proofs = {(p["old"], p["new"]): p["proof"] for p in json.loads(bundle.read("consistency.json"))}
    sizes = sorted(roots)
    for a, b in pairwise(sizes):
        if a == 0:
            continue  # every log extends the empty one; there is nothing to prove
        where = f"consistency.json {a} -> {b}"
        if (a, b) not in proofs:
            raise Failed(f"{where}: proof missing")
        verify_consistency(a, b, roots[a], roots[b], [unhex(h, where) for h in proofs[a, b]], where)
        ok("consistency", f"checkpoint {b} only appends to checkpoint {a}")

    lines = bundle.read("events.jsonl").decode("utf-8").splitlines()
    if m["kind"] == "full":
        verify_full(lines, roots, ok)
    else:
        size = m["proof_size"]
        if size not in roots:
            raise Failed(f"manifest.json: proofs are against checkpoint size {size}, which is not in the bundle")
        for n, line in enumerate(lines, start=1):
            ev = json.loads(line)
            where = f"events.jsonl line {n} (event #{ev['idx']})"
            if ev["inclusion"]["size"] != size:
                raise Failed(f"{where}: proof is for tree size {ev['inclusion']['size']}, not {size}")
            path = [unhex(h, where) for h in ev["inclusion"]["path"]]
            verify_inclusion(leaf_hash(ev["body"].encode("utf-8")), ev["idx"], size, path, roots[size], where)
        ok("events", f"{len(lines)} events of lot {m['lot']!r} are in signed checkpoint {size} (inclusion proofs)")
        if m["unproven"]:
            print(f"NOTE         events {m['unproven']} of the trace are newer than checkpoint {size} and are not in"
                  " this bundle; ask for a bundle after the next checkpoint")

    for a in json.loads(bundle.read("anchors.json")):
        size, r = a["size"], a["receipt"]
        where = f"anchors.json size {size}"
        if size not in roots:
            raise Failed(f"{where}: no signed checkpoint of that size in the bundle")
        if r["payload_sha256"] != hashlib.sha256(ANCHOR_PREFIX + texts[size].encode()).hexdigest():
            raise Failed(f"{where}: the receipt's payload hash is not that of checkpoint {size}")
        ok("anchor", f"size {size}: receipt matches the checkpoint; NOT CHECKED OFFLINE: look up tx {r['tx_hash']}"
           f" (chain {r['chain_id']}, block {r['block_number']}) and check its input hashes to {r['payload_sha256']}")


def verify_full(lines: list[str], roots: dict[int, bytes], ok: Callable[[str, str], None]) -> None:
    """Every event: chain recomputed from genesis, Merkle root rebuilt and compared at every checkpoint size."""
    prev, stack, n = GENESIS, [], 0  # stack: (height, hash) of the perfect subtrees, left to right
    for n, line in enumerate(lines, start=1):
        ev = json.loads(line)
        where = f"events.jsonl line {n} (event #{ev['idx']})"
        if ev["idx"] != n - 1:
            raise Failed(f"{where}: expected event #{n - 1} here: events were deleted, inserted or reordered")
        body = ev["body"].encode("utf-8")
        prev = sha256(prev + body)
        if prev.hex() != ev["hash"]:
            raise Failed(f"{where}: chain hash recomputes to {prev.hex()[:16]}…, the bundle says"
                         f" {ev['hash'][:16]}…: this event's body was changed")
        height, node = 0, leaf_hash(body)
        while stack and stack[-1][0] == height:
            node, height = node_hash(stack.pop()[1], node), height + 1
        stack.append((height, node))
        if n in roots:
            check_root(n, stack, roots[n])
    total = len(lines)
    if 0 in roots:
        check_root(0, [], roots[0])
    if max(roots) > total:
        raise Failed(f"checkpoints/{max(roots):012d}.note: signed for {max(roots)} events but events.jsonl holds"
                     f" {total}: events #{total}..#{max(roots) - 1} were removed (rolled back or truncated)")
    ok("events", f"{total} events: hash chain recomputed, head {prev.hex()[:16]}…")
    ok("merkle", f"root recomputed from the events equals every signed checkpoint ({len(roots)})")
    if total > max(roots):
        span = f"#{max(roots)}" + (f"..#{total - 1}" if total - 1 > max(roots) else "")
        print(f"NOTE         event(s) {span} are newer than the latest checkpoint: chained, but no signature covers"
              " them yet")


def check_root(size: int, stack: list[tuple[int, bytes]], signed: bytes) -> None:
    root = sha256(b"")  # the empty tree
    if stack:
        root = stack[-1][1]
        for _, left in reversed(stack[:-1]):
            root = node_hash(left, root)
    if root != signed:
        raise Failed(f"checkpoints/{size:012d}.note: the Merkle root of the first {size} events is"
                     f" {root.hex()[:16]}…, the checkpoint signed {signed.hex()[:16]}…: events before it changed")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Verify a qctrace audit bundle offline.")
    ap.add_argument("bundle", nargs="?", type=Path, default=Path(__file__).resolve().parent,
                    help="bundle directory or zip (default: the directory holding this script)")
    ap.add_argument("--trusted-key", action="append", default=[], metavar="VKEY",
                    help="a verifier key string you received out of band; repeat for several (default: keys.txt)")
    args = ap.parse_args(argv)
    out: list[str] = []
    try:
        verify(Bundle(args.bundle), args.trusted_key, out)
    except Failed as e:
        print(f"FAIL  {e}\nVERDICT: FAILED after {len(out)} passing checks; do not rely on this bundle")
        return 1
    except (ValueError, KeyError, TypeError, AttributeError, zipfile.BadZipFile) as e:  # malformed JSON or fields
        print(f"FAIL  the bundle is malformed ({type(e).__name__}: {e}); it was damaged or hand-edited")
        return 1
    print(f"VERDICT: PASSED, all {len(out)} checks" + ("" if args.trusted_key else " (against the bundle's own keys)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

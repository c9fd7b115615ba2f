"""Audit bundles verify offline with only the shipped verifier, and every kind of tampering fails it by name."""

from __future__ import annotations

import ast
import base64
import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from ledger import events as ev
from ledger import merkle
from ledger.bundle import VERIFIER_SOURCE, write_bundle
from ledger.keys import init_keys, load_signer
from ledger.note import Signer
from ledger.publish import ANCHOR_PREFIX, make_checkpoint
from ledger.store import Ledger
from qctrace.errors import LedgerError

ORIGIN = "example.com/qctrace-ledger"
GTIN = "0614141.107346"
RAW = "0614141.200001"
T0 = 1_790_000_000_000_000_000
MIN = 60_000_000_000


def _events_before_first_checkpoint() -> list[dict]:
    return [
        ev.input_received("FLOUR7", RAW, "millco", "plant", T0, material="flour"),
        ev.lot_produced("L1", GTIN, "plant", "line1", T0 + MIN, inputs=[ev.lot_class("FLOUR7", RAW)],
                        equipment=["plant/line1/oven"]),
        ev.lot_produced("L2", GTIN, "plant", "line2", T0 + 2 * MIN),  # another lot, not in L1's trace
        ev.qc_result("L1", GTIN, "plant", "line1", T0 + 3 * MIN, readings=1200, flagged=0),
    ]


def _events_after() -> list[dict]:
    return [
        ev.lot_packed("L1", GTIN, "S1", "plant", T0 + 4 * MIN),
        ev.shipment_moved("S1", "truck", "truck7", T0 + 5 * MIN, previous="plant"),
        ev.qc_result("L2", GTIN, "plant", "line2", T0 + 6 * MIN, readings=900, flagged=3),
        ev.shipment_moved("S1", "store", "shop3", T0 + 7 * MIN, previous="truck7"),
        ev.lot_delivered("L1", GTIN, "S1", "grocer", "shop3", T0 + 8 * MIN),
    ]


@pytest.fixture
def plant(tmp_path: Path) -> dict:
    """A ledger with checkpoints at sizes 4 and 9, the second anchored, and the verifier key."""
    key_dir, cp_dir = tmp_path / "keys", tmp_path / "checkpoints"
    vkey = init_keys(key_dir, ORIGIN)
    signer = load_signer(key_dir)
    led = Ledger(tmp_path / "ledger.db")
    led.append_many(_events_before_first_checkpoint())
    make_checkpoint(led, signer, cp_dir)
    led.append_many(_events_after())
    size, note = make_checkpoint(led, signer, cp_dir)
    text = note.decode().split("\n\n")[0] + "\n"
    led.add_anchor(size, {"chain_id": 1337, "tx_hash": "0x" + "ab" * 32, "block_number": 7,
                          "block_hash": "0x" + "cd" * 32, "sender": "0x" + "12" * 20,
                          "payload_sha256": hashlib.sha256(ANCHOR_PREFIX + text.encode()).hexdigest()})
    yield {"led": led, "vkey": vkey, "signer": signer, "cp_dir": cp_dir, "tmp": tmp_path}
    led.close()


def _extract(zip_path: Path) -> Path:
    dest = zip_path.with_suffix("")
    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(dest)
    return dest


def _verify(bundle_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-I", "verify_bundle.py", *args], cwd=bundle_dir,
                          capture_output=True, text=True, timeout=60)


def _full(plant: dict) -> Path:
    write_bundle(plant["led"], plant["tmp"] / "full.zip", [plant["vkey"]], checkpoint_dir=plant["cp_dir"])
    return _extract(plant["tmp"] / "full.zip")


def _lot(plant: dict) -> Path:
    write_bundle(plant["led"], plant["tmp"] / "lot.zip", [plant["vkey"]], lot="L1", checkpoint_dir=plant["cp_dir"])
    return _extract(plant["tmp"] / "lot.zip")


def _rehash(bundle_dir: Path) -> None:
    """Rewrite the manifest's hashes, as a forger would: it is not signed, so deeper checks must catch the change."""
    path = bundle_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["files"] = {n: hashlib.sha256((bundle_dir / n).read_bytes()).hexdigest() for n in manifest["files"]}
    path.write_text(json.dumps(manifest))


def _edit_lines(path: Path, edit) -> None:
    lines = path.read_text().splitlines()
    path.write_text("".join(x + "\n" for x in edit(lines)))


def _assert_fails(result: subprocess.CompletedProcess, *words: str) -> None:
    assert result.returncode == 1, result.stdout + result.stderr
    fail = [x for x in result.stdout.splitlines() if x.startswith("FAIL")]
    assert fail, result.stdout
    for w in words:
        assert w in fail[0], f"{w!r} not in {fail[0]!r}"


# ---------------------------------------------------------------- bundles that verify


def test_full_bundle_verifies_offline(plant):
    summary = write_bundle(plant["led"], plant["tmp"] / "full.zip", [plant["vkey"]], checkpoint_dir=plant["cp_dir"])
    assert (summary.kind, summary.events, summary.checkpoints, summary.anchors) == ("full", 9, [4, 9], 1)
    r = _verify(_extract(summary.path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "VERDICT: PASSED" in r.stdout
    assert "WARNING" in r.stdout and "--trusted-key" in r.stdout  # own keys: says an auditor should bring theirs
    assert "NOT CHECKED OFFLINE" in r.stdout and "0x" + "ab" * 32 in r.stdout


def test_lot_bundle_holds_only_the_trace_and_verifies(plant):
    summary = write_bundle(plant["led"], plant["tmp"] / "lot.zip", [plant["vkey"]], lot="L1")
    d = _extract(summary.path)
    idx = [json.loads(x)["idx"] for x in (d / "events.jsonl").read_text().splitlines()]
    assert idx == [0, 1, 3, 4, 5, 7, 8]  # L2's events (#2, #6) are not in L1's genealogy
    r = _verify(d, "--trusted-key", plant["vkey"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "WARNING" not in r.stdout and "inclusion proofs" in r.stdout


def test_bundle_carries_exact_stored_bytes(plant):
    d = _full(plant)
    stored = {e.idx: e.body for e in plant["led"].events()}
    for line in (d / "events.jsonl").read_text().splitlines():
        rec = json.loads(line)
        assert rec["body"].encode("utf-8") == stored[rec["idx"]]


def test_verifier_reads_the_zip_directly(plant):
    d = _full(plant)
    r = _verify(d, str(plant["tmp"] / "full.zip"))
    assert r.returncode == 0, r.stdout + r.stderr


def test_trace_events_newer_than_the_checkpoint_are_left_out_and_named(plant):
    held = plant["led"].append(ev.lot_held([ev.lot_class("L1", GTIN)], "qa", "swab", T0 + 9 * MIN))
    summary = write_bundle(plant["led"], plant["tmp"] / "lot.zip", [plant["vkey"]], lot="L1")
    assert summary.unproven == [held.idx] and summary.proof_size == 9
    r = _verify(_extract(summary.path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"events [{held.idx}]" in r.stdout


def test_no_checkpoint_means_no_bundle(tmp_path):
    vkey = init_keys(tmp_path / "keys", ORIGIN)
    with Ledger(tmp_path / "l.db") as led:
        led.append_many(_events_before_first_checkpoint())
        with pytest.raises(LedgerError, match="no signed checkpoint"):
            write_bundle(led, tmp_path / "b.zip", [vkey])
    assert not (tmp_path / "b.zip").exists()


def test_checkpoint_from_a_key_not_given_is_refused_at_write(plant):
    other = str(Signer.generate(ORIGIN).verifier)
    with pytest.raises(LedgerError, match="trusted key"):
        write_bundle(plant["led"], plant["tmp"] / "b.zip", [other])


def test_verifier_imports_only_stdlib_and_cryptography():
    tree = ast.parse(VERIFIER_SOURCE.read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative import in the standalone verifier"
            roots.add(node.module.split(".")[0])
    assert roots - sys.stdlib_module_names - {"cryptography"} == set()


def test_verifier_merkle_agrees_with_the_ledger_implementation():
    bv = _load_verifier_module()
    leaves = [merkle.leaf_hash(bytes([i])) for i in range(13)]
    sub = merkle.subtree_of(leaves)
    for n in range(1, 14):
        root = merkle.root_of(leaves[:n])
        for i in range(n):
            bv.verify_inclusion(leaves[i], i, n, merkle.inclusion_proof(i, n, sub), root, "t")
        for m in range(1, n + 1):
            bv.verify_consistency(m, n, merkle.root_of(leaves[:m]), root, merkle.consistency_proof(m, n, sub), "t")
    with pytest.raises(bv.Failed):
        bv.verify_inclusion(leaves[2], 3, 13, merkle.inclusion_proof(3, 13, sub), merkle.root_of(leaves), "t")


def _load_verifier_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("verify_bundle", VERIFIER_SOURCE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ---------------------------------------------------------------- tampering


def _change_body(lines: list[str], idx: int) -> list[str]:
    out = []
    for x in lines:
        rec = json.loads(x)
        if rec["idx"] == idx:
            rec["body"] = rec["body"].replace('"readings":1200', '"readings":1201')
            assert rec["body"] != json.loads(x)["body"]
            x = json.dumps(rec)
        out.append(x)
    return out


def test_changed_event_body_fails_the_chain_in_a_full_bundle(plant):
    d = _full(plant)
    _edit_lines(d / "events.jsonl", lambda lines: _change_body(lines, 3))
    _rehash(d)
    _assert_fails(_verify(d), "event #3", "chain hash")


def test_changed_event_body_fails_its_inclusion_proof_in_a_lot_bundle(plant):
    d = _lot(plant)
    _edit_lines(d / "events.jsonl", lambda lines: _change_body(lines, 3))
    _rehash(d)
    _assert_fails(_verify(d), "event #3", "inclusion proof")


def test_deleted_event_line_fails(plant):
    d = _full(plant)
    _edit_lines(d / "events.jsonl", lambda lines: lines[:2] + lines[3:])
    _rehash(d)
    _assert_fails(_verify(d), "expected event #2", "deleted")


def test_truncated_events_are_a_rollback(plant):
    d = _full(plant)
    _edit_lines(d / "events.jsonl", lambda lines: lines[:-1])
    _rehash(d)
    _assert_fails(_verify(d), "000000000009.note", "signed for 9 events", "rolled back")


def test_flipped_signature_byte_fails(plant):
    d = _full(plant)
    note = d / "checkpoints" / "000000000004.note"
    text, sig_line = note.read_text().rstrip("\n").rsplit("\n", 1)
    dash_name, b64 = sig_line.rsplit(" ", 1)
    raw = bytearray(base64.b64decode(b64))
    raw[20] ^= 0x01  # inside the Ed25519 signature, after the 4-byte key ID
    note.write_text(f"{text}\n{dash_name} {base64.b64encode(bytes(raw)).decode()}\n")
    _rehash(d)
    _assert_fails(_verify(d), "checkpoints/000000000004.note", "does not verify")


def test_wrong_inclusion_proof_hash_fails(plant):
    d = _lot(plant)

    def corrupt(lines: list[str]) -> list[str]:
        rec = json.loads(lines[1])
        h = rec["inclusion"]["path"][0]
        rec["inclusion"]["path"][0] = ("0" if h[0] != "0" else "1") + h[1:]
        return [lines[0], json.dumps(rec), *lines[2:]]

    _edit_lines(d / "events.jsonl", corrupt)
    _rehash(d)
    _assert_fails(_verify(d), "line 2 (event #1)", "inclusion proof does not lead")


def test_checkpoint_from_an_untrusted_key_fails_when_a_key_is_given(plant):
    d = _full(plant)
    other = str(Signer.generate(ORIGIN).verifier)
    _assert_fails(_verify(d, "--trusted-key", other), "checkpoints/000000000004.note", "not signed by a trusted key")


def test_forged_bundle_passes_its_own_keys_but_not_the_auditors(plant):
    """A forger re-signs with their own key and ships it in keys.txt: only --trusted-key catches that."""
    forger = Signer.generate(ORIGIN)
    d = _full(plant)
    from ledger.note import sign

    for note in (d / "checkpoints").glob("*.note"):
        note.write_bytes(sign(note.read_text().split("\n\n")[0] + "\n", forger))
    (d / "keys.txt").write_text(f"{forger.verifier}\n")
    _rehash(d)
    assert _verify(d).returncode == 0
    _assert_fails(_verify(d, "--trusted-key", plant["vkey"]), "not signed by a trusted key")


def test_manifest_hash_mismatch_fails(plant):
    d = _full(plant)
    _edit_lines(d / "events.jsonl", lambda lines: _change_body(lines, 3))
    _assert_fails(_verify(d), "events.jsonl", "SHA-256", "manifest.json says")

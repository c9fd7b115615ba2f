"""Checkpoints parse strictly, round-trip exactly, and a signed one opens only if untouched."""

from __future__ import annotations

import base64
import importlib.util
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.checkpoint import MAX_SIZE, Checkpoint, open_checkpoint, sign_checkpoint
from ledger.note import Signer, Verifier
from qctrace import errors
from qctrace.errors import BadSignature, LedgerIntegrityError

VECTOR_DIR = Path(__file__).parents[1] / "vectors" / "ledger"
PUBLISHED = json.loads((VECTOR_DIR / "checkpoint_published.json").read_text(encoding="utf-8"))
GENERATED = json.loads((VECTOR_DIR / "checkpoint_generated.json").read_text(encoding="utf-8"))
BODIES = PUBLISHED["bodies"] + GENERATED["bodies"]
SIGNED = PUBLISHED["signed"] + GENERATED["signed"]
ROOT = bytes(range(32))


def _check(cp: Checkpoint, want: dict) -> None:
    assert (cp.origin, cp.size, base64.b64encode(cp.root).decode(), list(cp.extensions)) == (
        want["origin"], want["size"], want["root_b64"], want["extensions"]
    )


@pytest.mark.parametrize("case", BODIES, ids=lambda c: c["desc"])
def test_checkpoint_bodies(case):
    if case["want_error"]:
        with pytest.raises(getattr(errors, case["want_error"])):
            Checkpoint.parse(case["text"])
        return
    cp = Checkpoint.parse(case["text"])
    _check(cp, case["want"])
    assert cp.to_text() == case["text"]


@pytest.mark.parametrize("case", SIGNED, ids=lambda c: c["desc"])
def test_signed_checkpoints(case):
    verifiers = [Verifier.parse(v) for v in case["verifiers"]]
    if case["want_error"]:
        with pytest.raises(getattr(errors, case["want_error"])):
            open_checkpoint(case["note"].encode(), verifiers, origin=case["origin"])
        return
    _check(open_checkpoint(case["note"].encode(), verifiers, origin=case["origin"]), case["want"])


def test_generated_vectors_match_their_generator():
    spec = importlib.util.spec_from_file_location("gen_checkpoint_vectors", VECTOR_DIR / "gen_checkpoint_vectors.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    assert gen.render() == (VECTOR_DIR / "checkpoint_generated.json").read_text(encoding="utf-8"), (
        "checkpoint_generated.json is stale: run .venv/bin/python tests/vectors/ledger/gen_checkpoint_vectors.py"
    )


_line = st.text(st.characters(min_codepoint=0x20, blacklist_characters="\x7f", blacklist_categories=("Cs",)),
                min_size=1, max_size=20)


@given(origin=_line, size=st.integers(0, MAX_SIZE), root=st.binary(min_size=32, max_size=32),
       extensions=st.lists(_line, max_size=3))
def test_any_valid_checkpoint_round_trips_through_its_text(origin, size, root, extensions):
    cp = Checkpoint(origin, size, root, tuple(extensions))
    assert Checkpoint.parse(cp.to_text()) == cp
    assert Checkpoint.parse(cp.to_text().encode()) == cp


@pytest.mark.parametrize(
    "args",
    [("", 1, ROOT), ("a\nb", 1, ROOT), ("log", -1, ROOT), ("log", MAX_SIZE + 1, ROOT), ("log", True, ROOT),
     ("log", 1, ROOT[:31]), ("log", 1, ROOT, ("",)), ("log", 1, ROOT, ("a\nb",))],
)
def test_a_checkpoint_that_could_not_be_written_cannot_be_built(args):
    with pytest.raises(ValueError, match="invalid checkpoint"):
        Checkpoint(*args)


def test_extensions_given_as_a_list_become_a_tuple_so_checkpoints_stay_hashable():
    cp = Checkpoint("log", 1, ROOT, ["x"])  # type: ignore[arg-type]
    assert cp.extensions == ("x",) and hash(cp)


def test_sign_then_open_returns_the_same_checkpoint():
    signer = Signer.generate("qctrace.example/plant1")
    cp = Checkpoint("qctrace.example/plant1", 7, ROOT)
    note = sign_checkpoint(cp, signer)
    assert note.startswith(cp.to_text().encode() + b"\n\xe2\x80\x94 qctrace.example/plant1 ")
    assert open_checkpoint(note, [signer.verifier], origin=cp.origin) == cp


def test_a_flipped_byte_in_a_signed_checkpoint_raises_bad_signature():
    signer = Signer.generate("log")
    note = bytearray(sign_checkpoint(Checkpoint("log", 7, ROOT), signer))
    for at in (0, 5, len(note) - 10):
        bad = bytearray(note)
        bad[at] ^= 0x04
        with pytest.raises(BadSignature):
            open_checkpoint(bytes(bad), [signer.verifier])


def test_wrong_origin_error_carries_expected_and_found_origins():
    signer = Signer.generate("log-a")
    note = sign_checkpoint(Checkpoint("log-a", 1, ROOT), signer)
    with pytest.raises(LedgerIntegrityError) as info:
        open_checkpoint(note, [signer.verifier], origin="log-b")
    assert not isinstance(info.value, BadSignature)
    assert (info.value.expected, info.value.computed) == ("log-b", "log-a")

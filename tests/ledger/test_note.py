"""Signed notes match Go's sumdb/note and the C2SP spec byte for byte, and every tampering raises."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from ledger.note import MAX_SIGNATURES, Signer, Verifier, key_id, open_note, sign
from qctrace import errors
from qctrace.errors import BadSignature, LedgerError

VECTORS = json.loads(
    (Path(__file__).parents[1] / "vectors" / "ledger" / "signed_note_published.json").read_text(encoding="utf-8")
)
KEYS = VECTORS["keys"]
PETER = next(k for k in KEYS if k["name"] == "PeterNeumann")
TEXT = "line one\nline two\n"


def _note_bytes(case: dict) -> bytes:
    return base64.b64decode(case["note_b64"]) if "note_b64" in case else case["note"].encode()


@pytest.mark.parametrize("k", KEYS, ids=lambda k: k["name"])
def test_published_verifier_keys_parse_to_their_name_and_id_and_print_back_unchanged(k):
    v = Verifier.parse(k["vkey"])
    assert v.name == k["name"]
    assert f"{v.key_id:08x}" == k["key_id"]
    assert key_id(v.name, v.public_key) == v.key_id
    assert str(v) == k["vkey"]


@pytest.mark.parametrize("k", [k for k in KEYS if "skey" in k], ids=lambda k: k["name"])
def test_published_private_keys_derive_their_published_verifier_key(k):
    s = Signer.parse(k["skey"])
    assert str(s.verifier) == k["vkey"]
    assert s.private_key_string() == k["skey"]


@pytest.mark.parametrize("case", VECTORS["bad_vkeys"], ids=lambda c: c["desc"])
def test_published_bad_verifier_keys_are_refused(case):
    with pytest.raises(getattr(errors, case["want_error"])):
        Verifier.parse(case["vkey"])


@pytest.mark.parametrize(("kind", "key"), [("vkey", PETER["vkey"]), ("skey", PETER["skey"])])
def test_every_truncation_and_single_character_change_of_a_key_string_is_refused(kind, key):
    parse = Verifier.parse if kind == "vkey" else Signer.parse
    mangled = {key[i:j] for i in range(len(key)) for j in range(i + 1, len(key) + 1)} - {key}
    mangled |= {key[:i] + chr(ord(key[i]) + 1) + key[i + 1 :] for i in range(len(key))}
    for bad in sorted(mangled):
        with pytest.raises(LedgerError):
            parse(bad)


def test_an_uppercase_key_id_is_refused_so_each_key_has_one_spelling():
    with pytest.raises(LedgerError, match="lowercase hex"):
        Verifier.parse(PETER["vkey"].replace("c74f20a3", "C74F20A3"))


def test_errors_about_private_keys_never_echo_the_secret():
    with pytest.raises(LedgerError) as info:
        Signer.parse(PETER["skey"][:-4])
    assert PETER["skey"][30:] not in str(info.value)
    assert PETER["skey"].split("+")[-1] not in repr(Signer.parse(PETER["skey"]))


@pytest.mark.parametrize("case", VECTORS["signing"], ids=lambda c: c["desc"])
def test_signing_reproduces_the_published_note_exactly(case):
    assert sign(case["text"], Signer.parse(case["skey"])) == case["want_note"].encode()


@pytest.mark.parametrize("case", VECTORS["open"], ids=lambda c: c["desc"])
def test_published_open_cases(case):
    verifiers = [Verifier.parse(v) for v in case["verifiers"]]
    if case["want_error"]:
        with pytest.raises(getattr(errors, case["want_error"]), match=case["match"]):
            open_note(_note_bytes(case), verifiers)
        return
    n = open_note(_note_bytes(case), verifiers)
    assert n.text == case["want_text"]
    assert [s.key_name for s in n.sigs] == case["want_sigs"]
    assert [s.key_name for s in n.unverified_sigs] == case["want_unverified"]


def test_open_returns_the_text_and_the_names_of_the_keys_that_verified():
    a, b, c = Signer.generate("a.example/log"), Signer.generate("b.example/witness"), Signer.generate("c.example")
    n = open_note(sign(TEXT, a, b, c), [a.verifier, c.verifier])
    assert n.text == TEXT
    assert n.names == ("a.example/log", "c.example")
    assert [s.name for s in n.unverified_sigs] == ["b.example/witness"]


def test_every_single_bit_flip_anywhere_in_a_note_raises_bad_signature():
    signer = Signer.generate("qctrace.example/plant1")
    note = sign(TEXT, signer)
    for i in range(len(note)):
        for bit in range(8):
            bad = bytearray(note)
            bad[i] ^= 1 << bit
            with pytest.raises(BadSignature):
                open_note(bytes(bad), [signer.verifier])


def test_a_signature_from_a_known_key_that_fails_rejects_the_note_even_if_another_verifies():
    good, bad = Signer.generate("good"), Signer.generate("bad")
    note = sign(TEXT, good, bad).decode()
    sig_b64 = note.rsplit(" ", 1)[1].strip()
    raw = bytearray(base64.b64decode(sig_b64))
    raw[10] ^= 0xFF
    tampered = note.replace(sig_b64, base64.b64encode(bytes(raw)).decode())
    with pytest.raises(BadSignature, match=r"invalid signature for key bad\+"):
        open_note(tampered, [good.verifier, bad.verifier])
    assert open_note(tampered, [good.verifier]).names == ("good",)


def test_a_key_with_the_right_name_but_another_id_is_ignored_as_unknown():
    old, new = Signer.generate("log"), Signer.generate("log")
    with pytest.raises(BadSignature, match="no signature from a trusted key"):
        open_note(sign(TEXT, old), [new.verifier])


def test_the_signature_limit_is_inclusive():
    signer = Signer.generate("log")
    line = sign(TEXT, signer).decode().split("\n\n")[-1]
    assert open_note(TEXT + "\n" + line * MAX_SIGNATURES, [signer.verifier]).names == ("log",)
    with pytest.raises(BadSignature, match="more than the limit"):
        open_note(TEXT + "\n" + line * (MAX_SIGNATURES + 1), [signer.verifier])


def test_text_with_blank_lines_is_split_at_the_last_blank_line():
    signer = Signer.generate("log")
    text = "a\n\nb\n\n"
    assert open_note(sign(text, signer), [signer.verifier]).text == text


@pytest.mark.parametrize(("text", "match"), [("no newline", "end in a newline"), ("tab\there\n", "control")])
def test_sign_refuses_text_that_could_not_be_opened(text, match):
    with pytest.raises(LedgerError, match=match):
        sign(text, Signer.generate("log"))


@pytest.mark.parametrize("name", ["", "a+b", "a b", "a\u00a0b", "tab\t"])
def test_invalid_key_names_are_refused(name):
    with pytest.raises(LedgerError, match="key name"):
        Signer.generate(name)


def test_two_different_trusted_keys_with_the_same_name_and_id_are_refused_as_ambiguous():
    a, b = Signer.generate("log").verifier, Signer.generate("log").verifier
    object.__setattr__(b, "key_id", a.key_id)  # a 32-bit ID collision, forced
    with pytest.raises(BadSignature, match="ambiguous key"):
        open_note(sign(TEXT, Signer.generate("other")), [a, b])


def test_the_same_trusted_key_listed_twice_is_not_ambiguous():
    s = Signer.generate("log")
    assert open_note(sign(TEXT, s), [s.verifier, Verifier.parse(str(s.verifier))]).names == ("log",)

"""The Merkle tree is byte-exact RFC 9162: published vectors pass, and any tampered proof raises."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.merkle import (
    EMPTY_ROOT,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root_of,
    subtree_of,
    verify_consistency,
    verify_inclusion,
)
from qctrace.errors import LedgerError, RootMismatch

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "ledger"


def _load(name: str) -> dict:
    return json.loads((VECTORS / name).read_text())


def _generator():
    spec = importlib.util.spec_from_file_location("gen_merkle_vectors", VECTORS / "gen_merkle_vectors.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _ids(cases: list[dict]) -> list[str]:
    return [c["desc"] for c in cases]


def _hx(hs: list[str]) -> list[bytes]:
    return [bytes.fromhex(h) for h in hs]


RFC = _load("merkle_rfc6962.json")
PUB_INCL = _load("merkle_published_inclusion.json")["cases"]
PUB_CONS = _load("merkle_published_consistency.json")["cases"]
OWN_INCL = _load("merkle_inclusion.json")
OWN_CONS = _load("merkle_consistency.json")


def _leaves(n: int) -> list[bytes]:
    return [leaf_hash(b"event %d" % i) for i in range(n)]


# ------------------------------------------------------------------ published values


@pytest.mark.parametrize("case", RFC["hashes"], ids=_ids(RFC["hashes"]))
def test_hashes_match_published_rfc6962_values(case):
    if case["fn"] == "empty_root":
        got = EMPTY_ROOT
    elif case["fn"] == "leaf_hash":
        got = leaf_hash(bytes.fromhex(case["entry"]))
    else:
        got = node_hash(bytes.fromhex(case["left"]), bytes.fromhex(case["right"]))
    assert got.hex() == case["want"]


def test_every_node_and_root_of_the_published_8_leaf_tree_matches():
    tree = RFC["tree"]
    leaves = [leaf_hash(bytes.fromhex(e)) for e in tree["entries"]]
    for height, level in enumerate(tree["nodes"]):
        for i, want in enumerate(level):
            assert root_of(leaves[i << height:(i + 1) << height]).hex() == want
    assert [root_of(leaves[:n]).hex() for n in range(len(leaves) + 1)] == tree["roots"]


def _valid_subtree(start: int, end: int) -> bool:
    """[start, end) is a node of some tree: start is a multiple of bit_ceil(end - start)."""
    n = end - start
    return start == 0 or n == 0 or start % (1 << (n - 1).bit_length()) == 0


def test_published_checksum_over_all_subtree_hashes_of_130_leaves():
    fold = next(f for f in RFC["folds"] if f["kind"] == "subtree_hashes")
    leaves = [leaf_hash(bytes([i])) for i in range(fold["max_end"])]
    h = hashlib.sha256()
    for end in range(fold["max_end"] + 1):
        for start in range(end + 1):
            if _valid_subtree(start, end):
                h.update(f"[{start}, {end}) {root_of(leaves[start:end]).hex()}\n".encode())
    assert h.hexdigest() == fold["want"]


def test_published_checksum_over_all_inclusion_proofs_in_130_leaves():
    fold = next(f for f in RFC["folds"] if f["kind"] == "subtree_inclusion_proofs")
    leaves = [leaf_hash(bytes([i])) for i in range(fold["max_end"])]
    h = hashlib.sha256()
    for end in range(fold["max_end"] + 1):
        for start in range(end + 1):
            if not _valid_subtree(start, end):
                continue
            sub = subtree_of(leaves[start:end])
            for index in range(start, end):
                proof = inclusion_proof(index - start, end - start, sub)
                h.update(f"{index} [{start}, {end}){''.join(' ' + p.hex() for p in proof)}\n".encode())
    assert h.hexdigest() == fold["want"]


@pytest.mark.parametrize("case", PUB_INCL, ids=_ids(PUB_INCL))
def test_published_inclusion_probes(case):
    args = (bytes.fromhex(case["leaf"]), case["index"], case["size"], _hx(case["proof"]), bytes.fromhex(case["root"]))
    if case["want_error"]:
        with pytest.raises(RootMismatch):
            verify_inclusion(*args)
    else:
        assert verify_inclusion(*args) is None


@pytest.mark.parametrize("case", PUB_CONS, ids=_ids(PUB_CONS))
def test_published_consistency_probes(case):
    args = (case["m"], case["n"], bytes.fromhex(case["root_m"]), bytes.fromhex(case["root_n"]), _hx(case["proof"]))
    if case["want_error"]:
        with pytest.raises(RootMismatch):
            verify_consistency(*args)
    else:
        assert verify_consistency(*args) is None


# ------------------------------------------------------------------ our golden vectors


def test_checked_in_vectors_are_what_the_generator_writes():
    gen = _generator()
    for name, doc in gen.documents(None).items():
        assert (VECTORS / name).read_text() == gen.render(doc), f"{name}: rerun gen_merkle_vectors.py"


@pytest.mark.parametrize("case", OWN_INCL["cases"], ids=_ids(OWN_INCL["cases"]))
def test_inclusion_vectors(case):
    leaf, proof, root = bytes.fromhex(case["leaf"]), _hx(case["proof"]), bytes.fromhex(case["root"])
    if case["want_error"]:
        with pytest.raises(RootMismatch):
            verify_inclusion(leaf, case["index"], case["size"], proof, root)
        return
    leaves = [leaf_hash(bytes.fromhex(e)) for e in OWN_INCL["entries"][: case["size"]]]
    assert root_of(leaves) == root
    assert inclusion_proof(case["index"], case["size"], subtree_of(leaves)) == proof
    verify_inclusion(leaf, case["index"], case["size"], proof, root)


@pytest.mark.parametrize("case", OWN_CONS["cases"], ids=_ids(OWN_CONS["cases"]))
def test_consistency_vectors(case):
    m, n, proof = case["m"], case["n"], _hx(case["proof"])
    root_m, root_n = bytes.fromhex(case["root_m"]), bytes.fromhex(case["root_n"])
    if case["want_error"]:
        with pytest.raises(RootMismatch):
            verify_consistency(m, n, root_m, root_n, proof)
        return
    leaves = [leaf_hash(bytes.fromhex(e)) for e in OWN_CONS["entries"][:n]]
    assert (root_of(leaves[:m]), root_of(leaves)) == (root_m, root_n)
    assert consistency_proof(m, n, subtree_of(leaves)) == proof
    verify_consistency(m, n, root_m, root_n, proof)


# ------------------------------------------------------------------ properties


@given(st.integers(0, 600))
def test_level_by_level_root_equals_the_recursive_rfc_definition(n):
    leaves = _leaves(n)
    assert root_of(leaves) == _generator().ref_mth(leaves)


@given(st.data())
def test_every_inclusion_proof_verifies_and_any_flipped_byte_raises(data):
    n = data.draw(st.integers(1, 300), label="size")
    i = data.draw(st.integers(0, n - 1), label="index")
    leaves = _leaves(n)
    root, proof = root_of(leaves), inclusion_proof(i, n, subtree_of(leaves))
    verify_inclusion(leaves[i], i, n, proof, root)
    # one flipped byte anywhere: in the proof, the leaf or the root
    blob = b"".join(proof) + leaves[i] + root
    pos = data.draw(st.integers(0, len(blob) - 1), label="byte")
    bit = data.draw(st.integers(0, 7), label="bit")
    bad = bytearray(blob)
    bad[pos] ^= 1 << bit
    parts = [bytes(bad[k:k + 32]) for k in range(0, len(bad), 32)]
    with pytest.raises(RootMismatch) as exc:
        verify_inclusion(parts[-2], i, n, parts[:-2], parts[-1])
    assert exc.value.index == i


@given(st.data())
def test_every_consistency_proof_verifies_and_any_flipped_byte_raises(data):
    n = data.draw(st.integers(1, 300), label="new size")
    m = data.draw(st.integers(1, n), label="old size")
    leaves = _leaves(n)
    root_m, root_n = root_of(leaves[:m]), root_of(leaves)
    proof = consistency_proof(m, n, subtree_of(leaves))
    verify_consistency(m, n, root_m, root_n, proof)
    blob = b"".join(proof) + root_m + root_n
    pos = data.draw(st.integers(0, len(blob) - 1), label="byte")
    bad = bytearray(blob)
    bad[pos] ^= 0x80
    parts = [bytes(bad[k:k + 32]) for k in range(0, len(bad), 32)]
    with pytest.raises(RootMismatch):
        verify_consistency(m, n, parts[-2], parts[-1], parts[:-2])


@given(st.data())
def test_a_proof_never_verifies_for_another_index_or_another_signed_size(data):
    """Another size is checked with that size's own root: a proof alone does not bind the size
    (leaf 0's proof in 3 leaves also fits a 4-leaf tree with that root), the signed pair does."""
    n = data.draw(st.integers(1, 70), label="size")
    i = data.draw(st.integers(0, n - 1), label="index")
    leaves = _leaves(140)
    proof = inclusion_proof(i, n, subtree_of(leaves[:n]))
    j = data.draw(st.integers(0, 139).filter(lambda j: j != i), label="other index")
    k = data.draw(st.integers(0, 140).filter(lambda k: k != n), label="other size")
    with pytest.raises(RootMismatch):
        verify_inclusion(leaves[i], j, n, proof, root_of(leaves[:n]))
    with pytest.raises(RootMismatch):
        verify_inclusion(leaves[i], i, k, proof, root_of(leaves[:k]))


# ------------------------------------------------------------------ errors say what and where


def test_a_mismatch_carries_expected_and_computed_roots():
    leaves = _leaves(5)
    proof = inclusion_proof(3, 5, subtree_of(leaves))
    wrong_root = root_of(leaves[:4])
    with pytest.raises(RootMismatch) as exc:
        verify_inclusion(leaves[3], 3, 5, proof, wrong_root)
    assert exc.value.index == 3
    assert exc.value.expected == wrong_root.hex()
    assert exc.value.computed == root_of(leaves).hex()
    assert "event #3" in str(exc.value)


@pytest.mark.parametrize(("m", "which"), [(4, "new root of size 9"), (5, "old root of size 5")])
def test_a_rewritten_history_is_reported_against_the_root_it_cannot_rebuild(m, which):
    """With a power-of-two old size the verifier's own old root seeds the proof, so the forgery
    surfaces at the new root; otherwise the proof's own copy of the old tree gives it away."""
    leaves, forged = _leaves(9), _leaves(9)
    forged[2] = leaf_hash(b"forged")
    proof = consistency_proof(m, 9, subtree_of(forged))
    with pytest.raises(RootMismatch, match=which) as exc:
        verify_consistency(m, 9, root_of(leaves[:m]), root_of(forged), proof)
    assert exc.value.expected in (root_of(leaves[:m]).hex(), root_of(forged).hex())
    assert exc.value.computed


def test_a_padded_proof_is_reported_as_the_wrong_length():
    leaves = _leaves(8)
    proof = inclusion_proof(0, 8, subtree_of(leaves))
    with pytest.raises(RootMismatch, match="has 4 hashes, needs 3"):
        verify_inclusion(leaves[0], 0, 8, [*proof, proof[0]], root_of(leaves))


@pytest.mark.parametrize(("index", "size"), [(0, 0), (3, 3), (-1, 4)])
def test_inclusion_proofs_are_refused_outside_the_tree(index, size):
    with pytest.raises(LedgerError, match="below the tree size"):
        inclusion_proof(index, size, subtree_of(_leaves(4)))


@pytest.mark.parametrize(("m", "n"), [(0, 0), (0, 3), (4, 3)])
def test_consistency_proofs_are_refused_for_meaningless_sizes(m, n):
    with pytest.raises(LedgerError, match="0 < old size <= new size"):
        consistency_proof(m, n, subtree_of(_leaves(4)))


def test_proofs_between_equal_sizes_are_empty_and_verify():
    leaves = _leaves(6)
    assert consistency_proof(6, 6, subtree_of(leaves)) == []
    verify_consistency(6, 6, root_of(leaves), root_of(leaves), [])
    assert inclusion_proof(0, 1, subtree_of(leaves)) == []
    verify_inclusion(leaves[0], 0, 1, [], leaves[0])

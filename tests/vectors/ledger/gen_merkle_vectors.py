"""Write the Merkle tree golden vectors in this directory; run from the repository root.

    .venv/bin/python tests/vectors/ledger/gen_merkle_vectors.py [--merkle-testdata DIR]

* ``merkle_rfc6962.json``: published RFC 6962 hash values, a published 8-leaf tree (every node and
  every root), and two published checksums over all subtree hashes and subtree inclusion proofs
  of a 130-leaf tree. The values are copied as data from transparency-dev/merkle (see SOURCES).
* ``merkle_published_inclusion.json`` / ``merkle_published_consistency.json``: that repository's
  proof probes (``testdata/inclusion``, ``testdata/consistency``), re-encoded from base64 to hex.
  Only rewritten when ``--merkle-testdata`` points at a checkout's ``testdata`` directory.
* ``merkle_inclusion.json`` / ``merkle_consistency.json``: our own cases around the sizes the node
  store cares about (powers of two, the 256-leaf stride), with bit flips, wrong sizes and wrong
  lengths. They come from the recursive RFC 9162 definitions below, written out independently of
  ``ledger/merkle.py`` so the two implementations check each other. ``want_error`` is decided by
  meaning, not by running a verifier: a case is valid only if it states a true fact about the tree.

Output is deterministic: re-running leaves the files unchanged (``tests/ledger/test_merkle.py``
checks that the checked-in files match this script).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
MERKLE_COMMIT = "417fb0c314750d94e53942e9f92e79b6d35915db"
UPSTREAM = "transparency-dev/merkle"


def _src(path: str) -> str:
    return f"{UPSTREAM} {path} @ {MERKLE_COMMIT}"


# --------------------------------------------------------------------------- published values (data)

# rfc6962/rfc6962_test.go TestRFC6962Hasher
HASHER_CASES = [
    {"desc": "RFC 6962 empty tree: SHA-256 of nothing", "fn": "empty_root",
     "want": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
    {"desc": "RFC 6962 leaf of the empty entry differs from the empty tree", "fn": "leaf_hash", "entry": "",
     "want": "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"},
    {"desc": "RFC 6962 leaf of 'L123456'", "fn": "leaf_hash", "entry": b"L123456".hex(),
     "want": "395aa064aa4c29f7010acfe3f25db9485bbd4b91897b6ad7ad547639252b4d56"},
    {"desc": "RFC 6962 node of children 'N123' and 'N456'", "fn": "node_hash", "left": b"N123".hex(),
     "right": b"N456".hex(), "want": "aa217fe888e47007fa15edab33c2b492a722cb106c64667fc2b044444de66bbb"},
]

# testonly/constants.go LeafInputs, NodeHashes (level, then index), RootHashes (by tree size)
TREE_ENTRIES = ["", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f"]
TREE_NODES = [
    ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
     "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
     "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
     "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7",
     "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
     "4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658",
     "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
     "46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1"],
    ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
     "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
     "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
     "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"],
    ["d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
     "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"],
    ["5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"],
]
TREE_ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]

# testonly/vectors_test.go: rolling SHA-256 over one text line per valid [start, end) subtree of the
# tree whose entry i is the single byte i, for end <= 130 (values published in the "Subtree Test
# Vectors" appendix of draft-ietf-plants-merkle-tree-certs).
FOLDS = [
    {"desc": "every valid subtree hash of the 130-entry tree", "kind": "subtree_hashes", "max_end": 130,
     "line": "[{start}, {end}) {hash}\\n",
     "want": "b82806ad4265bb151c1119c0f4db437bb4d1a1f887b3a7fba1cd4ebf552e3e81"},
    {"desc": "every inclusion proof in every valid subtree of the 130-entry tree", "kind": "subtree_inclusion_proofs",
     "max_end": 130, "line": "{index} [{start}, {end}) followed by ' <hex>' per proof hash, then \\n",
     "want": "ac2a8f989e44d99e399db448050ff5f19757df53cfb716aa81015d3955d8163f"},
]


# --------------------------------------------------------------------------- reference tree (RFC 9162 §2.1, recursive)

def _h(b: bytes) -> bytes:
    return hashlib.sha256(b).digest()


def ref_leaf(entry: bytes) -> bytes:
    return _h(b"\x00" + entry)


def _k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(leaves: list[bytes]) -> bytes:
    """MTH over leaf hashes, by the RFC's recursive definition."""
    n = len(leaves)
    if n == 0:
        return _h(b"")
    if n == 1:
        return leaves[0]
    k = _k(n)
    return _h(b"\x01" + ref_mth(leaves[:k]) + ref_mth(leaves[k:]))


def ref_path(m: int, leaves: list[bytes]) -> list[bytes]:
    n = len(leaves)
    if n <= 1:
        return []
    k = _k(n)
    if m < k:
        return [*ref_path(m, leaves[:k]), ref_mth(leaves[k:])]
    return [*ref_path(m - k, leaves[k:]), ref_mth(leaves[:k])]


def ref_subproof(m: int, leaves: list[bytes], b: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if b else [ref_mth(leaves)]
    k = _k(n)
    if m <= k:
        return [*ref_subproof(m, leaves[:k], b), ref_mth(leaves[k:])]
    return [*ref_subproof(m - k, leaves[k:], False), ref_mth(leaves[:k])]


def ref_proof(m: int, leaves: list[bytes]) -> list[bytes]:
    return ref_subproof(m, leaves, True)


# --------------------------------------------------------------------------- our cases

ENTRIES = [b"qctrace vector entry %d" % i for i in range(260)]
# Leaves past the entries written out give the true root of a doubled size. A case that changes a
# size also takes that size's true root: an inclusion proof does not bind the tree size by itself
# (leaf 0's proof in a tree of 3 also fits "a tree of 4 whose leaves 2..3 hash to leaf 2"), and
# it is the signed (size, root) pair together that a verifier checks.
LEAVES = [ref_leaf(b"qctrace vector entry %d" % i) for i in range(2 * len(ENTRIES) + 2)]
BOUNDARY = [31, 32, 33, 127, 128, 129, 255, 256, 257, 260]


def _root(size: int) -> bytes:
    return ref_mth(LEAVES[:size]) if 0 <= size <= len(LEAVES) else bytes(32)


def _flip(h: bytes, byte: int, bit: int) -> bytes:
    b = bytearray(h)
    b[byte % len(b)] ^= 1 << bit
    return bytes(b)


def _hx(hs: list[bytes]) -> list[str]:
    return [h.hex() for h in hs]


def _inclusion_case(desc: str, index: int, size: int, leaf: bytes, proof: list[bytes], root: bytes) -> dict[str, Any]:
    true = (0 <= index < size <= len(ENTRIES) and leaf == LEAVES[index]
            and proof == ref_path(index, LEAVES[:size]) and root == ref_mth(LEAVES[:size]))
    return {"desc": desc, "index": index, "size": size, "leaf": leaf.hex(), "proof": _hx(proof),
            "root": root.hex(), "want_error": not true}


def inclusion_cases() -> list[dict[str, Any]]:
    base = [(i, n) for n in range(1, 18) for i in range(n)]
    base += [(i, n) for n in BOUNDARY for i in sorted({0, 1, n // 2, n - 2, n - 1})]
    mutate = {(i, n) for i, n in base if n in (1, 2, 3, 5, 8, 9, 17, 33, 257) and i in (0, n // 2, n - 1)}
    cases = []
    for i, n in base:
        leaf, proof, root = LEAVES[i], ref_path(i, LEAVES[:n]), ref_mth(LEAVES[:n])
        cases.append(_inclusion_case(f"happy path: event {i} of {n}", i, n, leaf, proof, root))
        if (i, n) not in mutate:
            continue
        at = f"event {i} of {n}"
        for j in range(len(proof)):
            bad = [*proof]
            bad[j] = _flip(bad[j], 7 * j + 3, j % 8)
            cases.append(_inclusion_case(f"{at}: proof[{j}] has one bit flipped", i, n, leaf, bad, root))
        cases += [
            _inclusion_case(f"{at}: leaf has one bit flipped", i, n, _flip(leaf, 0, 0), proof, root),
            _inclusion_case(f"{at}: root has one bit flipped", i, n, leaf, proof, _flip(root, 31, 7)),
            _inclusion_case(f"{at}: index + 1", i + 1, n, leaf, proof, root),
            _inclusion_case(f"{at}: index - 1", i - 1, n, leaf, proof, root) if i else None,
            _inclusion_case(f"{at}: index XOR 2", i ^ 2, n, leaf, proof, root),
            _inclusion_case(f"{at}: size + 1", i, n + 1, leaf, proof, _root(n + 1)),
            _inclusion_case(f"{at}: size - 1", i, n - 1, leaf, proof, _root(n - 1)),
            _inclusion_case(f"{at}: size * 2", i, n * 2, leaf, proof, _root(n * 2)),
            _inclusion_case(f"{at}: size // 2", i, n // 2, leaf, proof, _root(n // 2)),
            _inclusion_case(f"{at}: index equals size", n, n, LEAVES[n], proof, root),
            _inclusion_case(f"{at}: proof with a hash appended", i, n, leaf, [*proof, root], root),
            _inclusion_case(f"{at}: proof with a hash prepended", i, n, leaf, [leaf, *proof], root),
            _inclusion_case(f"{at}: proof truncated by one hash", i, n, leaf, proof[:-1], root) if proof else None,
            _inclusion_case(f"{at}: proof in reverse order", i, n, leaf, proof[::-1], root)
            if len(proof) > 1 and proof != proof[::-1] else None,
            _inclusion_case(f"{at}: proof hash cut to 31 bytes", i, n, leaf, [proof[0][:31], *proof[1:]], root)
            if proof else None,
            _inclusion_case(f"{at}: the entry given instead of its leaf hash", i, n, ENTRIES[i], proof, root),
        ]
    return [c for c in cases if c is not None]


def _consistency_case(desc: str, m: int, n: int, root_m: bytes, root_n: bytes, proof: list[bytes]) -> dict[str, Any]:
    true = (0 < m <= n <= len(ENTRIES) and root_m == ref_mth(LEAVES[:m]) and root_n == ref_mth(LEAVES[:n])
            and proof == ref_proof(m, LEAVES[:n]))
    return {"desc": desc, "m": m, "n": n, "root_m": root_m.hex(), "root_n": root_n.hex(), "proof": _hx(proof),
            "want_error": not true}


def consistency_cases() -> list[dict[str, Any]]:
    base = [(m, n) for n in range(1, 18) for m in range(1, n + 1)]
    base += [(m, n) for n in BOUNDARY for m in sorted({1, 2, 3, n // 2, 128, n - 1, n}) if m <= n]
    mutate = {(m, n) for m, n in base if n in (2, 3, 5, 8, 9, 17, 257) and m in (1, n // 2, n - 1, n)}
    cases = []
    for m, n in base:
        rm, rn, proof = ref_mth(LEAVES[:m]), ref_mth(LEAVES[:n]), ref_proof(m, LEAVES[:n])
        cases.append(_consistency_case(f"happy path: {m} -> {n}", m, n, rm, rn, proof))
        if (m, n) not in mutate:
            continue
        at = f"{m} -> {n}"
        for j in range(len(proof)):
            bad = [*proof]
            bad[j] = _flip(bad[j], 5 * j + 1, (j + 3) % 8)
            cases.append(_consistency_case(f"{at}: proof[{j}] has one bit flipped", m, n, rm, rn, bad))
        cases += [
            _consistency_case(f"{at}: old root has one bit flipped", m, n, _flip(rm, 0, 1), rn, proof),
            _consistency_case(f"{at}: new root has one bit flipped", m, n, rm, _flip(rn, 16, 4), proof),
            _consistency_case(f"{at}: roots swapped", m, n, rn, rm, proof) if rm != rn else None,
            _consistency_case(f"{at}: old size + 1", m + 1, n, _root(m + 1), rn, proof),
            _consistency_case(f"{at}: old size - 1", m - 1, n, _root(m - 1), rn, proof),
            _consistency_case(f"{at}: new size + 1", m, n + 1, rm, _root(n + 1), proof),
            _consistency_case(f"{at}: new size - 1", m, n - 1, rm, _root(n - 1), proof),
            _consistency_case(f"{at}: new size * 2", m, n * 2, rm, _root(n * 2), proof),
            _consistency_case(f"{at}: old size 0", 0, n, rm, rn, proof),
            _consistency_case(f"{at}: sizes swapped", n, m, rn, rm, proof) if m != n else None,
            _consistency_case(f"{at}: proof with a hash appended", m, n, rm, rn, [*proof, rm]),
            _consistency_case(f"{at}: proof with a hash prepended", m, n, rm, rn, [rm, *proof]),
            _consistency_case(f"{at}: proof truncated by one hash", m, n, rm, rn, proof[:-1]) if proof else None,
            _consistency_case(f"{at}: proof hash cut to 31 bytes", m, n, rm, rn, [proof[0][:31], *proof[1:]])
            if proof else None,
        ]
    return [c for c in cases if c is not None]


# --------------------------------------------------------------------------- upstream probes

def _b64hex(s: str | None) -> str:
    return base64.b64decode(s or "").hex()


def published(testdata: Path, kind: str) -> list[dict[str, Any]]:
    """Re-encode upstream probe files: base64 -> hex, their field names -> ours, path kept as source."""
    cases = []
    for f in sorted((testdata / kind).rglob("*.json")):
        d = json.loads(f.read_text())
        rel = f"testdata/{f.relative_to(testdata).as_posix()}"
        common = {"desc": f"{rel.removeprefix('testdata/')}: {d['desc']}", "source": _src(rel)}
        proof = [_b64hex(p) for p in d["proof"] or []]
        if kind == "inclusion":
            case = {"index": d["leafIdx"], "size": d["treeSize"], "leaf": _b64hex(d["leafHash"]), "proof": proof,
                    "root": _b64hex(d["root"])}
        else:
            case = {"m": d["size1"], "n": d["size2"], "root_m": _b64hex(d["root1"]), "root_n": _b64hex(d["root2"]),
                    "proof": proof}
        cases.append({**common, **case, "want_error": bool(d["wantErr"])})
    return cases


# --------------------------------------------------------------------------- files

def documents(testdata: Path | None) -> dict[str, dict[str, Any]]:
    """Every vector file this script owns, by name (upstream probes only when ``testdata`` is given)."""
    entries_hex = [e.hex() for e in ENTRIES]  # happy cases only ever use these
    docs: dict[str, dict[str, Any]] = {
        "merkle_rfc6962.json": {
            "desc": "Published RFC 6962 / RFC 9162 Merkle tree values: hashes, an 8-leaf tree, subtree checksums",
            "source": {"hashes": _src("rfc6962/rfc6962_test.go"), "tree": _src("testonly/constants.go"),
                       "folds": _src("testonly/vectors_test.go")},
            "hashes": HASHER_CASES,
            "tree": {"desc": "entries (hex), node hashes by level then index, root hashes by tree size 0..8",
                     "entries": TREE_ENTRIES, "nodes": TREE_NODES, "roots": TREE_ROOTS},
            "folds": FOLDS,
        },
        "merkle_inclusion.json": {
            "desc": "RFC 9162 inclusion proofs over the entries below, with tampered variants",
            "source": "tests/vectors/ledger/gen_merkle_vectors.py (recursive RFC 9162 reference)",
            "entries": entries_hex,
            "cases": inclusion_cases(),
        },
        "merkle_consistency.json": {
            "desc": "RFC 9162 consistency proofs over the entries below, with tampered variants",
            "source": "tests/vectors/ledger/gen_merkle_vectors.py (recursive RFC 9162 reference)",
            "entries": entries_hex,
            "cases": consistency_cases(),
        },
    }
    if testdata is not None:
        for kind in ("inclusion", "consistency"):
            docs[f"merkle_published_{kind}.json"] = {
                "desc": f"transparency-dev/merkle {kind} proof probes (RFC 6962 hasher), hex-encoded",
                "source": _src(f"testdata/{kind}"),
                "license": "Apache-2.0",
                "cases": published(testdata, kind),
            }
    return docs


def render(doc: dict[str, Any]) -> str:
    """Indented JSON, except one line per case and per list of hashes: reviewable diffs, small files."""
    def dump(x: Any, indent: str, key: str | None = None) -> str:
        if isinstance(x, dict) and key != "cases" and not ({"desc", "want_error"} <= x.keys()):
            inner = indent + " "
            body = ",\n".join(f"{inner}{json.dumps(k)}: {dump(v, inner, k)}" for k, v in x.items())
            return "{\n" + body + "\n" + indent + "}"
        if isinstance(x, list) and x and isinstance(x[0], dict | list):
            inner = indent + " "
            return "[\n" + ",\n".join(inner + dump(v, inner) for v in x) + "\n" + indent + "]"
        return json.dumps(x)
    return dump(doc, "") + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--merkle-testdata", type=Path, help="testdata/ of a transparency-dev/merkle checkout"
                    f" at {MERKLE_COMMIT[:12]}, to refresh the published probes")
    args = ap.parse_args(argv)
    for name, doc in documents(args.merkle_testdata).items():
        (HERE / name).write_text(render(doc))
        n = len(doc.get("cases", ())) or len(doc.get("hashes", ()))
        sys.stderr.write(f"wrote {name} ({n} cases)\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

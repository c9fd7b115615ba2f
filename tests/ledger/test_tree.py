"""The SQLite node store serves the same roots and proofs as the in-memory tree, at any append pattern."""

from __future__ import annotations

import multiprocessing
import random
import sqlite3
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.merkle import (
    EMPTY_ROOT,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    root_of,
    subtree_of,
    verify_consistency,
    verify_inclusion,
)
from ledger.tree import MerkleNodes
from qctrace.errors import LedgerError, RootMismatch


class _Stride2(MerkleNodes):
    """Stores from height 2 up, so small trees exercise stored nodes on many levels."""

    STRIDE = 2


_EVENTS = "CREATE TABLE IF NOT EXISTS events (idx INTEGER PRIMARY KEY, leaf BLOB NOT NULL);"


def _open(path: Path, cls: type[MerkleNodes] = MerkleNodes) -> tuple[sqlite3.Connection, MerkleNodes]:
    db = sqlite3.connect(path, isolation_level=None, timeout=30)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(_EVENTS + cls.SCHEMA)
    return db, cls(db)


def _append(db: sqlite3.Connection, tree: MerkleNodes, new: list[bytes]) -> int:
    """What the ledger does: insert the leaves and extend the tree in one write transaction."""
    cur = db.cursor()
    cur.execute("BEGIN IMMEDIATE")
    try:
        row = cur.execute("SELECT max(idx) FROM events").fetchone()
        first = 0 if row[0] is None else row[0] + 1
        cur.executemany("INSERT INTO events VALUES (?, ?)", [(first + i, h) for i, h in enumerate(new)])
        tree.extend(cur, first, new)
        cur.execute("COMMIT")
    except BaseException:
        cur.execute("ROLLBACK")
        raise
    return first


def _leaves(n: int, tag: str = "e") -> list[bytes]:
    return [leaf_hash(f"{tag}{i}".encode()) for i in range(n)]


def _all_leaves(db: sqlite3.Connection) -> list[bytes]:
    return [bytes(r[0]) for r in db.execute("SELECT leaf FROM events ORDER BY idx")]


def _stored(db: sqlite3.Connection) -> set[tuple[int, int]]:
    return {(h, i) for h, i in db.execute("SELECT height, idx FROM merkle_nodes")}


def _perfect_nodes(n: int, stride: int) -> set[tuple[int, int]]:
    return {(h, i) for h in range(stride, n.bit_length()) for i in range(n >> h)}


def _filled(tmp_path: Path, n: int, cls: type[MerkleNodes] = MerkleNodes, batch: int = 1000):
    db, tree = _open(tmp_path / "l.sqlite", cls)
    leaves = _leaves(n)
    for a in range(0, n, batch):
        _append(db, tree, leaves[a:a + batch])
    return db, tree, leaves


# ------------------------------------------------------------------ same answers as the pure tree


@pytest.mark.parametrize("cls", [MerkleNodes, _Stride2], ids=["stride8", "stride2"])
@given(batches=st.lists(st.integers(1, 90), min_size=1, max_size=12), data=st.data())
def test_any_append_pattern_gives_the_in_memory_roots_and_proofs(tmp_path_factory, cls, batches, data):
    db, tree = _open(tmp_path_factory.mktemp("t") / "l.sqlite", cls)
    leaves = _leaves(sum(batches))
    at = 0
    for b in batches:
        _append(db, tree, leaves[at:at + b])
        at += b
    n = len(leaves)
    assert _stored(db) == _perfect_nodes(n, cls.STRIDE)
    assert [tree.root(k) for k in range(n + 1)] == [root_of(leaves[:k]) for k in range(n + 1)]
    sub = subtree_of(leaves)
    size = data.draw(st.integers(1, n), label="size")
    i = data.draw(st.integers(0, size - 1), label="index")
    m = data.draw(st.integers(1, size), label="old size")
    incl, cons = tree.inclusion_proof(i, size), tree.consistency_proof(m, size)
    assert incl == inclusion_proof(i, size, sub)
    assert cons == consistency_proof(m, size, sub)
    verify_inclusion(leaves[i], i, size, incl, root_of(leaves[:size]))
    verify_consistency(m, size, root_of(leaves[:m]), root_of(leaves[:size]), cons)
    a = data.draw(st.integers(0, n), label="a")
    b = data.draw(st.integers(a, n), label="b")
    assert tree.subtree(a, b) == root_of(leaves[a:b])
    assert tree.check(leaves) == root_of(leaves)
    db.close()


@given(data=st.data())
def test_a_store_proof_with_one_flipped_byte_raises(tmp_path_factory, data):
    db, tree, leaves = _filled(tmp_path_factory.mktemp("t"), 600, batch=97)
    size = data.draw(st.integers(1, 600), label="size")
    i = data.draw(st.integers(0, size - 1), label="index")
    m = data.draw(st.integers(1, size), label="old size")
    root = tree.root(size)
    for kind, proof in (("inclusion", tree.inclusion_proof(i, size)), ("consistency", tree.consistency_proof(m, size))):
        if not proof:
            continue
        j = data.draw(st.integers(0, len(proof) - 1), label=f"{kind} hash")
        pos = data.draw(st.integers(0, 31), label=f"{kind} byte")
        bad = [*proof]
        bad[j] = bad[j][:pos] + bytes([bad[j][pos] ^ 0x01]) + bad[j][pos + 1:]
        with pytest.raises(RootMismatch):
            if kind == "inclusion":
                verify_inclusion(leaves[i], i, size, bad, root)
            else:
                verify_consistency(m, size, tree.root(m), root, bad)
    db.close()


def _writer(path: str, worker: int, seed: int) -> None:
    db, tree = _open(Path(path))
    rng = random.Random(seed)
    for k in range(25):
        _append(db, tree, _leaves(rng.choice([1, 3, 40, 255, 256, 300]), f"w{worker}-{k}-"))
    db.close()


def test_processes_appending_to_one_file_keep_the_tree_whole(tmp_path):
    path = tmp_path / "l.sqlite"
    _open(path)[0].close()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(path), w, w)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    db, tree = _open(path)
    leaves = _all_leaves(db)
    assert tree.check(leaves) == root_of(leaves) == tree.root(len(leaves))
    assert _stored(db) == _perfect_nodes(len(leaves), MerkleNodes.STRIDE)


def test_single_event_appends_build_the_same_nodes_as_one_batch(tmp_path):
    one_db, _, _ = _filled(tmp_path, 700, _Stride2, batch=1)
    (tmp_path / "b").mkdir()
    batch_db, _, _ = _filled(tmp_path / "b", 700, _Stride2, batch=700)
    q = "SELECT height, idx, hash FROM merkle_nodes ORDER BY height, idx"
    assert one_db.execute(q).fetchall() == batch_db.execute(q).fetchall()


# ------------------------------------------------------------------ cheap reads


def test_a_proof_reads_a_few_rows_not_the_ledger(tmp_path):
    db, tree, leaves = _filled(tmp_path, 70_000)
    statements: list[str] = []
    db.set_trace_callback(statements.append)
    proof = tree.inclusion_proof(12_345, 69_999)
    cons = tree.consistency_proof(33_333, 69_999)
    db.set_trace_callback(None)
    assert len(statements) <= 40  # ~one per stored node plus one per 256-leaf block
    verify_inclusion(leaves[12_345], 12_345, 69_999, proof, root_of(leaves[:69_999]))
    verify_consistency(33_333, 69_999, root_of(leaves[:33_333]), root_of(leaves[:69_999]), cons)


def test_appends_that_complete_no_block_touch_nothing_but_their_leaves(tmp_path):
    db, tree, _ = _filled(tmp_path, 300)
    statements: list[str] = []
    db.set_trace_callback(statements.append)
    _append(db, tree, _leaves(5, "x"))
    db.set_trace_callback(None)
    assert not [s for s in statements if "merkle_nodes" in s]


def test_a_read_only_connection_serves_proofs(tmp_path):
    db, _, leaves = _filled(tmp_path, 1000)
    db.close()
    ro = sqlite3.connect((tmp_path / "l.sqlite").resolve().as_uri() + "?mode=ro", uri=True)
    tree = MerkleNodes(ro)
    assert tree.root(1000) == root_of(leaves)
    verify_inclusion(leaves[999], 999, 1000, tree.inclusion_proof(999, 1000), root_of(leaves))


def test_an_empty_ledger_has_the_empty_root(tmp_path):
    _, tree = _open(tmp_path / "l.sqlite")
    assert tree.root(0) == EMPTY_ROOT == tree.check([])


# ------------------------------------------------------------------ refusals


def test_proofs_past_the_end_of_the_ledger_are_refused(tmp_path):
    _, tree, _ = _filled(tmp_path, 600)
    with pytest.raises(LedgerError, match="not all in the ledger"):
        tree.root(601)
    with pytest.raises(LedgerError, match="not stored"):
        tree.root(1024)
    with pytest.raises(LedgerError):
        tree.inclusion_proof(10, 700)
    with pytest.raises(LedgerError):
        tree.consistency_proof(0, 600)
    with pytest.raises(LedgerError):
        tree.subtree(5, 4)


# ------------------------------------------------------------------ check() names the bad node


def test_check_names_the_first_edited_node_and_its_events(tmp_path):
    db, tree, leaves = _filled(tmp_path, 2000)
    db.execute("UPDATE merkle_nodes SET hash = zeroblob(32) WHERE height = 8 AND idx IN (2, 5)")
    db.execute("UPDATE merkle_nodes SET hash = zeroblob(32) WHERE height = 9 AND idx = 3")
    with pytest.raises(RootMismatch, match=r"height 8 #2 over events \[512, 768\) has a different hash") as exc:
        tree.check(leaves)
    assert exc.value.index == 512
    assert exc.value.expected == bytes(32).hex()
    assert exc.value.computed == root_of(leaves[512:768]).hex()


def test_check_reports_a_deleted_node_as_missing(tmp_path):
    db, tree, leaves = _filled(tmp_path, 2000)
    db.execute("DELETE FROM merkle_nodes WHERE height = 10 AND idx = 0")
    with pytest.raises(RootMismatch, match=r"height 10 #0 over events \[0, 1024\) is missing") as exc:
        tree.check(leaves)
    assert exc.value.index == 0


def test_check_reports_nodes_no_event_supports(tmp_path):
    db, tree, leaves = _filled(tmp_path, 2000)
    db.execute("INSERT INTO merkle_nodes VALUES (8, 7, zeroblob(32))")  # would cover [1792, 2048)
    with pytest.raises(RootMismatch, match=r"height 8 #7 over events \[1792, 2048\) is beyond"):
        tree.check(leaves)
    db.execute("DELETE FROM merkle_nodes WHERE height = 8 AND idx = 7")
    db.execute("INSERT INTO merkle_nodes VALUES (12, 0, zeroblob(32))")
    with pytest.raises(RootMismatch, match="height 12 #0"):
        tree.check(leaves)


def test_check_fails_when_the_leaves_given_differ_from_the_tree(tmp_path):
    _, tree, leaves = _filled(tmp_path, 2000)
    edited = [*leaves]
    edited[1500] = leaf_hash(b"edited")
    with pytest.raises(RootMismatch, match=r"height 8 #5 over events \[1280, 1536\)"):
        tree.check(edited)
    with pytest.raises(RootMismatch, match="beyond"):
        tree.check(leaves[:1000])  # the ledger lost events the tree still covers


def test_rebuild_repairs_an_edited_node_table(tmp_path):
    db, tree, leaves = _filled(tmp_path, 3000)
    db.execute("UPDATE merkle_nodes SET hash = zeroblob(32) WHERE height = 9 AND idx = 1")
    db.execute("DELETE FROM merkle_nodes WHERE height = 11")
    cur = db.cursor()
    cur.execute("BEGIN IMMEDIATE")
    tree.rebuild(cur, _all_leaves(db))
    cur.execute("COMMIT")
    assert tree.check(leaves) == root_of(leaves)

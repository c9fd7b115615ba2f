"""What an auditor and a compliance officer see: verify catches every kind of tampering and names
it; trace and recall follow the genealogy; exports are complete. Through the CLI, on real files."""

from __future__ import annotations

import json
import shutil
import sqlite3

import pytest
from click.testing import CliRunner

from ledger import Ledger
from ledger import events as E
from qctrace import ledger_ops
from qctrace.cli import cli
from qctrace.config import load_config
from qctrace.errors import AnchorMismatch, BadSignature, DataFileChanged, RolledBack, RootMismatch

T0 = 1_793_599_200 * 10**9
G, GI = "0614141.107346", "0614141.200018"


def _genealogy(lot_no: int, t: int) -> list[dict]:
    lot, ship = f"L-{lot_no:04d}", f"SHP-{lot_no:04d}"
    return [E.lot_produced(lot, G, "plant1", "line1", t, inputs=[E.lot_class("TP-0001", GI)], product="Sauce"),
            E.qc_result(lot, G, "plant1", "line1", t + 60 * 10**9, 480, 0),
            E.lot_packed(lot, G, ship, "plant1", t + 61 * 10**9),
            E.shipment_moved(ship, "truck", "reefer-7", t + 62 * 10**9, previous="plant1"),
            E.shipment_moved(ship, "store", f"store-{lot_no}", t + 63 * 10**9, previous="reefer-7"),
            E.lot_delivered(lot, G, ship, f"Shop {lot_no}", f"store-{lot_no}", t + 63 * 10**9)]


@pytest.fixture
def cfg(tmp_path):
    c = load_config(None).with_overrides(data_dir=tmp_path / "data")
    ledger_ops.ensure_keys(c)
    with Ledger(ledger_ops.ledger_path(c.data_dir)) as led:
        led.append(E.input_received("TP-0001", GI, "Valle Verde Farms", "plant1", T0, material="Tomato paste"))
        led.append_many(_genealogy(1, T0 + 10**9))
        led.append_many(_genealogy(2, T0 + 2 * 10**9))
        led.append(E.lot_produced("L-0099", G, "plant1", "line1", T0 + 3 * 10**9))  # not from TP-0001
    return c


def _cli(cfg, *args):
    return CliRunner().invoke(cli, [*args, "--data-dir", str(cfg.data_dir)], catch_exceptions=False)


def test_a_fresh_ledger_with_checkpoints_and_an_anchor_verifies(cfg):
    assert _cli(cfg, "checkpoint").exit_code == 0
    res = _cli(cfg, "anchor")
    assert res.exit_code == 0 and "anchored: chain" in res.output
    res = _cli(cfg, "verify")
    assert res.exit_code == 0, res.output
    assert "chain      OK  14 events" in res.output and "checkpoints OK 1 signed, latest at size 14" in res.output
    assert "anchors    OK  1 on chain" in res.output


def test_a_ledger_rolled_back_below_a_signed_checkpoint_is_detected(cfg):
    path = ledger_ops.ledger_path(cfg.data_dir)
    ledger_ops.checkpoint(cfg)
    saved = path.read_bytes()
    with Ledger(path) as led:
        led.append_many(_genealogy(3, T0 + 9 * 10**9))
    ledger_ops.checkpoint(cfg)
    for suffix in ("-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)
    path.write_bytes(saved)  # the old file, checkpoint table and all: only the files beside it remember
    with pytest.raises(RolledBack, match=r"signed for 20 events, but the ledger holds only 14"):
        ledger_ops.verify(cfg)
    res = _cli(cfg, "verify")
    assert res.exit_code == 3 and "rolled back" in res.output


def test_an_auditor_who_keeps_a_checkpoint_catches_a_rewritten_history(cfg, tmp_path):
    ledger_ops.checkpoint(cfg)
    kept = tmp_path / "kept.note"
    kept.write_bytes(next(ledger_ops.checkpoint_dir(cfg.data_dir).glob("*.note")).read_bytes())
    # the operator rebuilds the ledger with one event changed, re-signs, and deletes the old checkpoints
    path = ledger_ops.ledger_path(cfg.data_dir)
    with Ledger(path, readonly=True) as led:
        bodies = [json.loads(e.body) for e in led.events()]
    qc = next(b for b in bodies if E.kind_of(b) == E.QC_RESULT)["qctrace:qc"]
    qc["flagged"] += 7
    shutil.rmtree(ledger_ops.checkpoint_dir(cfg.data_dir))
    for p in path.parent.glob("ledger.sqlite*"):
        p.unlink()
    with Ledger(path) as led:
        led.append_many(bodies)
    ledger_ops.checkpoint(cfg)
    assert _cli(cfg, "verify").exit_code == 0  # consistent with itself...
    res = _cli(cfg, "verify", "--checkpoint", str(kept))  # ...but not with what the auditor kept
    assert res.exit_code == 3 and "checkpoint #1 given" in res.output and "not the ledger's root" in res.output
    with pytest.raises(RootMismatch):
        ledger_ops.verify(cfg, extra_checkpoints=[kept.read_bytes()])


def test_a_checkpoint_signed_by_a_key_the_auditor_does_not_trust_fails(cfg, tmp_path):
    from ledger.keys import init_keys

    ledger_ops.checkpoint(cfg)
    other = init_keys(tmp_path / "auditor-was-given", "qctrace.local/ledger")
    with pytest.raises(BadSignature):
        ledger_ops.verify(cfg, trusted_keys=[other])
    own = ledger_ops.keys_dir(cfg.data_dir) / "verifier.pub"
    assert ledger_ops.verify(cfg, trusted_keys=[own.read_text().strip()]).checkpoints == 1


def test_a_changed_anchor_receipt_is_detected(cfg):
    ledger_ops.anchor(cfg)
    receipt = next(ledger_ops.checkpoint_dir(cfg.data_dir).glob("*.anchor.json"))
    data = json.loads(receipt.read_text())
    data["block_number"] += 1
    receipt.write_text(json.dumps(data))
    with pytest.raises(AnchorMismatch):
        ledger_ops.verify(cfg)
    assert ledger_ops.verify(cfg, anchors=False).skipped == ["1 anchors not checked (--no-anchors)"]


def test_a_changed_parquet_file_is_detected(cfg):
    readings = cfg.data_dir / "readings" / "site=p" / "f.parquet"
    readings.parent.mkdir(parents=True)
    readings.write_bytes(b"PAR1 pretend parquet PAR1")
    import hashlib

    with Ledger(ledger_ops.ledger_path(cfg.data_dir)) as led:
        led.append(E.data_committed("site=p/f.parquet", hashlib.sha256(readings.read_bytes()).hexdigest(), 3, T0))
    assert ledger_ops.verify(cfg).data_files == 1
    readings.write_bytes(b"PAR1 pretend parquet PAR2")
    with pytest.raises(DataFileChanged, match="changed after it was committed"):
        ledger_ops.verify(cfg)
    readings.unlink()
    with pytest.raises(DataFileChanged, match="is missing"):
        ledger_ops.verify(cfg)


def test_trace_goes_backward_to_suppliers_and_forward_to_customers(cfg):
    r = ledger_ops.trace_lot(cfg, "L-0001")
    assert r.backward.scope() == {"lots": ["TP-0001"], "locations": ["plant1/line1"],
                                  "parties": ["Valle Verde Farms"]}
    assert r.forward.scope() == {"shipments": ["SHP-0001"], "locations": ["reefer-7", "store-1"],
                                 "parties": ["Shop 1"]}
    res = _cli(cfg, "trace", "TP-0001", "--forward")
    assert res.exit_code == 0
    assert "L-0001, L-0002" in res.output and "Shop 1, Shop 2" in res.output and "L-0099" not in res.output


def test_a_trace_proves_its_events_against_the_signed_checkpoint(cfg):
    assert "not proven" in ledger_ops.trace_lot(cfg, "L-0001").proof
    ledger_ops.checkpoint(cfg)
    with Ledger(ledger_ops.ledger_path(cfg.data_dir)) as led:
        led.append(E.qc_result("L-0001", G, "plant1", "line1", T0 + 10**12, 480, 2))
    proof = ledger_ops.trace_lot(cfg, "L-0001").proof
    assert "included in the signed checkpoint at size 14" in proof and "1 newer events await" in proof
    with sqlite3.connect(ledger_ops.ledger_path(cfg.data_dir)) as db:  # a leaf no longer in the signed tree
        db.execute("UPDATE events SET leaf = zeroblob(32) WHERE idx = 1")
    with pytest.raises(RootMismatch):
        ledger_ops.trace_lot(cfg, "L-0001")


def test_an_unknown_lot_is_a_clear_error(cfg):
    res = _cli(cfg, "trace", "NOPE")
    assert res.exit_code == 1 and "lot 'NOPE': no event" in res.output


def test_recall_of_an_input_lot_reaches_every_downstream_lot_and_customer(cfg, tmp_path):
    res = _cli(cfg, "recall", "TP-0001", "--by", "qa.lead", "--reason", "supplier notice 17", "--out",
               str(tmp_path / "recall"))
    assert res.exit_code == 0, res.output
    scope = json.loads((tmp_path / "recall" / "scope.json").read_text())["scope"]
    assert scope["lots"] == ["L-0001", "L-0002", "TP-0001"]
    assert scope["parties"] == ["Shop 1", "Shop 2"] and scope["shipments"] == ["SHP-0001", "SHP-0002"]
    with Ledger(ledger_ops.ledger_path(cfg.data_dir), readonly=True) as led:
        ev = next(led.events(kind="lot_recalled")).as_dict()
        assert ev["qctrace:by"] == "qa.lead" and ev["disposition"] == "recalled"
        assert sorted(E.lots_in(ev)) == ["L-0001", "L-0002", "TP-0001"]
        assert [e.lot for e in led.events(lot="L-0002", kind="lot_recalled")]  # findable from every lot in it
    rows = (tmp_path / "recall" / "fsma204.csv").read_text(encoding="utf-8-sig").splitlines()
    assert len(rows) > 4 and not any("L-0099" in r for r in rows)
    assert (tmp_path / "recall" / "fsma204.xlsx").stat().st_size > 0
    assert ledger_ops.verify(cfg).checkpoints == 1  # the recall is signed into a checkpoint


def test_a_changed_merkle_node_is_detected(cfg):
    with Ledger(ledger_ops.ledger_path(cfg.data_dir)) as led:
        led.append_many([E.lot_produced(f"X-{i:04d}", G, "p", "l", T0 + i) for i in range(300)])
    with sqlite3.connect(ledger_ops.ledger_path(cfg.data_dir)) as db:
        assert db.execute("UPDATE merkle_nodes SET hash = zeroblob(32)").rowcount >= 1
    with pytest.raises(RootMismatch):
        ledger_ops.verify(cfg)


def test_a_ledger_copied_without_its_keys_asks_for_the_trusted_key(cfg, tmp_path):
    ledger_ops.checkpoint(cfg)
    elsewhere = load_config(None).with_overrides(data_dir=tmp_path / "copy")
    (tmp_path / "copy").mkdir()
    shutil.copy(ledger_ops.ledger_path(cfg.data_dir), ledger_ops.ledger_path(elsewhere.data_dir))
    with pytest.raises(BadSignature, match="Pass --trusted-key"):
        ledger_ops.verify(elsewhere)
    key = (ledger_ops.keys_dir(cfg.data_dir) / "verifier.pub").read_text().strip()
    assert ledger_ops.verify(elsewhere, trusted_keys=[key]).checkpoints == 1

"""Anchors land on a real (in-process) EVM chain, survive the process that made them, and any
change to the checkpoint, the receipt or the chain is reported as AnchorMismatch."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import ledger.anchor as anchor_mod
import ledger.local_chain as local_chain_mod
from ledger.anchor import DEV_ADDRESS, AnchorReceipt, open_chain, verify_anchor
from qctrace.errors import AnchorError, AnchorMismatch, ConfigError, LedgerIntegrityError
from tests.ledger.evm_node import FUNDED_ADDRESS, FUNDED_KEY, EvmNode

REPO = Path(anchor_mod.__file__).resolve().parents[1]


def _payload(n: int) -> bytes:
    body = f"qctrace/ledger\n{n}\nroot {n:064x}\n— signed checkpoint —\n"
    return b"qctrace-anchor/1\n" + body.encode()


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "chain"


@pytest.fixture
def rpc_node() -> Iterator[str]:
    """A JSON-RPC server on loopback fronting a fresh eth-tester chain: the HTTP path, for real."""
    node = EvmNode().start()
    try:
        yield node.url
    finally:
        node.stop()


def _run(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env,
                          timeout=60, check=False)


def test_anchor_then_verify_in_the_same_process(state_dir):
    with open_chain(None, state_dir) as chain:
        receipt = chain.anchor(_payload(1))
        chain.verify(receipt, _payload(1))
        verify_anchor(receipt, _payload(1), chain)
    assert receipt.sender == DEV_ADDRESS
    assert receipt.block_number == 1
    assert receipt.chain_id == chain.chain_id


def test_receipt_round_trips_through_json():
    receipt = AnchorReceipt(1, "0x" + "ab" * 32, 7, "0x" + "cd" * 32, DEV_ADDRESS, "ef" * 32)
    assert AnchorReceipt.from_dict(json.loads(json.dumps(receipt.to_dict()))) == receipt


@pytest.mark.parametrize("change", [
    {"tx_hash": "0x1234"}, {"block_number": -1}, {"block_number": True}, {"sender": "me"}, {"extra": 1},
])
def test_malformed_stored_receipt_is_an_integrity_error(change):
    good = AnchorReceipt(1, "0x" + "ab" * 32, 7, "0x" + "cd" * 32, DEV_ADDRESS, "ef" * 32).to_dict()
    with pytest.raises(AnchorMismatch, match="malformed"):
        AnchorReceipt.from_dict({**good, **change})


def test_reopened_chain_keeps_blocks_and_nonce(state_dir):
    with open_chain(None, state_dir) as chain:
        first = chain.anchor(_payload(1))
    with open_chain(None, state_dir) as chain:
        chain.verify(first, _payload(1))
        second = chain.anchor(_payload(2))
    assert second.block_number == first.block_number + 1
    with open_chain(None, state_dir) as chain:
        chain.verify(first, _payload(1))
        chain.verify(second, _payload(2))


def test_anchor_in_one_process_verifies_in_a_fresh_one(state_dir):
    anchor_code = (
        "import json, sys\nfrom pathlib import Path\nfrom ledger.anchor import open_chain\n"
        "with open_chain(None, Path(sys.argv[1])) as c:\n"
        "    sys.stdout.write(json.dumps(c.anchor(bytes.fromhex(sys.argv[2])).to_dict()))\n"
    )
    verify_code = (
        "import json, sys\nfrom pathlib import Path\nfrom ledger.anchor import AnchorReceipt, open_chain\n"
        "from qctrace.errors import AnchorMismatch\n"
        "with open_chain(None, Path(sys.argv[1])) as c:\n"
        "    r = AnchorReceipt.from_dict(json.loads(sys.argv[3]))\n"
        "    c.verify(r, bytes.fromhex(sys.argv[2]))\n"
        "    try:\n"
        "        c.verify(r, bytes.fromhex(sys.argv[2]) + b'!')\n"
        "    except AnchorMismatch:\n"
        "        sys.stdout.write('verified')\n"
    )
    made = _run(anchor_code, str(state_dir), _payload(5).hex())
    assert made.returncode == 0, made.stderr
    checked = _run(verify_code, str(state_dir), _payload(5).hex(), made.stdout)
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout == "verified"


def test_altered_payload_raises_anchor_mismatch(state_dir):
    with open_chain(None, state_dir) as chain:
        receipt = chain.anchor(_payload(1))
        with pytest.raises(AnchorMismatch) as info:
            chain.verify(receipt, _payload(2), index=41)
    assert isinstance(info.value, LedgerIntegrityError)
    assert info.value.index == 41
    assert info.value.expected == receipt.payload_sha256 != info.value.computed


def test_payload_and_receipt_altered_together_still_disagree_with_the_chain(state_dir):
    with open_chain(None, state_dir) as chain:
        receipt = chain.anchor(_payload(1))
        forged = dataclasses.replace(receipt, payload_sha256=anchor_mod._sha256_hex(_payload(2)))
        with pytest.raises(AnchorMismatch, match="different bytes"):
            chain.verify(forged, _payload(2))


def test_tx_hash_that_does_not_exist_raises_anchor_mismatch(state_dir):
    with open_chain(None, state_dir) as chain:
        receipt = chain.anchor(_payload(1))
        with pytest.raises(AnchorMismatch, match="does not exist"):
            chain.verify(dataclasses.replace(receipt, tx_hash="0x" + "11" * 32), _payload(1))


def test_receipt_naming_another_block_raises_anchor_mismatch(state_dir):
    with open_chain(None, state_dir) as chain:
        first = chain.anchor(_payload(1))
        second = chain.anchor(_payload(2))
        moved = dataclasses.replace(first, block_number=second.block_number, block_hash=second.block_hash)
        with pytest.raises(AnchorMismatch, match="not in the block") as info:
            chain.verify(moved, _payload(1))
    assert info.value.computed == f"{first.block_number}:{first.block_hash}"


def test_receipt_from_another_chain_is_a_configuration_error(state_dir):
    with open_chain(None, state_dir) as chain:
        receipt = chain.anchor(_payload(1))
        with pytest.raises(AnchorError, match="chain id"):
            chain.verify(dataclasses.replace(receipt, chain_id=1), _payload(1))


def test_chain_reset_makes_old_anchors_fail(tmp_path):
    with open_chain(None, tmp_path / "a") as chain:
        receipt = chain.anchor(_payload(1))
    with open_chain(None, tmp_path / "b") as other, pytest.raises(AnchorMismatch):
        other.verify(receipt, _payload(1))


def test_corrupt_state_file_is_reported_not_replaced(state_dir):
    with open_chain(None, state_dir) as chain:
        chain.anchor(_payload(1))
    path = state_dir / local_chain_mod.STATE_FILE
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(AnchorError, match="corrupt"):
        open_chain(None, state_dir)


def test_concurrent_anchors_on_one_state_dir_are_serialised(state_dir):
    open_chain(None, state_dir).close()
    receipts: list[tuple[AnchorReceipt, bytes]] = []
    errors: list[BaseException] = []
    in_step = threading.Barrier(2, timeout=30)

    def work(base: int) -> None:
        try:
            with open_chain(None, state_dir) as chain:
                for i in range(4):
                    in_step.wait()  # both hold a chain loaded before the other's last anchor
                    payload = _payload(base + i)
                    receipts.append((chain.anchor(payload), payload))
        except BaseException as exc:
            errors.append(exc)
            raise

    threads = [threading.Thread(target=work, args=(base,)) for base in (100, 200)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(r.block_number for r, _ in receipts) == list(range(1, 9))
    with open_chain(None, state_dir) as chain:
        for receipt, payload in receipts:
            chain.verify(receipt, payload)


def test_reopening_a_chain_of_100_anchors_is_fast(state_dir):
    with open_chain(None, state_dir) as chain:
        made = [(chain.anchor(_payload(i)), _payload(i)) for i in range(100)]
    t0 = time.perf_counter()
    chain = open_chain(None, state_dir)
    opened_s = time.perf_counter() - t0
    with chain:
        for receipt, payload in made:
            chain.verify(receipt, payload)
    assert opened_s < 0.5, f"reopening took {opened_s:.3f} s"


def test_closed_chain_refuses_work(state_dir):
    chain = open_chain(None, state_dir)
    chain.close()
    with pytest.raises(AnchorError, match="closed"):
        chain.anchor(_payload(1))


def test_foreign_key_on_the_in_process_chain_is_a_config_error(state_dir):
    with pytest.raises(ConfigError, match="dev account"):
        open_chain(None, state_dir, "0x" + "22" * 32)


def test_rpc_chain_signs_locally_and_verifies_without_a_key(rpc_node, state_dir):
    with open_chain(rpc_node, state_dir, FUNDED_KEY) as chain:  # not the dev default key
        receipt = chain.anchor(_payload(1))
    assert receipt.sender == FUNDED_ADDRESS
    with open_chain(rpc_node, state_dir) as auditor:
        assert auditor.chain_id == receipt.chain_id
        auditor.verify(receipt, _payload(1))
        with pytest.raises(AnchorMismatch):
            auditor.verify(receipt, _payload(2))
        with pytest.raises(AnchorMismatch, match="does not exist"):
            auditor.verify(dataclasses.replace(receipt, tx_hash="0x" + "11" * 32), _payload(1))
        with pytest.raises(ConfigError, match="private_key_env"):
            auditor.anchor(_payload(3))
    assert not state_dir.exists()  # an RPC chain keeps no local state


def test_unreachable_rpc_url_raises_anchor_error_quickly(state_dir):
    t0 = time.perf_counter()
    with pytest.raises(AnchorError) as info:
        open_chain("http://127.0.0.1:9", state_dir, "0x" + "22" * 32, timeout=2.0)
    assert time.perf_counter() - t0 < 5
    message = str(info.value)
    assert "http://127.0.0.1:9" in message and "rpc_url" in message and "running" in message


def test_bad_private_key_is_a_config_error_that_does_not_echo_the_key(state_dir):
    with pytest.raises(ConfigError) as info:
        open_chain("http://127.0.0.1:9", state_dir, "0xnot-a-key-secret")
    assert "secret" not in str(info.value)


def test_anchor_checkpoint_waits_for_a_confirmation_and_anchors_a_checkpoint_once(tmp_path):
    from ledger import Ledger
    from ledger import events as E
    from ledger.keys import init_keys, load_signer
    from ledger.publish import anchor_checkpoint, checkpoint_payload, make_checkpoint
    from qctrace.errors import LedgerError

    init_keys(tmp_path / "keys", "qctrace.local/ledger")
    cps = tmp_path / "checkpoints"
    with Ledger(tmp_path / "ledger.sqlite") as led, open_chain(None, tmp_path / "chain") as chain:
        led.append(E.lot_produced("L-0001", "0614141.107346", "plant1", "line1", 1_793_599_200 * 10**9))
        size, _ = make_checkpoint(led, load_signer(tmp_path / "keys"), cps)
        first = anchor_checkpoint(led, chain, cps)
        assert anchor_checkpoint(led, chain, cps, size) == first  # asked again: the recorded one, nothing sent
        assert chain.nonce("latest") == 1
        assert chain.head() == first.block_number + 1  # the in-process chain mined its confirming block
        chain.verify(first, checkpoint_payload(led, size))
        assert led.anchors() == [(size, first.to_dict())]
        with pytest.raises(LedgerError, match="no checkpoint of size 99"):
            anchor_checkpoint(led, chain, cps, 99)

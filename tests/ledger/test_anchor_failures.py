"""Anchoring when the chain misbehaves: node down, stuck transaction, reorganisation, wrong chain,
restart mid-flight, two anchorers on one ledger. Every test runs a real py-evm chain behind a real
JSON-RPC server on loopback (tests/ledger/evm_node.py) and checks the one outcome that matters:
each checkpoint ends with exactly one final anchor, paid for once, and ingest never waits."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ledger import Ledger
from ledger import events as E
from ledger.anchor_jobs import AnchorJob, JobState, read_jobs, summarize
from ledger.anchoring import AnchorDriver, Anchorer
from qctrace import ledger_ops
from qctrace.config import Config, load_config
from qctrace.errors import AnchorError, AnchorMismatch, ConfigError
from tests.ledger.evm_node import FUNDED_ADDRESS, FUNDED_KEY, EvmNode

KEY_ENV = "QCTRACE_TEST_ANCHOR_KEY"
STUCK_AFTER_S = 180.0
T0 = 1_793_599_200 * 10**9


class Clock:
    """Wall time the test moves by hand: a transaction gets "stuck" without the test waiting for it."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def node() -> Iterator[EvmNode]:
    n = EvmNode().start()
    try:
        yield n
    finally:
        n.stop()


@pytest.fixture
def cfg(tmp_path: Path, node: EvmNode, monkeypatch: pytest.MonkeyPatch) -> Config:
    monkeypatch.setenv(KEY_ENV, FUNDED_KEY)
    c = load_config(None).with_overrides(**{
        "data_dir": tmp_path / "data", "ledger.anchor.rpc_url": node.url, "ledger.anchor.private_key_env": KEY_ENV,
        "ledger.anchor.confirmations": 2, "ledger.anchor.stuck_after_s": STUCK_AFTER_S,
        "ledger.anchor.poll_s": 0.05, "ledger.anchor.retry_max_s": 0.2, "ledger.anchor.wait_s": 20.0,
    })
    ledger_ops.ensure_keys(c)
    _append(c, 3)
    return c


def _append(cfg: Config, n: int, first: int = 0) -> None:
    with Ledger(ledger_ops.ledger_path(cfg.data_dir)) as led:
        led.append_many([E.lot_produced(f"L-{first + i:04d}", "0614141.107346", "plant1", "line1", T0 + i * 10**9)
                         for i in range(n)])


def _driver(cfg: Config, clock: Clock) -> AnchorDriver:
    return AnchorDriver(ledger_ops.ledger_path(cfg.data_dir), ledger_ops.checkpoint_dir(cfg.data_dir),
                        lambda: ledger_ops.open_anchor_chain(cfg), ledger_ops.anchor_policy(cfg), clock=clock)


def _job(driver: AnchorDriver, size: int) -> AnchorJob:
    job = driver.jobs.get(size)
    assert job is not None
    return job


def _drive_until_final(driver: AnchorDriver, node: EvmNode, size: int, rounds: int = 12) -> AnchorJob:
    """Step, and let the chain grow one block per round, until the job is final."""
    for _ in range(rounds):
        driver.step()
        if _job(driver, size).state is JobState.FINAL:
            return _job(driver, size)
        node.mine(1)
    raise AssertionError(f"not final after {rounds} rounds: {_job(driver, size).describe()}")


def _wait_until(what: str, done: Callable[[], bool], node: EvmNode | None = None, timeout_s: float = 15.0) -> None:
    """Poll a background thread's visible state (mining a block per poll when a node is given)."""
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        if node is not None:
            node.mine(1)
        time.sleep(0.05)


def _the_one_anchor(cfg: Config, size: int) -> dict:
    """The ledger holds exactly one anchor, for ``size``, equal to the file beside the checkpoint."""
    with Ledger(ledger_ops.ledger_path(cfg.data_dir), readonly=True) as led:
        anchors = led.anchors()
    assert [s for s, _ in anchors] == [size]
    from ledger.publish import anchor_files

    assert anchor_files(ledger_ops.checkpoint_dir(cfg.data_dir)) == anchors
    return anchors[0][1]


# -- stuck transaction -------------------------------------------------------------------------------


@pytest.mark.parametrize("mined", ["replacement", "original"])
def test_a_stuck_anchor_is_replaced_with_the_same_nonce_and_exactly_one_is_mined(cfg, node, mined):
    node.auto_mine(False)  # the node takes transactions into its pool and mines only when told
    clock = Clock()
    size = ledger_ops.checkpoint(cfg)
    driver = _driver(cfg, clock)
    driver.step()
    first = _job(driver, size).txs[0]
    assert _job(driver, size).state is JobState.SENT and node.in_pool(first.tx_hash)
    clock.now += STUCK_AFTER_S - 1
    driver.step()
    assert _job(driver, size).txs == (first,), "replaced before it was stuck"

    clock.now += 2
    driver.step()
    job = _job(driver, size)
    assert len(job.txs) == 2
    second = job.txs[1]
    assert second.nonce == first.nonce == 0
    assert second.fees.max_fee * 10 >= first.fees.max_fee * 11 and second.fees.tip * 10 >= first.fees.tip * 11
    assert node.in_pool(second.tx_hash) and not node.in_pool(first.tx_hash)
    if mined == "original":  # a miner that still had the first one mines it before the replacement reaches it
        node.send_raw(first.raw)
        node.mine(1)
    winner, loser = (second, first) if mined == "replacement" else (first, second)

    final = _drive_until_final(driver, node, size)
    assert node.receipt_block(winner.tx_hash) is not None and node.receipt_block(loser.tx_hash) is None
    assert node.nonce() == 1, "the account paid for more than one anchor"
    assert final.mined is not None and final.mined.tx_hash == winner.tx_hash
    assert _the_one_anchor(cfg, size)["tx_hash"] == winner.tx_hash
    assert ledger_ops.verify(cfg).anchors == 1
    driver.close()


# -- reorganisation ----------------------------------------------------------------------------------


@pytest.mark.parametrize("node_remines", [True, False])
def test_a_reorg_before_finality_sends_the_job_back_and_it_ends_final_once(cfg, node, node_remines):
    clock = Clock()
    size = ledger_ops.checkpoint(cfg)
    before = node.snapshot()
    driver = _driver(cfg, clock)
    driver.step()  # signed, stored, sent; the node mines it into block 1 at once
    driver.step()
    job = _job(driver, size)
    assert job.state is JobState.MINED and job.mined is not None
    tx, dropped = job.txs[0], job.mined

    node.revert(before)  # the anchor's block is no longer canonical, one confirmation short of final
    node.mine(1)
    if node_remines:
        node.send_raw(tx.raw)  # the transaction went back to the node's pool and into a new block
    driver.step()
    job = _job(driver, size)
    assert job.state is (JobState.MINED if node_remines else JobState.SENT)
    assert job.mined != dropped

    final = _drive_until_final(driver, node, size)
    assert final.txs == (tx,), "a reorg must not make the anchorer sign a second transaction"
    receipt = _the_one_anchor(cfg, size)
    assert receipt["tx_hash"] == tx.tx_hash and receipt["block_hash"] != dropped.block_hash
    assert node.nonce() == 1
    assert ledger_ops.verify(cfg).anchors == 1
    driver.close()


def test_a_reorg_after_finality_is_reported_by_verify_and_not_anchored_again(cfg, node):
    size = ledger_ops.checkpoint(cfg)
    before = node.snapshot()
    driver = _driver(cfg, Clock())
    final = _drive_until_final(driver, node, size)
    assert final.mined is not None
    node.revert(before)  # deeper than the confirmations: the final anchor's block is gone
    node.mine(6)
    with pytest.raises(AnchorMismatch, match="does not exist") as info:
        ledger_ops.verify(cfg)
    assert info.value.expected == f"{final.mined.block_number}:{final.mined.block_hash}"
    assert driver.step() is False and node.nonce() == 0, "a final anchor was sent again"
    driver.close()


# -- wrong chain id ----------------------------------------------------------------------------------


def test_a_node_on_another_chain_is_refused_with_both_ids_and_nothing_is_sent(cfg, node):
    wrong = cfg.with_overrides(**{"ledger.anchor.chain_id": 1})
    node_id = node.w3.eth.chain_id
    size = ledger_ops.checkpoint(wrong)
    driver = _driver(wrong, Clock())
    with pytest.raises(ConfigError) as info:
        driver.step()
    message = str(info.value)
    assert f"is chain id {node_id}" in message and "chain_id is 1;" in message and node.url in message
    assert "nothing was signed or sent" in message
    job = _job(driver, size)
    assert job.state is JobState.PENDING and job.txs == () and job.status == f"error: {message}"
    driver.close()

    with pytest.raises(ConfigError, match=f"chain id {node_id}"):
        ledger_ops.anchor(wrong)  # the one-shot command says the same, at once

    anchorer = ledger_ops.start_anchorer(wrong)  # and the background anchorer reports it, raising nothing
    assert anchorer is not None
    try:
        _wait_until("the anchorer reports the wrong chain", lambda: "chain_id is 1" in anchorer.status().error)
    finally:
        anchorer.stop()
    assert node.nonce() == 0 and node.head() == 0, "something was sent to the wrong chain"
    with Ledger(ledger_ops.ledger_path(cfg.data_dir), readonly=True) as led:
        assert led.anchors() == []


# -- node down: ingest never waits -------------------------------------------------------------------


def test_ingest_never_waits_on_a_dead_node_and_the_anchor_is_final_once_it_is_back(cfg, node):
    node.hang()  # the node accepts connections and never answers: the worst case for a caller
    anchorer = ledger_ops.start_anchorer(cfg.with_overrides(**{"ledger.anchor.timeout_s": 60.0}))
    assert anchorer is not None
    try:
        with Ledger(ledger_ops.ledger_path(cfg.data_dir)) as led:
            checkpointer = ledger_ops.Checkpointer(cfg.with_overrides(**{"ledger.checkpoint_every": 2}), led, anchorer)
            ingest = threading.Thread(target=lambda: [checkpointer.maybe(), checkpointer.now()])
            ingest.start()
            ingest.join(10.0)  # a call into the wedged node would hold it for the 60 s request timeout
            assert not ingest.is_alive(), "the checkpointer waited on the anchor chain"
            size = checkpointer.last
        assert size == 3
        _wait_until("the job is queued", lambda: [j.size for j in read_jobs(ledger_ops.ledger_path(cfg.data_dir))]
                    == [size])

        node.stop()  # wedged becomes refused: the request in flight fails, and so does every retry
        _wait_until("the anchorer reports the node down", lambda: "cannot reach" in anchorer.status().error)
        assert node.url in anchorer.status().error
        job = read_jobs(ledger_ops.ledger_path(cfg.data_dir))[0]
        assert job.state is JobState.PENDING and job.status.startswith("error: cannot reach the anchor chain")
        assert summarize([job]).startswith(f"1 pending; checkpoint {size}: error: cannot reach")

        node.start()
        _wait_until("the anchor is final", lambda: read_jobs(ledger_ops.ledger_path(cfg.data_dir))[0].state
                    is JobState.FINAL, node=node)
        assert anchorer.status().error == "" and anchorer.status().role == "anchoring"
    finally:
        anchorer.stop()
    assert anchorer.status().role == "stopped"
    assert summarize(ledger_ops.anchoring_status(cfg)) == "1 final"
    assert node.nonce() == 1
    _the_one_anchor(cfg, size)
    assert ledger_ops.verify(cfg).anchors == 1


# -- restart mid-flight ------------------------------------------------------------------------------


def test_a_restarted_anchorer_continues_the_transaction_in_flight_instead_of_sending_another(cfg, node):
    node.auto_mine(False)
    clock = Clock()
    size = ledger_ops.checkpoint(cfg)
    first = _driver(cfg, clock)
    first.step()
    sent = _job(first, size).txs
    first.close()  # the process ends with the transaction in the node's pool

    again = _driver(cfg, clock)
    for _ in range(3):
        again.step()
    assert _job(again, size).txs == sent and node.in_pool(sent[0].tx_hash)
    node.auto_mine(True)
    final = _drive_until_final(again, node, size)
    assert final.txs == sent and final.mined is not None and final.mined.tx_hash == sent[0].tx_hash
    assert node.nonce() == 1
    again.close()


def test_a_crash_between_storing_and_broadcasting_sends_the_stored_bytes_after_restart(cfg, node):
    clock = Clock()
    size = ledger_ops.checkpoint(cfg)

    def connect_then_die_on_send():
        chain = ledger_ops.open_anchor_chain(cfg)

        def broadcast(tx: object) -> None:
            raise AnchorError("connection lost while sending (simulated crash)")

        chain.broadcast = broadcast  # the process dies after storing the signed bytes, before the node has them
        return chain

    crashed = AnchorDriver(ledger_ops.ledger_path(cfg.data_dir), ledger_ops.checkpoint_dir(cfg.data_dir),
                           connect_then_die_on_send, ledger_ops.anchor_policy(cfg), clock=clock)
    with pytest.raises(AnchorError, match="simulated crash"):
        crashed.step()
    stored = _job(crashed, size).txs
    crashed.close()
    assert len(stored) == 1 and node.head() == 0

    again = _driver(cfg, clock)
    final = _drive_until_final(again, node, size)
    assert final.txs == stored and final.mined is not None and final.mined.tx_hash == stored[0].tx_hash
    assert node.nonce() == 1
    again.close()


# -- several processes on one ledger -----------------------------------------------------------------


def test_two_anchorers_on_one_ledger_anchor_each_checkpoint_once(cfg, node):
    anchorers = [ledger_ops.start_anchorer(cfg), ledger_ops.start_anchorer(cfg)]
    assert all(isinstance(a, Anchorer) for a in anchorers)
    try:
        sizes = []
        with Ledger(ledger_ops.ledger_path(cfg.data_dir)) as led:
            for k, a in enumerate(anchorers):  # each ingest worker signs a checkpoint and hands it to its own
                _append(cfg, 2, first=100 + 2 * k)
                sizes.append(ledger_ops.Checkpointer(cfg, led, a).now())
        _wait_until("both anchors final", lambda: [j.state for j in read_jobs(ledger_ops.ledger_path(cfg.data_dir))]
                    == [JobState.FINAL] * 2, node=node)
        assert sorted(a.status().role for a in anchorers) == ["anchoring", "standby"]
    finally:
        for a in anchorers:
            a.stop()
    assert node.nonce() == 2, "one transaction per checkpoint"
    with Ledger(ledger_ops.ledger_path(cfg.data_dir), readonly=True) as led:
        assert [s for s, _ in led.anchors()] == sizes
    assert ledger_ops.verify(cfg).anchors == 2


# -- the one-shot command ----------------------------------------------------------------------------


def test_anchor_command_waits_for_finality_and_never_anchors_a_checkpoint_twice(cfg, node):
    said: list[str] = []
    miner_stop = threading.Event()
    miner = threading.Thread(target=lambda: [node.mine(1) for _ in iter(lambda: miner_stop.wait(0.05), True)])
    miner.start()
    try:
        size, receipt = ledger_ops.anchor(cfg, progress=said.append)
        again_size, again = ledger_ops.anchor(cfg, progress=said.append)
    finally:
        miner_stop.set()
        miner.join()
    assert (again_size, again) == (size, receipt)
    assert node.nonce() == 1
    assert receipt.sender == FUNDED_ADDRESS and node.head() >= receipt.block_number + 2
    assert any("sent tx" in s for s in said) and any("mined in block" in s for s in said)
    assert [j.status for j in ledger_ops.anchoring_status(cfg)] == ["final"]


def test_background_anchoring_on_the_in_process_chain(tmp_path):
    local = load_config(None).with_overrides(data_dir=tmp_path / "data")
    ledger_ops.ensure_keys(local)
    _append(local, 2)
    anchorer = ledger_ops.start_anchorer(local)
    assert anchorer is not None
    try:
        with Ledger(ledger_ops.ledger_path(local.data_dir)) as led:
            size = ledger_ops.Checkpointer(local, led, anchorer).now()
        _wait_until("final on the in-process chain", lambda: [j.state for j in ledger_ops.anchoring_status(local)]
                    == [JobState.FINAL])
    finally:
        anchorer.stop()
    receipt = _the_one_anchor(local, size)
    assert ledger_ops.verify(local).anchors == 1
    with ledger_ops.open_anchor_chain(local) as chain:
        assert chain.head() == receipt["block_number"] + 1  # the one confirming block it mined itself

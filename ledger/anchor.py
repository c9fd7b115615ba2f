"""Anchor signed checkpoints on an Ethereum-compatible chain, and check that they are still there.

An anchor is one transaction from the anchoring account to itself, value 0, whose ``input`` is the
checkpoint payload (``b"qctrace-anchor/1\\n" + checkpoint body``). No contract is needed: a node
stores a transaction's input forever, and an auditor with any JSON-RPC client can read it back with
``eth_getTransactionByHash``. (An event log would need a deployed contract, i.e. compiled bytecode
checked in or a solc download, and would prove nothing more.) The ledger stores the returned
:class:`AnchorReceipt`; :meth:`Chain.verify` later fetches the transaction and raises if it is gone,
failed, moved to another block or carries different bytes.

:class:`Chain` offers the steps one at a time (sign with an explicit nonce, broadcast, look up the
block a transaction is in, the canonical hash at a height, the account's nonce at a height), because
a transaction that is stuck, dropped or reorganised away has to be handled between those steps;
``ledger.anchoring`` drives them. :meth:`Chain.anchor` is the one-call form (send, wait until
mined) for tools and tests.

Two chains sit behind :class:`Chain`:

* ``rpc_url`` set: any JSON-RPC node over HTTP. Transactions are signed locally with the
  configured private key (``eth_account``) and sent with ``eth_sendRawTransaction``, so the node
  never holds the key. The chain id is read from the node.
* ``rpc_url`` unset (the default): eth-tester's in-process py-evm chain, persisted in
  ``state_dir`` so that ``qctrace anchor`` and a later ``qctrace verify`` in another process see
  the same blocks (``ledger.local_chain``). It is a development and demo chain: it proves the
  ledger was not rewritten *unless the state file was rewritten too*, which anyone with write
  access to the data directory can do. Real tamper evidence needs a chain the ledger's owner does
  not control.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import requests
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import ValidationError as EthValidationError
from web3 import Web3
from web3.exceptions import BlockNotFound, TimeExhausted, TransactionNotFound, Web3Exception

from qctrace.errors import AnchorError, AnchorMismatch, ConfigError

__all__ = [
    "DEV_ADDRESS",
    "DEV_PRIVATE_KEY",
    "AnchorReceipt",
    "Chain",
    "Fees",
    "Inclusion",
    "SignedAnchorTx",
    "open_chain",
    "verify_anchor",
]

log = logging.getLogger(__name__)
_T = TypeVar("_T")

#: eth-tester's first funded genesis account: private key 0x00..01 (``get_default_account_keys``).
#: It is public knowledge and worthless outside the in-process chain; never use it on a real network.
DEV_PRIVATE_KEY = "0x" + "00" * 31 + "01"
DEV_ADDRESS = "0x7E5F4552091A69125d5DfCb7b8C2659029395Bdf"

_HEX32 = re.compile(r"0x[0-9a-f]{64}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
#: What nodes answer when they already hold a transaction we broadcast again (geth, erigon, besu, nethermind).
_ALREADY_KNOWN = ("already known", "known transaction", "alreadyknown", "already imported")


@dataclass(frozen=True, slots=True)
class AnchorReceipt:
    """Where a payload was anchored. Plain JSON types only: it is stored inside a ledger event.

    ``payload_sha256`` lets a verifier say *which* side changed (the checkpoint text or the chain)
    without keeping a second copy of the payload.
    """

    chain_id: int
    tx_hash: str  # 0x + 64 lowercase hex
    block_number: int
    block_hash: str  # 0x + 64 lowercase hex
    sender: str  # checksum address
    payload_sha256: str  # 64 lowercase hex, no 0x

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AnchorReceipt:
        """Parse a stored receipt; a malformed one is ledger damage, so it raises AnchorMismatch."""

        def bad(why: str) -> AnchorMismatch:
            return AnchorMismatch(f"anchor receipt is malformed: {why}; the ledger event holding it was altered")

        expected = [f.name for f in fields(cls)]
        if not isinstance(data, Mapping) or set(data) != set(expected):
            got = sorted(data) if isinstance(data, Mapping) else type(data).__name__
            raise bad(f"expected keys {sorted(expected)}, got {got}")
        for key in ("chain_id", "block_number"):
            if type(data[key]) is not int or data[key] < 0:
                raise bad(f"{key} must be a non-negative integer, got {data[key]!r}")
        for key, pattern in (("tx_hash", _HEX32), ("block_hash", _HEX32), ("payload_sha256", _SHA256),
                             ("sender", _ADDRESS)):
            if not isinstance(data[key], str) or not pattern.fullmatch(data[key]):
                raise bad(f"{key} has the wrong form: {data[key]!r}")
        return cls(**{key: data[key] for key in expected})


def _bump(value: int) -> int:
    """+12.5 %, rounded up, and at least +1: nodes refuse a replacement below +10 % on each fee."""
    return value + max(1, -(-value // 8))


@dataclass(frozen=True, slots=True)
class Fees:
    """What a transaction offers per gas: EIP-1559 ``max_fee``/``tip``, or a legacy ``gas_price``
    on a chain without a base fee (then the other two are 0)."""

    max_fee: int = 0
    tip: int = 0
    gas_price: int = 0

    def bumped(self, market: Fees) -> Fees:
        """The fees of a replacement: each at least 12.5 % above ours (nodes demand +10 % on both,
        or they keep the old transaction), and never below what the market asks now."""
        if self.gas_price:
            return Fees(gas_price=max(_bump(self.gas_price), market.gas_price))
        tip = max(_bump(self.tip), market.tip)
        return Fees(max_fee=max(_bump(self.max_fee), market.max_fee, tip), tip=tip)

    def tx_fields(self) -> dict[str, int]:
        if self.gas_price:
            return {"gasPrice": self.gas_price}
        return {"maxFeePerGas": self.max_fee, "maxPriorityFeePerGas": self.tip}

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Fees:
        return cls(**{f.name: int(data[f.name]) for f in fields(cls)})


@dataclass(frozen=True, slots=True)
class SignedAnchorTx:
    """An anchor transaction signed locally, kept as the exact bytes so that it can be broadcast
    again after a restart or a reorganisation without signing (and so paying for) a second one."""

    tx_hash: str  # 0x + 64 lowercase hex
    raw: str  # 0x + the signed RLP bytes
    nonce: int
    gas: int
    fees: Fees
    signed_at: float  # unix seconds

    def to_dict(self) -> dict[str, Any]:
        return {"tx_hash": self.tx_hash, "raw": self.raw, "nonce": self.nonce, "gas": self.gas,
                "fees": self.fees.to_dict(), "signed_at": self.signed_at}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SignedAnchorTx:
        return cls(data["tx_hash"], data["raw"], int(data["nonce"]), int(data["gas"]), Fees.from_dict(data["fees"]),
                   float(data["signed_at"]))


@dataclass(frozen=True, slots=True)
class Inclusion:
    """The block a transaction is in right now (it may still be reorganised away)."""

    tx_hash: str
    block_number: int
    block_hash: str
    status: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Inclusion:
        return cls(data["tx_hash"], int(data["block_number"]), data["block_hash"], int(data["status"]))


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _hex(value: bytes) -> str:
    return "0x" + bytes(value).hex()


class Chain:
    """A connection to the chain anchors go to. Use :func:`open_chain`; close it (or use ``with``).

    ``label`` names the chain in every error message (the RPC URL, or the state directory).
    Every call that reaches the node raises :class:`AnchorError` on a transport failure; none
    retries (the caller decides when to try again).
    """

    #: True when nothing but us makes blocks (the in-process chain): confirmations have to be mined.
    produces_own_blocks: ClassVar[bool] = False
    #: What the node (or an in-process backend) raises when it refuses a request.
    _NODE_REFUSALS: ClassVar[tuple[type[Exception], ...]] = (Web3Exception, EthValidationError)

    def __init__(
        self,
        w3: Web3,
        label: str,
        account: LocalAccount | None,
        receipt_timeout: float,
        session: requests.Session | None = None,
    ) -> None:
        self._w3 = w3
        self._session = session
        self.label = label
        self._account = account
        self._receipt_timeout = receipt_timeout
        self._closed = False
        self.chain_id: int = self._read("read the chain id", lambda: w3.eth.chain_id)

    # -- lifecycle ---------------------------------------------------------------------------------

    def close(self) -> None:
        self._closed = True
        if self._session is not None:
            self._session.close()

    def __enter__(self) -> Chain:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- anchoring, one step at a time ---------------------------------------------------------------

    @property
    def sender(self) -> str:
        """The anchoring account; raises ConfigError when no key was given (verifying needs none)."""
        if self._account is None:
            raise ConfigError(
                f"anchoring on {self.label} needs a private key; export it (0x + 64 hex digits) in the environment"
                " variable named by [ledger.anchor] private_key_env (verifying needs no key)"
            )
        return self._account.address

    def head(self) -> int:
        return self._read("read the head block", lambda: self._w3.eth.block_number)

    def block_hash(self, number: int) -> str | None:
        """The canonical block hash at ``number``, None above the head."""
        return self._read("read a block", lambda: self._block_hash(number))

    def nonce(self, block: int | str = "pending") -> int:
        """How many transactions the anchoring account has had mined by ``block`` (or sent, "pending")."""
        sender = self.sender
        return self._read("read the account's nonce", lambda: self._w3.eth.get_transaction_count(sender, block))

    def market_fees(self) -> Fees:
        return self._read("read the fees", self._market_fees)

    def sign_anchor(self, payload: bytes, nonce: int, fees: Fees, *, gas: int | None = None,
                    now: float | None = None) -> SignedAnchorTx:
        """Sign (locally; nothing is sent) the self-transaction carrying ``payload`` with this ``nonce``."""
        _check_payload(payload)
        sender = self.sender
        return self._read("estimate the anchor's gas",
                          lambda: self._sign(sender, payload, nonce, fees, gas, time.time() if now is None else now))

    def broadcast(self, tx: SignedAnchorTx) -> None:
        """Hand the signed bytes to the node. A node that already holds them is not an error."""
        self._write("send the anchor transaction", lambda: self._broadcast(tx))

    def inclusion(self, tx_hash: str) -> Inclusion | None:
        """The block ``tx_hash`` is in on the canonical chain now, None if it is in none."""
        return self._read("read a transaction receipt", lambda: self._inclusion(tx_hash))

    def is_known(self, tx_hash: str) -> bool:
        """Whether the node holds ``tx_hash`` at all (in its pool or in a block)."""
        return self._read("look up a transaction", lambda: self._is_known(tx_hash))

    def confirm_blocks(self, count: int) -> None:
        """Mine ``count`` empty blocks; only a chain that :attr:`produces_own_blocks` can."""
        raise AnchorError(f"{self.label} makes its own blocks; wait for them instead of mining")

    def receipt_for(self, inclusion: Inclusion, payload: bytes) -> AnchorReceipt:
        return AnchorReceipt(chain_id=self.chain_id, tx_hash=inclusion.tx_hash, block_number=inclusion.block_number,
                             block_hash=inclusion.block_hash, sender=self.sender, payload_sha256=_sha256_hex(payload))

    # -- anchoring, in one call --------------------------------------------------------------------

    def anchor(self, payload: bytes) -> AnchorReceipt:
        """Send ``payload`` as a self-transaction and wait until it is mined with status 1.

        No confirmations, no replacement of a stuck transaction: checkpoints go through
        ``ledger.anchoring``, which adds both.
        """
        _check_payload(payload)
        sender = self.sender
        tx = self._write("send the anchor transaction", lambda: self._sign_and_send(sender, payload))
        deadline = time.monotonic() + self._receipt_timeout
        while (found := self.inclusion(tx.tx_hash)) is None:
            if time.monotonic() > deadline:
                raise AnchorError(
                    f"the anchor transaction was not mined on {self.label} within {self._receipt_timeout:g} s;"
                    " check the node is producing blocks and the fee is high enough, then anchor again"
                )
            time.sleep(0.5)
        if found.status != 1:
            raise AnchorError(
                f"anchor transaction {tx.tx_hash} failed on {self.label} (status 0);"
                " check the account's balance and the node's gas rules, then anchor again"
            )
        receipt = self.receipt_for(found, payload)
        log.info("anchor.mined chain=%s tx=%s block=%d", self.label, receipt.tx_hash, receipt.block_number)
        return receipt

    # -- verification ------------------------------------------------------------------------------

    def verify(self, receipt: AnchorReceipt, payload: bytes, *, index: int | None = None) -> None:
        """Raise unless ``payload`` is on this chain exactly where ``receipt`` says.

        ``index`` is the ledger position of the event holding the receipt, carried into the error.
        A receipt from another chain raises AnchorError (wrong configuration, not evidence of
        tampering); everything else that disagrees raises AnchorMismatch.
        """
        self._check_open()
        if receipt.chain_id != self.chain_id:
            raise AnchorError(
                f"anchor {receipt.tx_hash} was made on chain id {receipt.chain_id}, but {self.label} is chain id"
                f" {self.chain_id}; point the anchor rpc_url at the chain it was made on"
            )
        computed = _sha256_hex(payload)
        if computed != receipt.payload_sha256:
            raise AnchorMismatch(
                f"checkpoint payload differs from the one anchored in tx {receipt.tx_hash}: the checkpoint or its"
                " anchor receipt was altered after anchoring",
                index=index, expected=receipt.payload_sha256, computed=computed,
            )
        self._read("read the anchor transaction", lambda: self._check_on_chain(receipt, payload, index))

    def _check_on_chain(self, receipt: AnchorReceipt, payload: bytes, index: int | None) -> None:
        # Look in the block the receipt names rather than asking for the transaction by hash:
        # eth-tester answers a hash lookup by scanning back from the head, which would make
        # verifying every anchor of a long ledger quadratic. The hash lookup is kept for the
        # failure path, where it tells "moved" from "gone".
        eth = self._w3.eth
        where = f"anchor tx {receipt.tx_hash} on {self.label}"
        named = f"{receipt.block_number}:{receipt.block_hash}"
        try:
            block = eth.get_block(receipt.block_number)
        except BlockNotFound:
            block = None
        tx_index = None
        if block is not None and _hex(block["hash"]) == receipt.block_hash:
            hashes = [_hex(h) for h in block["transactions"]]
            tx_index = hashes.index(receipt.tx_hash) if receipt.tx_hash in hashes else None
        if tx_index is None:
            try:
                moved = eth.get_transaction(receipt.tx_hash)
            except TransactionNotFound:
                raise AnchorMismatch(
                    f"{where} does not exist: the chain was reorganised, reset or replaced, or the receipt was"
                    " altered",
                    index=index, expected=named, computed="",
                ) from None
            raise AnchorMismatch(
                f"{where} is not in the block the receipt names (reorganised, or the receipt was altered)",
                index=index, expected=named,
                computed=f"{moved['blockNumber']}:{_hex_or_none(moved['blockHash'])}",
            )
        tx = eth.get_transaction_by_block(receipt.block_hash, tx_index)
        # eth-tester's provider returns this call's fields unformatted ("data", not "input").
        tx_input = bytes(tx["input"] if "input" in tx else tx["data"])
        if tx["from"] != receipt.sender:
            raise AnchorMismatch(
                f"{where} was sent by another account", index=index, expected=receipt.sender, computed=tx["from"]
            )
        if tx_input != payload:
            raise AnchorMismatch(
                f"{where} carries different bytes than the checkpoint", index=index,
                expected=receipt.payload_sha256, computed=_sha256_hex(tx_input),
            )
        status = self._status(receipt, tx_index)
        if status != 1:
            raise AnchorMismatch(f"{where} failed: it anchors nothing", index=index,
                                 expected="status 1", computed=f"status {status}")

    def _status(self, receipt: AnchorReceipt, tx_index: int) -> int:
        """The execution status of a transaction already found at ``tx_index`` of its block."""
        return self._w3.eth.get_transaction_receipt(receipt.tx_hash)["status"]

    # -- the node calls behind the steps (no locking, no error mapping) ------------------------------

    def _block_hash(self, number: int) -> str | None:
        try:
            return _hex(self._w3.eth.get_block(number)["hash"])
        except BlockNotFound:
            return None

    def _market_fees(self) -> Fees:
        eth = self._w3.eth
        base_fee = eth.get_block("latest").get("baseFeePerGas")
        if base_fee is None:  # a pre-London (or private, fee-less) chain
            return Fees(gas_price=eth.gas_price)
        tip = eth.max_priority_fee
        # Twice the base fee survives six full blocks of +12.5 % each before the transaction stalls.
        return Fees(max_fee=2 * base_fee + tip, tip=tip)

    def _sign(self, sender: str, payload: bytes, nonce: int, fees: Fees, gas: int | None,
              now: float) -> SignedAnchorTx:
        assert self._account is not None
        tx: dict[str, Any] = {"chainId": self.chain_id, "to": sender, "value": 0, "data": payload, "nonce": nonce}
        if gas is None:
            # Unused gas is refunded, so a margin costs nothing and survives intrinsic-gas rule changes.
            gas = self._w3.eth.estimate_gas({**tx, "from": sender}) * 6 // 5
        signed = self._account.sign_transaction({**tx, "gas": gas, **fees.tx_fields()})
        return SignedAnchorTx(_hex(signed.hash), _hex(signed.raw_transaction), nonce, gas, fees, now)

    def _broadcast(self, tx: SignedAnchorTx) -> None:
        try:
            self._w3.eth.send_raw_transaction(tx.raw)
        except self._NODE_REFUSALS as exc:
            if any(s in str(exc).lower() for s in _ALREADY_KNOWN):
                return
            raise
        log.info("anchor.sent chain=%s tx=%s nonce=%d", self.label, tx.tx_hash, tx.nonce)

    def _sign_and_send(self, sender: str, payload: bytes) -> SignedAnchorTx:
        # "pending" so a transaction of ours still in a real node's mempool is not replaced.
        tx = self._sign(sender, payload, self._w3.eth.get_transaction_count(sender, "pending"), self._market_fees(),
                        None, time.time())
        self._broadcast(tx)
        return tx

    def _inclusion(self, tx_hash: str) -> Inclusion | None:
        try:
            r = self._w3.eth.get_transaction_receipt(tx_hash)
        except TransactionNotFound:
            return None
        if r is None or r["blockNumber"] is None:  # some nodes answer a pending transaction this way
            return None
        return Inclusion(tx_hash, r["blockNumber"], _hex(r["blockHash"]), r["status"])

    def _is_known(self, tx_hash: str) -> bool:
        try:
            return self._w3.eth.get_transaction(tx_hash) is not None
        except TransactionNotFound:
            return False

    # -- plumbing ----------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise AnchorError(f"the chain {self.label} is closed; open_chain() again")

    def _read(self, doing: str, fn: Callable[[], _T]) -> _T:
        """A call that only reads the chain. The in-process chain reloads its state first."""
        self._check_open()
        return self._call(doing, fn)

    def _write(self, doing: str, fn: Callable[[], _T]) -> _T:
        """A call that may add blocks. The in-process chain holds its file lock and saves after it."""
        self._check_open()
        return self._call(doing, fn)

    def _call(self, doing: str, fn: Callable[[], _T]) -> _T:
        """Run ``fn`` and turn transport failures into an AnchorError naming the chain and the fix."""
        try:
            return fn()
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
            raise AnchorError(
                f"cannot reach the anchor chain at {self.label} to {doing} ({type(exc).__name__});"
                " check that the node is running and that [ledger.anchor] rpc_url is right"
            ) from exc
        except TimeExhausted as exc:
            raise AnchorError(
                f"the anchor transaction was not mined on {self.label} within {self._receipt_timeout:g} s;"
                " check the node is producing blocks and the fee is high enough, then anchor again"
            ) from exc
        except (*self._NODE_REFUSALS, requests.exceptions.RequestException) as exc:
            raise AnchorError(f"the anchor chain at {self.label} refused to {doing}: {exc}") from exc


def _check_payload(payload: bytes) -> None:
    if not isinstance(payload, bytes) or not payload:
        raise AnchorError("anchor payload must be non-empty bytes")


def _hex_or_none(value: bytes | None) -> str | None:
    return None if value is None else _hex(value)


def open_chain(
    rpc_url: str | None,
    state_dir: Path,
    private_key: str | None = None,
    *,
    timeout: float = 10.0,
    receipt_timeout: float = 120.0,
) -> Chain:
    """Connect to the anchoring chain named by the configuration.

    ``rpc_url`` None or empty selects the persisted in-process chain in ``state_dir`` (normally
    ``<data_dir>/chain``), which always anchors from :data:`DEV_ADDRESS`. Otherwise ``rpc_url`` is an
    HTTP JSON-RPC endpoint; ``private_key`` (hex) is needed to anchor, not to verify. ``timeout``
    bounds each RPC request and there are no retries, so a dead node fails fast; ``receipt_timeout``
    bounds :meth:`Chain.anchor`'s wait for the anchor to be mined.
    """
    if not rpc_url:
        if private_key and private_key.lower().removeprefix("0x") != DEV_PRIVATE_KEY[2:]:
            raise ConfigError(
                "the in-process anchor chain (empty [ledger.anchor] rpc_url) only funds eth-tester's dev account;"
                " unset the variable named by [ledger.anchor] private_key_env, or set rpc_url to a real node"
            )
        from ledger.local_chain import LocalChain

        return LocalChain(state_dir)

    account = None
    if private_key:
        try:
            account = Account.from_key(private_key)
        except (ValueError, TypeError):
            raise ConfigError(
                "the anchor private key (from the variable named by [ledger.anchor] private_key_env) is not"
                " a 32-byte hex private key (0x + 64 hex digits)"
            ) from None
    if not rpc_url.startswith(("http://", "https://")):
        raise ConfigError(f"[ledger.anchor] rpc_url must be an http:// or https:// URL, got {rpc_url!r}")
    session = requests.Session()
    provider = Web3.HTTPProvider(
        rpc_url, request_kwargs={"timeout": timeout}, session=session, exception_retry_configuration=None
    )
    try:
        return Chain(Web3(provider), rpc_url, account, receipt_timeout, session)
    except BaseException:
        session.close()
        raise


def verify_anchor(receipt: AnchorReceipt, payload: bytes, chain: Chain, *, index: int | None = None) -> None:
    """Raise AnchorMismatch unless ``payload`` is anchored on ``chain`` where ``receipt`` says.

    The ledger verifier's entry point; same as ``chain.verify``. Returns None: there is no
    ``False`` to forget to check.
    """
    chain.verify(receipt, payload, index=index)

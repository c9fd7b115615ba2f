"""Anchor signed checkpoints on an Ethereum-compatible chain, and check that they are still there.

An anchor is one transaction from the anchoring account to itself, value 0, whose ``input`` is the
checkpoint payload (``b"qctrace-anchor/1\\n" + checkpoint body``). No contract is needed: a node
stores a transaction's input forever, and an auditor with any JSON-RPC client can read it back with
``eth_getTransactionByHash``. (An event log would need a deployed contract, i.e. compiled bytecode
checked in or a solc download, and would prove nothing more.) The ledger stores the returned
:class:`AnchorReceipt`; :meth:`Chain.verify` later fetches the transaction and raises if it is gone,
failed, moved to another block or carries different bytes.

Two chains sit behind :class:`Chain`:

* ``rpc_url`` set: any JSON-RPC node over HTTP. Transactions are signed locally with the
  configured private key (``eth_account``) and sent with ``eth_sendRawTransaction``, so the node
  never holds the key. The chain id is read from the node.
* ``rpc_url`` unset (the default): eth-tester's in-process py-evm chain, persisted in
  ``state_dir`` so that ``qctrace anchor`` and a later ``qctrace verify`` in another process see
  the same blocks. See :class:`_LocalChain` for how, and for the limits. It is a development and
  demo chain: it proves the ledger was not rewritten *unless the state file was rewritten too*,
  which anyone with write access to the data directory can do. Real tamper evidence needs a chain
  the ledger's owner does not control.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import struct
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, fields
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

import requests
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.exceptions import BlockNotFound, TimeExhausted, TransactionNotFound, Web3Exception

from qctrace.errors import AnchorError, AnchorMismatch, ConfigError

__all__ = [
    "DEV_ADDRESS",
    "DEV_PRIVATE_KEY",
    "AnchorReceipt",
    "Chain",
    "open_chain",
    "verify_anchor",
]

log = logging.getLogger(__name__)
_T = TypeVar("_T")

#: eth-tester's first funded genesis account: private key 0x00..01 (``get_default_account_keys``).
#: It is public knowledge and worthless outside the in-process chain; never use it on a real network.
DEV_PRIVATE_KEY = "0x" + "00" * 31 + "01"
DEV_ADDRESS = "0x7E5F4552091A69125d5DfCb7b8C2659029395Bdf"

STATE_FILE = "evm-state.bin"
LOCK_FILE = "evm-state.lock"

_HEX32 = re.compile(r"0x[0-9a-f]{64}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")


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


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Chain:
    """A connection to the chain anchors go to. Use :func:`open_chain`; close it (or use ``with``).

    ``label`` names the chain in every error message (the RPC URL, or the state directory).
    """

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
        self.chain_id: int = self._call("read the chain id", lambda: w3.eth.chain_id)

    # -- lifecycle ---------------------------------------------------------------------------------

    def close(self) -> None:
        self._closed = True
        if self._session is not None:
            self._session.close()

    def __enter__(self) -> Chain:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- anchoring ---------------------------------------------------------------------------------

    def anchor(self, payload: bytes) -> AnchorReceipt:
        """Send ``payload`` as a self-transaction and wait until it is mined with status 1."""
        self._check_open()
        if self._account is None:
            raise ConfigError(
                f"anchoring on {self.label} needs a private key; export it (0x + 64 hex digits) in the environment"
                " variable named by [ledger.anchor] private_key_env (verifying needs no key)"
            )
        if not isinstance(payload, bytes) or not payload:
            raise AnchorError("anchor payload must be non-empty bytes")
        return self._call("send the anchor transaction", lambda: self._send(payload))

    def _send(self, payload: bytes) -> AnchorReceipt:
        assert self._account is not None
        eth = self._w3.eth
        sender = self._account.address
        tx: dict[str, Any] = {
            "chainId": self.chain_id,
            "from": sender,
            "to": sender,
            "value": 0,
            "data": payload,
            # "pending" so a transaction of ours still in a real node's mempool is not replaced.
            "nonce": eth.get_transaction_count(sender, "pending"),
        }
        # Unused gas is refunded, so a margin costs nothing and survives intrinsic-gas rule changes.
        tx["gas"] = eth.estimate_gas(tx) * 6 // 5
        base_fee = eth.get_block("latest").get("baseFeePerGas")
        if base_fee is None:  # a pre-London (or private, fee-less) chain
            tx["gasPrice"] = eth.gas_price
        else:
            tip = eth.max_priority_fee
            tx["maxPriorityFeePerGas"] = tip
            tx["maxFeePerGas"] = 2 * base_fee + tip
        del tx["from"]
        signed = self._account.sign_transaction(tx)
        tx_hash = eth.send_raw_transaction(signed.raw_transaction)
        log.info("anchor.sent chain=%s tx=%s bytes=%d", self.label, tx_hash.to_0x_hex(), len(payload))
        mined = eth.wait_for_transaction_receipt(tx_hash, timeout=self._receipt_timeout, poll_latency=0.5)
        if mined["status"] != 1:
            raise AnchorError(
                f"anchor transaction {tx_hash.to_0x_hex()} failed on {self.label} (status 0);"
                " check the account's balance and the node's gas rules, then anchor again"
            )
        receipt = AnchorReceipt(
            chain_id=self.chain_id,
            tx_hash=tx_hash.to_0x_hex(),
            block_number=mined["blockNumber"],
            block_hash=mined["blockHash"].to_0x_hex(),
            sender=sender,
            payload_sha256=_sha256_hex(payload),
        )
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
        self._call("read the anchor transaction", lambda: self._check_on_chain(receipt, payload, index))

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
        if block is not None and block["hash"].to_0x_hex() == receipt.block_hash:
            hashes = [h.to_0x_hex() for h in block["transactions"]]
            tx_index = hashes.index(receipt.tx_hash) if receipt.tx_hash in hashes else None
        if tx_index is None:
            try:
                moved = eth.get_transaction(receipt.tx_hash)
            except TransactionNotFound:
                raise AnchorMismatch(
                    f"{where} does not exist: the chain was reset or replaced, or the receipt was altered",
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

    # -- plumbing ----------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise AnchorError(f"the chain {self.label} is closed; open_chain() again")

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
        except (Web3Exception, requests.exceptions.RequestException) as exc:
            raise AnchorError(f"the anchor chain at {self.label} refused to {doing}: {exc}") from exc


class _LocalChain(Chain):
    """eth-tester's in-process py-evm chain, persisted in ``state_dir`` between processes.

    How: py-evm keeps *everything* (headers, canonical-chain index, block bodies, receipts, state
    trie) in one key-value store, ``chain.chaindb.db`` - an ``AtomicDB`` over a ``MemoryDB`` whose
    ``kv_store`` is a plain ``dict[bytes, bytes]``. ``MiningChain(base_db)`` rebuilds a chain from
    such a store alone: it reads the canonical head from the store and starts a new pending block on
    top. So after each anchor is mined the whole dict is written to ``evm-state.bin`` (temp file,
    fsync, rename, fsync the directory), and a later process loads the dict and rebuilds the chain:
    same blocks, same hashes, same account nonce. The chain class (PragueVM rules, eth-tester's
    chain id) is taken from a throwaway ``PyEVMBackend``, so it is exactly eth-tester's.

    Concurrency: an anchor holds an exclusive ``flock`` on ``evm-state.lock`` from reloading the
    latest state to renaming the new file, so two anchoring processes are serialised and neither
    loses the other's block. Readers need no lock: the rename is atomic, and every call reloads the
    file if it changed since it was read.

    Limits: each anchor rewrites the whole file (~1.9 KB per anchor: 100 anchors ~190 KB, so 10 000
    anchors ~19 MB per write) - fine for checkpoints, wrong for high-rate use. The whole chain is
    held in memory. The file is only meaningful to the same py-evm fork rules (PragueVM today):
    py-evm/eth-tester versions are recorded in the header and a change is logged, not refused. A
    missing state directory is created with a new genesis, so deleting it makes every earlier
    anchor fail as "does not exist". POSIX only (``fcntl``). And it is a stand-in for a real chain
    - see the module docstring.
    """

    _MAGIC = b"qctrace-evm-state/1\n"
    _LOCK_WAIT_S = 30.0

    def __init__(self, state_dir: Path) -> None:
        from eth_tester import EthereumTester, PyEVMBackend
        from web3 import EthereumTesterProvider

        self._dir = state_dir
        self._path = state_dir / STATE_FILE
        self._lock_path = state_dir / LOCK_FILE
        self._thread_lock = threading.Lock()  # flock is per open file, not per thread of a Chain
        self._backend = PyEVMBackend()
        self._chain_cls = type(self._backend.chain)
        self._loaded: tuple[int, int, int] | None = None
        state_dir.mkdir(parents=True, exist_ok=True)
        with self._locked():
            if not self._path.exists():
                self._save()  # a fresh genesis, fixed on disk before anything refers to it
                log.info("anchor.local.created path=%s", self._path)
            self._refresh()
        w3 = Web3(EthereumTesterProvider(EthereumTester(self._backend)))
        super().__init__(w3, f"in-process chain {state_dir}", Account.from_key(DEV_PRIVATE_KEY), 5.0)

    def anchor(self, payload: bytes) -> AnchorReceipt:
        self._check_open()
        with self._locked():
            self._refresh()
            try:
                receipt = super().anchor(payload)
                self._save()
            except BaseException:
                self._loaded = None  # memory may hold a block the disk does not: reload next time
                raise
        return receipt

    def verify(self, receipt: AnchorReceipt, payload: bytes, *, index: int | None = None) -> None:
        self._check_open()
        with self._thread_lock:
            self._refresh()
            super().verify(receipt, payload, index=index)

    def close(self) -> None:
        super().close()
        self._backend.chain = None

    def _status(self, receipt: AnchorReceipt, tx_index: int) -> int:
        # eth-tester's receipt lookup scans the chain for the hash; py-evm can read the block's
        # receipts directly. A post-Byzantium receipt's ``state_root`` field holds the status byte,
        # which is what eth-tester's own serializer reports as ``status``.
        chain = self._backend.chain
        block = chain.get_canonical_block_by_number(receipt.block_number)
        return int.from_bytes(block.get_receipts(chain.chaindb)[tx_index].state_root, "big")

    # -- persistence -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._thread_lock, open(self._lock_path, "a+b") as fh:
            deadline = time.monotonic() + self._LOCK_WAIT_S
            while True:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                    if time.monotonic() > deadline:
                        raise AnchorError(
                            f"another process has held {self._lock_path} for {self._LOCK_WAIT_S:g} s;"
                            " wait for its anchor to finish, or check for a stuck qctrace process"
                        ) from None
                    time.sleep(0.02)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _file_id(self) -> tuple[int, int, int]:
        st = self._path.stat()
        return st.st_ino, st.st_size, st.st_mtime_ns

    def _refresh(self) -> None:
        """Rebuild the chain from disk if the file changed since we read it (another process anchored)."""
        from eth.db.atomic import AtomicDB
        from eth.db.backends.memory import MemoryDB

        try:
            file_id = self._file_id()
        except FileNotFoundError:
            raise AnchorError(
                f"the in-process chain's state {self._path} is gone; every anchor made on it is unverifiable."
                " Restore it from backup"
            ) from None
        if file_id == self._loaded:
            return
        t0 = time.perf_counter()
        data = self._path.read_bytes()
        header, kv = self._decode(data)
        self._backend.chain = self._chain_cls(AtomicDB(MemoryDB(kv)))
        self._loaded = file_id
        if header.get("versions") != _versions():
            log.warning("anchor.local.versions_changed path=%s stored=%s running=%s", self._path,
                        header.get("versions"), _versions())
        log.info("anchor.local.loaded path=%s head=%d entries=%d bytes=%d ms=%.1f", self._path,
                 header["head"], len(kv), len(data), (time.perf_counter() - t0) * 1e3)

    def _save(self) -> None:
        chain = self._backend.chain
        kv: dict[bytes, bytes] = chain.chaindb.db.wrapped_db.kv_store
        head = chain.get_canonical_head()
        header = {"head": head.block_number, "head_hash": "0x" + head.hash.hex(), "versions": _versions()}
        parts = [self._MAGIC, json.dumps(header, sort_keys=True).encode() + b"\n", struct.pack(">Q", len(kv))]
        for key, value in kv.items():
            parts += (struct.pack(">II", len(key), len(value)), key, value)
        body = b"".join(parts)
        data = body + hashlib.sha256(body).digest()
        tmp = self._path.with_name(f".{STATE_FILE}.{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self._path)
        dir_fd = os.open(self._dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        self._loaded = self._file_id()
        log.info("anchor.local.saved path=%s head=%d entries=%d bytes=%d", self._path, head.block_number, len(kv),
                 len(data))

    def _decode(self, data: bytes) -> tuple[dict[str, Any], dict[bytes, bytes]]:
        def corrupt(why: str) -> AnchorError:
            return AnchorError(
                f"the in-process chain's state {self._path} is corrupt ({why}); restore it from backup -"
                " anchors made on it cannot be verified without it"
            )

        body, digest = data[:-32], data[-32:]
        if not data.startswith(self._MAGIC) or len(data) < len(self._MAGIC) + 32:
            raise corrupt("not a qctrace EVM state file")
        if hashlib.sha256(body).digest() != digest:
            raise corrupt("checksum mismatch")
        view = memoryview(body)
        eol = body.index(b"\n", len(self._MAGIC))
        header = json.loads(body[len(self._MAGIC):eol])
        pos = eol + 1
        (count,) = struct.unpack_from(">Q", view, pos)
        pos += 8
        kv: dict[bytes, bytes] = {}
        for _ in range(count):
            klen, vlen = struct.unpack_from(">II", view, pos)
            pos += 8
            kv[bytes(view[pos:pos + klen])] = bytes(view[pos + klen:pos + klen + vlen])
            pos += klen + vlen
        if pos != len(body):
            raise corrupt("length mismatch")
        return header, kv


def _hex_or_none(value: bytes | None) -> str | None:
    return None if value is None else "0x" + bytes(value).hex()


def _versions() -> dict[str, str]:
    return {name: metadata.version(name) for name in ("py-evm", "eth-tester")}


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
    bounds the wait for the anchor to be mined.
    """
    if not rpc_url:
        if private_key and private_key.lower().removeprefix("0x") != DEV_PRIVATE_KEY[2:]:
            raise ConfigError(
                "the in-process anchor chain (empty [ledger.anchor] rpc_url) only funds eth-tester's dev account;"
                " unset the variable named by [ledger.anchor] private_key_env, or set rpc_url to a real node"
            )
        return _LocalChain(state_dir)

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

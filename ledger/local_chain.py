"""eth-tester's in-process py-evm chain, persisted in a directory so that other processes see its blocks.

The default anchoring chain (empty ``[ledger.anchor] rpc_url``). See :class:`LocalChain` for how
it is kept on disk and for its limits; :func:`ledger.anchor.open_chain` is how to get one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from eth_account import Account
from eth_tester.exceptions import ValidationError as TesterValidationError
from web3 import Web3

from ledger.anchor import DEV_PRIVATE_KEY, AnchorReceipt, Chain
from qctrace.errors import AnchorError

__all__ = ["LOCK_FILE", "STATE_FILE", "LocalChain"]

log = logging.getLogger(__name__)
_T = TypeVar("_T")

STATE_FILE = "evm-state.bin"
LOCK_FILE = "evm-state.lock"


class LocalChain(Chain):
    """eth-tester's in-process py-evm chain, persisted in ``state_dir`` between processes.

    How: py-evm keeps *everything* (headers, canonical-chain index, block bodies, receipts, state
    trie) in one key-value store, ``chain.chaindb.db`` - an ``AtomicDB`` over a ``MemoryDB`` whose
    ``kv_store`` is a plain ``dict[bytes, bytes]``. ``MiningChain(base_db)`` rebuilds a chain from
    such a store alone: it reads the canonical head from the store and starts a new pending block on
    top. So after each write (an anchor, or the empty blocks that confirm it) the whole dict is
    written to ``evm-state.bin`` (temp file, fsync, rename, fsync the directory), and a later process
    loads the dict and rebuilds the chain: same blocks, same hashes, same account nonce. The chain
    class (PragueVM rules, eth-tester's chain id) is taken from a throwaway ``PyEVMBackend``, so it
    is exactly eth-tester's.

    Concurrency: a write holds an exclusive ``flock`` on ``evm-state.lock`` from reloading the
    latest state to renaming the new file, so two anchoring processes are serialised and neither
    loses the other's block. Readers need no lock: the rename is atomic, and every call reloads the
    file if it changed since it was read.

    Limits: each anchor rewrites the whole file (~1.9 KB per anchor: 100 anchors ~190 KB, so 10 000
    anchors ~19 MB per write) - fine for checkpoints, wrong for high-rate use. The whole chain is
    held in memory. The file is only meaningful to the same py-evm fork rules (PragueVM today):
    py-evm/eth-tester versions are recorded in the header and a change is logged, not refused. A
    missing state directory is created with a new genesis, so deleting it makes every earlier
    anchor fail as "does not exist". POSIX only (``fcntl``). Nothing else makes blocks here, so
    confirmations are mined on purpose (:meth:`confirm_blocks`), and nothing reorganises it. And it
    is a stand-in for a real chain - see ``ledger.anchor``.
    """

    produces_own_blocks: ClassVar[bool] = True
    _NODE_REFUSALS: ClassVar[tuple[type[Exception], ...]] = (*Chain._NODE_REFUSALS, TesterValidationError)
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
        self._tester = EthereumTester(self._backend)
        w3 = Web3(EthereumTesterProvider(self._tester))
        super().__init__(w3, f"in-process chain {state_dir}", Account.from_key(DEV_PRIVATE_KEY), 5.0)

    def confirm_blocks(self, count: int) -> None:
        self._write("mine confirming blocks", lambda: self._tester.mine_blocks(count))

    def _read(self, doing: str, fn: Callable[[], _T]) -> _T:
        self._check_open()
        with self._thread_lock:
            self._refresh()
            return super()._read(doing, fn)

    def _write(self, doing: str, fn: Callable[[], _T]) -> _T:
        self._check_open()
        with self._locked():
            self._refresh()
            try:
                result = super()._write(doing, fn)
                self._save()
            except BaseException:
                self._loaded = None  # memory may hold a block the disk does not: reload next time
                raise
        return result

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


def _versions() -> dict[str, str]:
    return {name: metadata.version(name) for name in ("py-evm", "eth-tester")}

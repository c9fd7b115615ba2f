"""A real JSON-RPC node for tests: eth-tester's py-evm chain served over HTTP on loopback.

Requests go through web3's ``EthereumTesterProvider`` and come back through ``Web3.to_json``, so
the client under test talks plain JSON-RPC over TCP, exactly as to a real node. The test keeps a
hand on the chain itself (``mine``, ``snapshot``/``revert`` for reorganisations, ``auto_mine`` off
for stuck transactions) and on the server (``stop`` refuses connections, ``hang`` accepts them and
never answers, ``start`` serves again on the same port).
"""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from eth_tester import EthereumTester, PyEVMBackend
from web3 import EthereumTesterProvider, Web3

#: eth-tester's second genesis account (funded); the dev default (0x..01) is left to the in-process chain.
FUNDED_KEY = "0x" + "00" * 31 + "02"
FUNDED_ADDRESS = "0x2B5AD5c4795c026514f8317c7a215E218DcCD6cF"


class EvmNode:
    def __init__(self) -> None:
        self.tester = EthereumTester(PyEVMBackend())
        self.w3 = Web3(EthereumTesterProvider(self.tester))
        self.lock = threading.Lock()  # one request, or one test action on the chain, at a time
        self.requests = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._hang: socket.socket | None = None
        self._port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    # -- the server --------------------------------------------------------------------------------

    def start(self) -> EvmNode:
        self._close_hang()
        node = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                reply: dict[str, Any] = {"jsonrpc": "2.0", "id": request["id"]}
                try:
                    with node.lock:
                        node.requests += 1
                        result = node.w3.manager.request_blocking(request["method"], request["params"])
                    reply["result"] = None if result is None else json.loads(Web3.to_json(result))
                except Exception as exc:  # a JSON-RPC server answers every failure with an error object
                    reply["error"] = {"code": -32000, "message": str(exc)}
                body = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self._port), Handler)
        self._server.daemon_threads = True
        self._port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """The node is down: connections to its port are refused."""
        self._close_hang()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            assert self._thread is not None
            self._thread.join()
            self._server = None

    def hang(self) -> None:
        """The node is wedged: the port accepts connections (kernel backlog) and never answers."""
        self.stop()
        self._hang = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._hang.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._hang.bind(("127.0.0.1", self._port))
        self._hang.listen(16)

    def _close_hang(self) -> None:
        if self._hang is not None:
            self._hang.close()  # connections waiting in the backlog are reset
            self._hang = None

    # -- the chain ---------------------------------------------------------------------------------

    def mine(self, blocks: int = 1) -> None:
        with self.lock:
            self.tester.mine_blocks(blocks)

    def auto_mine(self, on: bool) -> None:
        with self.lock:
            if on:
                self.tester.enable_auto_mine_transactions()
            else:
                self.tester.disable_auto_mine_transactions()

    def snapshot(self) -> int:
        with self.lock:
            return self.tester.take_snapshot()

    def revert(self, snapshot: int) -> None:
        """Drop every block after the snapshot: what a reorganisation does to a node's view."""
        with self.lock:
            self.tester.revert_to_snapshot(snapshot)

    def nonce(self, address: str = FUNDED_ADDRESS) -> int:
        """Transactions mined from ``address``: how many anchors it has ever paid for."""
        with self.lock:
            return self.tester.get_nonce(address)

    def head(self) -> int:
        with self.lock:
            return self.w3.eth.block_number

    def receipt_block(self, tx_hash: str) -> int | None:
        """The block ``tx_hash`` is mined in, None if in none."""
        from web3.exceptions import TransactionNotFound

        with self.lock:
            try:
                return self.w3.eth.get_transaction_receipt(tx_hash)["blockNumber"]
            except TransactionNotFound:
                return None

    def in_pool(self, tx_hash: str) -> bool:
        """Whether ``tx_hash`` waits in the pool, mined in no block (auto-mining off)."""
        from web3.exceptions import TransactionNotFound

        with self.lock:
            try:
                return self.w3.eth.get_transaction(tx_hash)["blockNumber"] is None
            except TransactionNotFound:
                return False

    def send_raw(self, raw: str) -> None:
        """A transaction arriving from elsewhere (a peer still propagating an old one)."""
        with self.lock:
            self.w3.eth.send_raw_transaction(raw)

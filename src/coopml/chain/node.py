"""Serve the embedded py-evm chain over JSON-RPC on 127.0.0.1, so several agent processes share
one "embedded default" chain:

    python -m coopml.chain.node --port 8545

Each request goes through web3's EthereumTesterProvider pipeline (the same code the in-process
backend uses), one at a time under a lock; reverts come back as JSON-RPC errors with the revert
bytes in `data` (like geth/anvil), and `evm_increaseTime` / `evm_mine` move the clock.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from hexbytes import HexBytes
from web3 import EthereumTesterProvider, Web3
from web3.datastructures import AttributeDict

from coopml.chain.backends import revert_data_from_exception


ESTIMATE_GAS = 8_000_000  # what eth_estimateGas answers; eth-tester's block gas limit is 30M


def _jsonable(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, HexBytes)):
        return "0x" + bytes(value).hex()
    if isinstance(value, (dict, AttributeDict)):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return hex(value)
    return value


class EmbeddedRPC:
    """JSON-RPC request handler over one in-process eth-tester chain (thread-safe)."""

    def __init__(self) -> None:
        from eth_tester import EthereumTester, PyEVMBackend

        self.tester = EthereumTester(PyEVMBackend())
        self.w3 = Web3(EthereumTesterProvider(self.tester))
        self.lock = threading.Lock()

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        rid = request.get("id")
        method = request.get("method", "")
        params = request.get("params") or []
        try:
            with self.lock:
                result = self._dispatch(method, params)
            return {"jsonrpc": "2.0", "id": rid, "result": _jsonable(result)}
        except Exception as exc:  # noqa: BLE001 - every failure becomes a JSON-RPC error
            data = revert_data_from_exception(exc)
            if data is not None or "revert" in str(exc).lower():
                error = {"code": 3, "message": "execution reverted",
                         "data": "0x" + (data or b"").hex()}
            else:
                error = {"code": -32000, "message": f"{type(exc).__name__}: {exc}"}
            return {"jsonrpc": "2.0", "id": rid, "error": error}

    def _dispatch(self, method: str, params: list[Any]) -> Any:
        if method == "evm_increaseTime":
            seconds = int(params[0], 16) if isinstance(params[0], str) else int(params[0])
            now = self.tester.get_block_by_number("latest")["timestamp"]
            self.tester.time_travel(now + seconds + 1)  # eth-tester mines it at target - 1
            return seconds
        if method == "evm_mine":
            self.tester.mine_blocks(1)
            return "0x0"
        if method == "web3_clientVersion":
            return "coopml-embedded-node/py-evm"
        if method == "eth_estimateGas":
            # py-evm estimates by binary search (~14 executions per transaction); a dev chain can
            # answer with one execution (which surfaces reverts) and a safe fixed limit instead
            self.w3.manager.request_blocking("eth_call", [params[0], params[1] if len(params) > 1 else "latest"])
            return ESTIMATE_GAS
        if method == "eth_chainId":
            return self.w3.eth.chain_id
        # request_blocking runs the provider's middleware, which maps the standard JSON-RPC
        # shapes to eth-tester's (snake_case, ints) and back
        return self.w3.manager.request_blocking(method, params)


def _make_handler(rpc: EmbeddedRPC) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server naming
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            try:
                request = json.loads(body)
            except json.JSONDecodeError:
                reply: Any = {"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "parse error"}}
            else:
                reply = [rpc.handle(r) for r in request] if isinstance(request, list) else rpc.handle(request)
            payload = json.dumps(reply).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:  # quiet
            pass

    return Handler


def serve(port: int, host: str = "127.0.0.1") -> None:
    server = ThreadingHTTPServer((host, port), _make_handler(EmbeddedRPC()))
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"coopml embedded chain listening on http://{host}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8545)
    parser.add_argument("--host", default="127.0.0.1", help="only loopback addresses are sensible")
    args = parser.parse_args(argv)
    serve(args.port, args.host)


if __name__ == "__main__":
    sys.exit(main())

"""Serve the embedded development chain (`coopml.chain.devchain`: py-evm) over JSON-RPC on
127.0.0.1, so agent processes, ethers.js, viem, cast or curl share one chain:

    python -m coopml.chain.node --port 8545                      # a block every second
    python -m coopml.chain.node --block-time 0                   # mine on transaction (tests)
    python -m coopml.chain.node --state ~/.coopml/chain.sqlite   # keep the chain across restarts

HTTP/1.1 with keep-alive and JSON-RPC batches. Reverts come back as `{code: 3, message:
"execution reverted", data: 0x<revert bytes>}` (the shape geth and anvil use, which ethers and
viem decode into custom errors). Stopping the node (SIGTERM / SIGINT) mines what is pooled and
writes the state file; with `--state` every mined block is also committed as it is mined.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import sys
import threading
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self

from coopml.chain.devchain import DEV_BALANCE_WEI, DevChain, RPCError

MAX_BODY = 64 * 1024 * 1024


def _reply(rid: Any, result: Any = None, error: RPCError | None = None) -> dict[str, Any]:
    if error is not None:
        return {"jsonrpc": "2.0", "id": rid, "error": error.as_json()}
    return {"jsonrpc": "2.0", "id": rid, "result": result}


def handle_payload(chain: DevChain, request: Any) -> Any:
    """One decoded JSON-RPC payload (a call or a batch) -> the reply object."""
    if isinstance(request, list):
        if not request:
            return _reply(None, error=RPCError(-32600, "empty batch"))
        calls, ids, bad = [], [], {}
        for i, r in enumerate(request):
            if not isinstance(r, dict) or not isinstance(r.get("method"), str):
                bad[i] = _reply(r.get("id") if isinstance(r, dict) else None,
                                error=RPCError(-32600, "invalid request"))
                continue
            calls.append((r["method"], r.get("params")))
            ids.append((i, r.get("id")))
        results = _safe(lambda: chain.request_batch(calls), len(calls))
        replies: list[Any] = [None] * len(request)
        for (i, rid), res in zip(ids, results):
            replies[i] = _reply(rid, error=res) if isinstance(res, RPCError) else _reply(rid, res)
        for i, rep in bad.items():
            replies[i] = rep
        return replies
    if not isinstance(request, dict) or not isinstance(request.get("method"), str):
        return _reply(None, error=RPCError(-32600, "invalid request"))
    rid = request.get("id")
    try:
        return _reply(rid, chain.request(request["method"], request.get("params")))
    except RPCError as exc:
        return _reply(rid, error=exc)
    except Exception as exc:  # noqa: BLE001 - a bug must not kill the server; the caller sees it
        traceback.print_exc(file=sys.stderr)
        return _reply(rid, error=RPCError(-32603, f"internal error: {type(exc).__name__}: {exc}"))


def _safe(fn: Any, n: int) -> list[Any]:
    try:
        return list(fn())
    except Exception as exc:  # noqa: BLE001
        traceback.print_exc(file=sys.stderr)
        return [RPCError(-32603, f"internal error: {type(exc).__name__}: {exc}")] * n


def make_handler(chain: DevChain) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: no TCP handshake per request
        disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall

        def setup(self) -> None:
            super().setup()
            getattr(self.server, "open_connections", set()).add(self.connection)

        def finish(self) -> None:
            super().finish()
            getattr(self.server, "open_connections", set()).discard(self.connection)

        def do_POST(self) -> None:  # http.server naming
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                self._send(413, {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "request too large"}})
                return
            body = self.rfile.read(length)
            try:
                request = json.loads(body)
            except (json.JSONDecodeError, UnicodeDecodeError):
                reply: Any = {"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "parse error"}}
            else:
                reply = handle_payload(chain, request)
            self._send(200, reply)

        def do_GET(self) -> None:  # a health check for humans and scripts
            self._send(200, {"client": "coopml-devchain", "blockTime": chain.block_time,
                             "blockNumber": int(chain.head.block_number)})

        def _send(self, status: int, reply: Any) -> None:
            payload = json.dumps(reply).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:  # quiet
            pass

    return Handler


class ThreadedNode:
    """A DevChain served over HTTP from threads of this process (tests, notebooks): `url`,
    `stop()`. The same server as `python -m coopml.chain.node`, without a process to start."""

    def __init__(self, chain: DevChain, port: int = 0, host: str = "127.0.0.1") -> None:
        self.chain = chain
        self.server = ThreadingHTTPServer((host, port), make_handler(chain))
        self.server.daemon_threads = True
        self.server.open_connections = set()  # type: ignore[attr-defined]
        self.url = f"http://{host}:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
        chain.start()
        self._thread.start()

    def stop(self) -> None:
        """Stop as a killed node would look to clients: kept-alive connections are cut too."""
        self.server.shutdown()
        self.server.server_close()
        for conn in list(self.server.open_connections):  # type: ignore[attr-defined]
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.chain.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(port: int, host: str = "127.0.0.1", block_time: float = 1.0, state: Path | None = None,
          accounts: int = 10, balance_wei: int = DEV_BALANCE_WEI, chain_id: int | None = None) -> None:
    chain = DevChain(block_time=block_time, state_path=state, accounts=accounts, balance_wei=balance_wei,
                     chain_id=chain_id)
    server = ThreadingHTTPServer((host, port), make_handler(chain))
    server.daemon_threads = True

    def shutdown(*_: Any) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    chain.start()
    mode = f"a block every {block_time:g} s" if block_time > 0 else "a block per transaction batch"
    restored = f", state {state} (block {int(chain.head.block_number)})" if state else ""
    print(f"coopml embedded chain listening on http://{host}:{server.server_address[1]} "
          f"(chain id {chain.chain_id}, {mode}{restored})", flush=True)
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()
        chain.stop()
        print("coopml embedded chain stopped" + (f"; state written to {state}" if state else ""), flush=True)


def main(argv: list[str] | None = None) -> int:
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(prog="python -m coopml.chain.node", description=doc.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(doc.splitlines()[2:8]))
    parser.add_argument("--port", type=int, default=8545)
    parser.add_argument("--host", default="127.0.0.1", help="only loopback addresses are sensible")
    parser.add_argument("--block-time", type=float, default=1.0,
                        help="seconds between blocks (default 1: the clock moves even when idle); "
                             "0 = mine each submission at once (tests)")
    parser.add_argument("--state", type=Path, default=None,
                        help="SQLite file to load the chain from and commit every block to")
    parser.add_argument("--accounts", type=int, default=10, help="dev accounts (keys 1..N, dev only)")
    parser.add_argument("--balance", type=int, default=DEV_BALANCE_WEI // 10**18, help="ETH per dev account")
    parser.add_argument("--chain-id", type=int, default=None)
    args = parser.parse_args(argv)
    serve(args.port, args.host, args.block_time, args.state, args.accounts, args.balance * 10**18, args.chain_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())

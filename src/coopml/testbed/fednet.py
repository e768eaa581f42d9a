"""FedAvg over a real network: a server process and one process per client exchanging weights
over TCP, for the Case Study III comparison on the testbed's links.

The math is coopml.sim.fedavg's (`local_train`, `fedavg_aggregate`, the same seeds per round and
client), so a networked run computes the same global model as `run_fedavg` in one process; this
module only moves the weights. Every message is a frame: 4-byte length + JSON header, then
`header["size"]` payload bytes (safetensors, never pickle).

  client -> server  hello   {client, n_samples}
  server -> client  round   {round, size} + global weights       (each round)
  client -> server  update  {round, size, n_samples, train_s} + local weights
  server -> client  done    {accuracy}

    python -m coopml.testbed.fednet server --bind IP --port P --job JOB.json --out RESULT.json
    python -m coopml.testbed.fednet client --server IP:P --name NAME --job JOB.json
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import sys
import threading
import time
from pathlib import Path
from typing import Any

MAX_HEADER = 1 << 16
MAX_PAYLOAD = 1 << 30


class ProtocolError(Exception):
    """The peer sent something that is not a well-formed frame of this protocol."""


class Conn:
    """A TCP connection carrying frames; counts application bytes each way."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sent = 0
        self.received = 0

    def send(self, header: dict[str, Any], payload: bytes = b"") -> None:
        head = json.dumps({**header, "size": len(payload)}).encode()
        data = struct.pack(">I", len(head)) + head + payload
        self.sock.sendall(data)
        self.sent += len(data)

    def _exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(min(n - len(buf), 1 << 20))
            if not chunk:
                raise ProtocolError(f"connection closed after {len(buf)} of {n} bytes")
            buf += chunk
        self.received += n
        return bytes(buf)

    def recv(self, expect: str) -> tuple[dict[str, Any], bytes]:
        (n,) = struct.unpack(">I", self._exact(4))
        if n > MAX_HEADER:
            raise ProtocolError(f"header of {n} bytes is too large")
        try:
            header = json.loads(self._exact(n))
        except json.JSONDecodeError as exc:
            raise ProtocolError(f"bad header: {exc}") from None
        if not isinstance(header, dict) or header.get("type") != expect:
            raise ProtocolError(f"expected a {expect!r} message, got {str(header)[:200]}")
        size = header.get("size", 0)
        if not isinstance(size, int) or not 0 <= size <= MAX_PAYLOAD:
            raise ProtocolError(f"bad payload size {size!r}")
        return header, self._exact(size)


def _to_bytes(state: Any) -> bytes:
    from safetensors.torch import save
    return save({k: v.detach().contiguous().cpu() for k, v in state.items()})


def _from_bytes(data: bytes) -> dict[str, Any]:
    from safetensors.torch import load
    return dict(load(data))


# ------------------------------------------------------------------------------ server

def serve(job: dict[str, Any], bind: str, port: int, accept_timeout: float = 600.0,
          test: Any = None, ready: threading.Event | None = None) -> dict[str, Any]:
    """Run the FedAvg server for `job`; return the result (accuracy per round, bytes, timings)."""
    from coopml.data import load_dataset
    from coopml.models import build_model, evaluate
    from coopml.sim.fedavg import fedavg_aggregate

    names = list(job["clients"])
    if test is None:
        test = load_dataset(job["dataset"], "test")
        if job.get("n_test"):
            import numpy as np
            test = test.subset(np.arange(min(int(job["n_test"]), len(test))))
    t0 = time.monotonic()
    lsock = socket.create_server((bind, port))
    lsock.settimeout(accept_timeout)
    if ready is not None:
        ready.set()
    conns: dict[str, Conn] = {}
    samples: dict[str, int] = {}
    try:
        while len(conns) < len(names):
            sock, _ = lsock.accept()
            sock.settimeout(accept_timeout)
            c = Conn(sock)
            hello, _ = c.recv("hello")
            if hello.get("client") not in names or hello["client"] in conns:
                sock.close()
                raise ProtocolError(f"unexpected client {hello.get('client')!r}")
            conns[hello["client"]] = c
            samples[hello["client"]] = int(hello["n_samples"])
    finally:
        lsock.close()
    t_connected = time.monotonic()
    model = build_model(job["arch"], job["seed"])
    rounds = []
    for r in range(int(job["rounds"])):
        tr = time.monotonic()
        payload = _to_bytes(model.state_dict())
        updates: dict[str, tuple[dict[str, Any], bytes]] = {}
        errors: list[BaseException] = []

        def exchange(name: str, c: Conn, r: int = r, payload: bytes = payload,
                     updates: dict[str, tuple[dict[str, Any], bytes]] = updates,
                     errors: list[BaseException] = errors) -> None:
            try:
                c.send({"type": "round", "round": r}, payload)
                updates[name] = c.recv("update")
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
        threads = [threading.Thread(target=exchange, args=(n, c)) for n, c in conns.items()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        t_collected = time.monotonic()
        order = list(model.state_dict())                               # safetensors stores keys sorted
        states = [{k: s[k] for k in order} for s in (_from_bytes(updates[n][1]) for n in names)]  # client order
        model.load_state_dict(fedavg_aggregate(states, [float(samples[n]) for n in names]))
        acc = evaluate(model, test)
        rounds.append({"round": r + 1, "accuracy": acc, "exchange_s": round(t_collected - tr, 3),
                       "aggregate_eval_s": round(time.monotonic() - t_collected, 3),
                       "client_train_s": {n: updates[n][0].get("train_s") for n in names}})
    for c in conns.values():
        c.send({"type": "done", "accuracy": rounds[-1]["accuracy"] if rounds else None})
        c.sock.close()
    return {"accuracy": rounds[-1]["accuracy"] if rounds else None, "rounds": rounds,
            "connect_s": round(t_connected - t0, 3), "train_s": round(time.monotonic() - t_connected, 3),
            "model_bytes": len(_to_bytes(model.state_dict())),
            "app_bytes": {n: {"server_sent": c.sent, "server_received": c.received} for n, c in conns.items()},
            "final_state": model.state_dict()}


# ------------------------------------------------------------------------------ client

def run_client(job: dict[str, Any], name: str, server: str, data: Any = None, connect_timeout: float = 120.0
               ) -> dict[str, Any]:
    from coopml.models import build_model
    from coopml.sim.fedavg import local_train

    if data is None:
        from coopml.testbed.workload import fedavg_client_data
        data = fedavg_client_data(job, name)
    k = list(job["clients"]).index(name)
    host, port = server.rsplit(":", 1)
    deadline = time.monotonic() + connect_timeout
    while True:
        try:
            sock = socket.create_connection((host, int(port)), timeout=10)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    sock.settimeout(None)
    c = Conn(sock)
    c.send({"type": "hello", "client": name, "n_samples": len(data)})
    trained = 0
    while True:
        (n,) = struct.unpack(">I", c._exact(4))
        header = json.loads(c._exact(n))
        payload = c._exact(int(header.get("size", 0)))
        if header.get("type") == "done":
            break
        if header.get("type") != "round":
            raise ProtocolError(f"unexpected message {str(header)[:200]}")
        r = int(header["round"])
        local = build_model(job["arch"])
        local.load_state_dict(_from_bytes(payload))
        t = time.monotonic()
        local_train(local, data, int(job["local_epochs"]), float(job.get("lr", 1e-3)), int(job.get("batch_size", 50)),
                    seed=int(job["seed"]) * 1000 + r * 10 + k)
        c.send({"type": "update", "round": r, "n_samples": len(data), "train_s": round(time.monotonic() - t, 3)},
               _to_bytes(local.state_dict()))
        trained += 1
    sock.close()
    return {"client": name, "rounds": trained, "sent": c.sent, "received": c.received}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m coopml.testbed.fednet")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("server")
    s.add_argument("--bind", required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--job", type=Path, required=True)
    s.add_argument("--out", type=Path, required=True)
    c = sub.add_parser("client")
    c.add_argument("--server", required=True)
    c.add_argument("--name", required=True)
    c.add_argument("--job", type=Path, required=True)
    c.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    import torch
    torch.set_num_threads(1)          # one process per node: do not oversubscribe the shared cores
    job = json.loads(args.job.read_text())
    if args.cmd == "server":
        result = serve(job, args.bind, args.port)
        from safetensors.torch import save_file
        state = result.pop("final_state")
        save_file({k: v.contiguous() for k, v in state.items()}, str(args.out.with_suffix(".safetensors")))
        args.out.write_text(json.dumps(result, indent=1))
    else:
        result = run_client(job, args.name, args.server)
        if args.out:
            args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "rounds"} if args.cmd == "server" else result),
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

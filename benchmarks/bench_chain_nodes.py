"""Node throughput: the embedded node (`python -m coopml.chain.node`) against anvil, with
transactions signed BEFORE the clock starts, so the figure is the node's, not the client's.

Two workloads per node, both plain ETH transfers from several funded local keys:
- burst: every pre-signed transaction is sent as fast as 4 keep-alive connections can
  (eth_sendRawTransaction), then every receipt is awaited; tx/s = N / (last receipt - first send);
- sequential: one client sends one transaction and polls its receipt before the next (what an
  agent does); tx/s = N / elapsed.

    .venv/bin/python benchmarks/bench_chain_nodes.py                  # N=400 burst, 100 sequential
    .venv/bin/python benchmarks/bench_chain_nodes.py --quick          # N=100 / 30
    .venv/bin/python benchmarks/bench_chain_nodes.py --baseline-src /tmp/old/src   # + an older node

`--baseline-src DIR` also measures the `coopml.chain.node` found in DIR (e.g. a `git archive` of an
earlier commit), which takes no --block-time (it mines per transaction). Figures are wall-clock on
a shared 2-core machine: the load average is printed with them.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import requests
from eth_account import Account
from eth_utils import keccak

from coopml.chain.processes import (
    NodeProcess,
    _spawn,
    _wait_ready,
    anvil_binary,
    free_port,
    start_anvil,
    start_embedded_node,
)

ANVIL_KEY0 = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
EMBEDDED_KEY0 = "0x" + "00" * 31 + "01"


@dataclass
class Rpc:
    url: str

    def __post_init__(self) -> None:
        self.local = threading.local()

    @property
    def session(self) -> requests.Session:
        s = getattr(self.local, "s", None)
        if s is None:
            s = self.local.s = requests.Session()
        return s

    def __call__(self, method: str, *params: Any) -> Any:
        r = self.session.post(self.url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)},
                              timeout=120).json()
        if "error" in r:
            raise RuntimeError(f"{method}: {r['error']}")
        return r["result"]


def wait_receipt(rpc: Rpc, tx_hash: str, timeout: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    interval = 0.001
    while time.monotonic() < deadline:
        receipt = rpc("eth_getTransactionReceipt", tx_hash)
        if receipt:
            return receipt
        time.sleep(interval)
        interval = min(interval * 2, 0.05)
    raise TimeoutError(tx_hash)


def fund(rpc: Rpc, funder_key: str, addresses: list[str], chain_id: int) -> None:
    funder = Account.from_key(funder_key)
    nonce = int(rpc("eth_getTransactionCount", funder.address, "pending"), 16)
    base = int(rpc("eth_getBlockByNumber", "latest", False)["baseFeePerGas"], 16)
    last = None
    for i, a in enumerate(addresses):
        tx = {"to": a, "value": 10**20, "gas": 21_000, "nonce": nonce + i, "chainId": chain_id,
              "maxFeePerGas": 4 * base + 10**9, "maxPriorityFeePerGas": 10**9}
        last = rpc("eth_sendRawTransaction", "0x" + bytes(funder.sign_transaction(tx).raw_transaction).hex())
    wait_receipt(rpc, last)


def presign(rpc: Rpc, funder_key: str, n: int, senders: int, tag: str) -> list[str]:
    chain_id = int(rpc("eth_chainId"), 16)
    keys = [keccak(text=f"bench-{tag}-{i}") for i in range(senders)]
    accounts = [Account.from_key(k) for k in keys]
    fund(rpc, funder_key, [a.address for a in accounts], chain_id)
    base = int(rpc("eth_getBlockByNumber", "latest", False)["baseFeePerGas"], 16)
    raws = []
    for i in range(n):
        acct = accounts[i % senders]
        tx = {"to": "0x000000000000000000000000000000000000dEaD", "value": 1, "gas": 21_000,
              "nonce": i // senders, "chainId": chain_id, "maxFeePerGas": 4 * base + 10**9, "maxPriorityFeePerGas": 10**9}
        raws.append("0x" + bytes(acct.sign_transaction(tx).raw_transaction).hex())
    return raws


def burst(rpc: Rpc, raws: list[str], threads: int = 4) -> float:
    hashes: list[str | None] = [None] * len(raws)

    def worker(k: int) -> None:
        for i in range(k, len(raws), threads):
            hashes[i] = rpc("eth_sendRawTransaction", raws[i])

    t0 = time.perf_counter()
    pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    for h in hashes:
        assert h is not None
        assert wait_receipt(rpc, h)["status"] == "0x1"
    return len(raws) / (time.perf_counter() - t0)


def sequential(rpc: Rpc, raws: list[str]) -> float:
    t0 = time.perf_counter()
    for raw in raws:
        assert wait_receipt(rpc, rpc("eth_sendRawTransaction", raw))["status"] == "0x1"
    return len(raws) / (time.perf_counter() - t0)


def start_baseline(src: str) -> NodeProcess:
    port = free_port()
    env_cmd = ["env", f"PYTHONPATH={src}", sys.executable, "-m", "coopml.chain.node", "--port", str(port)]
    proc = _spawn(env_cmd)
    url = f"http://127.0.0.1:{port}"
    _wait_ready(proc, url, "baseline node", 60)
    return NodeProcess(proc.pid, url, "baseline", proc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--baseline-src", default=None, help="src/ dir of an older coopml to measure too")
    parser.add_argument("--senders", type=int, default=8)
    args = parser.parse_args()
    n_burst, n_seq = (100, 30) if args.quick else (400, 100)

    nodes: list[tuple[str, Any, str]] = []
    if args.baseline_src:
        nodes.append(("embedded node, baseline (per-tx mining)", lambda: start_baseline(args.baseline_src), EMBEDDED_KEY0))
    nodes.append(("embedded node --block-time 0", lambda: start_embedded_node(block_time=0), EMBEDDED_KEY0))
    nodes.append(("embedded node --block-time 1", lambda: start_embedded_node(block_time=1), EMBEDDED_KEY0))
    if anvil_binary() is not None:
        nodes.append(("anvil (auto-mine)", lambda: start_anvil(balance_eth=1_000_000), ANVIL_KEY0))
        nodes.append(("anvil --block-time 1", lambda: start_anvil(block_time=1, balance_eth=1_000_000), ANVIL_KEY0))
    else:
        print("anvil: not installed (npm ci installs @foundry-rs/anvil-linux-amd64)")

    results: list[tuple[str, float, float]] = []
    for name, start, key in nodes:
        node = start()
        try:
            rpc = Rpc(node.url)
            tag = f"{time.time_ns()}"
            raws = presign(rpc, key, n_burst, args.senders, tag + "b")
            rate_burst = burst(rpc, raws)
            # sequential: one sender, so each transaction depends on the previous one
            seq = presign(rpc, key, n_seq, 1, tag + "s")
            rate_seq = sequential(rpc, seq)
        finally:
            node.stop()
        results.append((name, rate_burst, rate_seq))
        print(f"  {name:<44} burst {rate_burst:7.1f} tx/s   sequential {rate_seq:7.1f} tx/s", flush=True)

    load = os.getloadavg()
    print(f"\nPre-signed ETH transfers (burst N={n_burst} from {args.senders} keys over 4 connections; "
          f"sequential N={n_seq}); load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores")
    anvil = next((r for r in results if r[0] == "anvil (auto-mine)"), None)
    for name, b, s in results:
        ratio = f"  (burst x{b / anvil[1]:.2f}, sequential x{s / anvil[2]:.2f} anvil)" if anvil else ""
        print(f"  {name:<44} {b:7.1f} / {s:7.1f} tx/s{ratio}")
    try:
        import coincurve  # noqa: F401

        print("secp256k1: coincurve (C)")
    except ImportError:
        print("secp256k1: pure-Python eth-keys backend (install coincurve for ~100x faster signature recovery)")
    subprocess.run(["uptime"], check=False)


if __name__ == "__main__":
    main()

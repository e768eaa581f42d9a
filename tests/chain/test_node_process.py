"""`python -m coopml.chain.node` as a process: the clock moves by itself (--block-time), the chain
survives a restart (--state, also after SIGKILL: every block is committed), and plain HTTP
JSON-RPC (what curl sends) works, batches included."""

from __future__ import annotations

import time

import pytest
import requests
from eth_utils import keccak

from coopml.chain import load_artifact
from coopml.chain.processes import start_embedded_node


def rpc(url: str, method: str, *params):
    reply = requests.post(url, json={"jsonrpc": "2.0", "id": 7, "method": method, "params": list(params)}, timeout=30).json()
    assert reply["id"] == 7
    if "error" in reply:
        raise RuntimeError(reply["error"])
    return reply["result"]


def wait_receipt(url: str, tx_hash: str, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        receipt = rpc(url, "eth_getTransactionReceipt", tx_hash)
        if receipt:
            return receipt
        time.sleep(0.05)
    raise AssertionError(f"{tx_hash} not mined within {timeout}s")


def test_block_time_keeps_the_clock_moving_without_transactions():
    with start_embedded_node(block_time=0.5) as node:
        first = rpc(node.url, "eth_getBlockByNumber", "latest", False)
        time.sleep(2.2)
        later = rpc(node.url, "eth_getBlockByNumber", "latest", False)
        assert int(later["number"], 16) >= int(first["number"], 16) + 3
        assert int(later["timestamp"], 16) > int(first["timestamp"], 16)
        # a transaction waits for the next tick instead of mining its own block
        dev = rpc(node.url, "eth_accounts")
        h = rpc(node.url, "eth_sendTransaction", {"from": dev[0], "to": dev[1], "value": "0x1"})
        assert wait_receipt(node.url, h)["status"] == "0x1"


@pytest.mark.parametrize("stop", ["SIGTERM", "SIGKILL"])
def test_state_file_survives_a_restart(tmp_path, stop):
    state = tmp_path / "chain.sqlite"
    node = start_embedded_node(block_time=0, state=state)
    try:
        dev = rpc(node.url, "eth_accounts")
        h = rpc(node.url, "eth_sendTransaction", {"from": dev[0], "data": load_artifact("CoopML")["bytecode"]})
        coop = wait_receipt(node.url, h)["contractAddress"]
        payee = "0x" + "cd" * 20
        wait_receipt(node.url, rpc(node.url, "eth_sendTransaction", {"from": dev[0], "to": payee, "value": "0x2a"}))
        head = rpc(node.url, "eth_getBlockByNumber", "latest", False)
    finally:
        node.stop() if stop == "SIGTERM" else node.kill()
    with start_embedded_node(block_time=0, state=state) as again:
        assert rpc(again.url, "eth_getBlockByNumber", "latest", False)["hash"] == head["hash"]
        assert rpc(again.url, "eth_getBalance", payee, "latest") == "0x2a"
        assert rpc(again.url, "eth_getCode", coop, "latest") == load_artifact("CoopML")["deployedBytecode"]
        count = rpc(again.url, "eth_call", {"to": coop, "data": "0x" + keccak(text="taskCount()")[:4].hex()}, "latest")
        assert int(count, 16) == 0


def test_plain_http_single_string_address_and_batches():
    with start_embedded_node(block_time=0) as node:
        dev = rpc(node.url, "eth_accounts")
        h = rpc(node.url, "eth_sendTransaction", {"from": dev[0], "data": load_artifact("CoopML")["bytecode"]})
        coop = wait_receipt(node.url, h)["contractAddress"]
        # what `curl -d '{"method":"eth_getLogs","params":[{"address":"0x..."}]}'` sends
        body = {"jsonrpc": "2.0", "id": 1, "method": "eth_getLogs",
                "params": [{"address": coop, "fromBlock": "0x0", "toBlock": "latest"}]}
        reply = requests.post(node.url, json=body, timeout=30).json()
        assert "error" not in reply and isinstance(reply["result"], list)
        batch = [{"jsonrpc": "2.0", "id": i, "method": m, "params": p}
                 for i, (m, p) in enumerate([("eth_chainId", []), ("eth_blockNumber", []), ("no_such", []),
                                             ("eth_getCode", [coop, "latest"])])]
        replies = requests.post(node.url, json=batch, timeout=30).json()
        assert [r["id"] for r in replies] == [0, 1, 2, 3]
        assert replies[2]["error"]["code"] == -32601 and replies[3]["result"].startswith("0x6080")
        assert requests.post(node.url, data=b"{not json", timeout=30).json()["error"]["code"] == -32700

"""A foreign client — ethers.js v6 driven by a node script — reads, queries events, sends and
decodes custom errors against the embedded node and anvil, so tools outside Python (ethers,
viem, cast, wallets) work with what coopml runs.

The contract-specific part is `contract_fixture` alone (one deploy, one action that emits an
event, the views and the reverting call): adapt it there when the contract changes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from eth_utils import keccak

from conftest import NO_ANVIL
from coopml.chain import ETHER, Chain
from coopml.chain.artifacts import ARTIFACT_DIR, load_artifact
from coopml.chain.processes import anvil_binary, start_anvil, start_embedded_node
from coopml.paths import node_modules

SCRIPT = Path(__file__).parent / "foreign" / "ethers_client.cjs"


def ethers_node_path() -> str | None:
    """Where `require('ethers')` resolves: COOPML_ETHERS_NODE_PATH, the project's node_modules,
    or the helper install in /work/wt/tools/npm-ethers."""
    candidates = [os.environ.get("COOPML_ETHERS_NODE_PATH"), str(node_modules()),
                  "/work/wt/tools/npm-ethers/node_modules"]
    return next((c for c in candidates if c and (Path(c) / "ethers" / "package.json").is_file()), None)


# ------------------------------------------------------------------ the only contract-specific code

def contract_fixture(chain: Chain, deployer: str) -> dict[str, Any]:
    """Deploy CoopML, emit one event (publish a task, with arguments built from the ABI so the
    call adapts to the contract's version) and name the views and the revert to check."""
    coop, receipt = chain.deploy_contract("CoopML", deployer)
    abi = load_artifact("CoopML")["abi"]
    publish = next(f for f in abi if f.get("name") == "publishTask")
    now = chain.now()

    def value_for(item: dict[str, Any]) -> Any:
        name, kind = item["name"].lower(), item["type"]
        if kind == "tuple":
            return tuple(value_for(c) for c in item["components"])
        if kind.endswith("[]"):
            return [value_for({**item, "type": kind[:-2]})]
        if kind == "string":
            return "bafkreiforeignclient"
        if kind.startswith("bytes"):
            return b"\x11" * (int(kind[5:]) if kind[5:] else 4)
        if kind == "address":
            return deployer
        if "deadline" in name:
            return now + 3_600
        if "window" in name:
            return 600
        if name in ("maxmodels", "verifierspermodel"):
            return 1
        return 10**15 if ("reward" in name or "deposit" in name) else 10**13 if "fee" in name else 1
    args = [value_for(i) for i in publish["inputs"]]
    terms = next(a for a, i in zip(args, publish["inputs"]) if i["name"] == "terms")
    escrow = coop.functions.escrowFor(terms).call()
    published = chain.transact(coop.functions.publishTask(*args), deployer, value=escrow)
    return {"address": coop.address, "from_block": receipt["blockNumber"], "event": "TaskPublished",
            "event_block": published["blockNumber"],
            "views": [("taskCount", [], 1), ("owed", ["{me}"], 0)],
            "revert": {"fn": "withdraw", "name": "NothingToWithdraw"}}

# ------------------------------------------------------------------


@pytest.fixture(params=["embedded", pytest.param("anvil", marks=pytest.mark.anvil)])
def node(request):
    if request.param == "anvil":
        if anvil_binary() is None:
            pytest.skip(NO_ANVIL)
        proc = start_anvil()
    else:
        proc = start_embedded_node(block_time=0.5)  # interval mining, as the node users run
    yield proc
    proc.stop()


def test_ethers_reads_events_sends_and_decodes_custom_errors(node, tmp_path):
    node_path = ethers_node_path()
    if node_path is None or shutil.which("node") is None:
        pytest.skip("ethers.js not installed (npm ethers@6.17.0 into node_modules or COOPML_ETHERS_NODE_PATH)")
    chain = Chain.rpc(node.url)
    deployer = chain.dev_accounts()[0]
    fixture = contract_fixture(chain, deployer)
    me = Account.from_key(keccak(text=f"ethers-{time.time_ns()}"))
    chain.fund(me.address, ETHER)
    payee = Account.create().address
    config = {"url": node.url, "artifact": str(ARTIFACT_DIR / "CoopML.json"), "address": fixture["address"],
              "privateKey": "0x" + bytes(me.key).hex(), "fromBlock": fixture["from_block"], "event": fixture["event"],
              "views": [(n, [me.address if a == "{me}" else a for a in args]) for n, args, _ in fixture["views"]],
              "revert": {"fn": fixture["revert"]["fn"]}, "payee": payee}
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps(config))
    out = subprocess.run(["node", str(SCRIPT), str(cfg_path)], check=False, capture_output=True, text=True, timeout=180,
                         env={**os.environ, "NODE_PATH": node_path})
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["ethers"].startswith("6.")
    assert result["chainId"] == chain.w3.eth.chain_id
    for name, _, expected in fixture["views"]:
        assert result[f"view:{name}"] == str(expected)
    assert result["events"] == [{"name": fixture["event"], "block": fixture["event_block"]}]
    assert result["rawLogCount"] == len(chain.w3.eth.get_logs({"address": fixture["address"],
                                                               "fromBlock": fixture["from_block"]}))
    assert result["sent"]["status"] == 1 and chain.balance(payee) == 12345
    for how in ("send", "staticCall"):
        assert result[f"revert:{how}"]["name"] == fixture["revert"]["name"], result[f"revert:{how}"]
        assert result[f"revert:{how}"]["code"] == "CALL_EXCEPTION"
        assert result[f"revert:{how}"]["data"] == "0x" + keccak(text=fixture["revert"]["name"] + "()")[:4].hex()
    assert result["revert:staticCall"]["native"] == fixture["revert"]["name"]  # ethers' own decoding

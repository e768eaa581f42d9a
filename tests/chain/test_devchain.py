"""The development chain behind `python -m coopml.chain.node`, called in-process (fast): the
JSON-RPC methods ethers/viem/web3 need, in the shapes geth and anvil answer, and the transaction
pool's admission rules. The HTTP node itself is exercised in test_node_process.py."""

from __future__ import annotations

import pytest
from eth_account import Account
from eth_utils import keccak

from coopml.chain import load_artifact
from coopml.chain.devchain import DevChain, RPCError

TRANSFER_TOPIC = "0x" + keccak(text="Transfer(address,address,uint256)").hex()


@pytest.fixture
def dev() -> DevChain:
    chain = DevChain(block_time=0)
    yield chain
    chain.stop()


def sign(chain: DevChain, key: bytes, **tx) -> str:
    base = {"chainId": chain.chain_id, "gas": 21_000, "value": 0, "maxPriorityFeePerGas": 10**9,
            "maxFeePerGas": 10**11}
    base.update(tx)
    return "0x" + bytes(Account.sign_transaction(base, key).raw_transaction).hex()


def deploy(chain: DevChain, name: str = "CoopML") -> str:
    art = load_artifact(name)
    tx_hash = chain.request("eth_sendTransaction", [{"from": chain.dev_addresses[0], "data": art["bytecode"]}])
    receipt = chain.request("eth_getTransactionReceipt", [tx_hash])
    assert receipt["status"] == "0x1"
    return receipt["contractAddress"]


def emit_logs(chain: DevChain) -> tuple[str, list[dict]]:
    """A tiny contract whose fallback emits Transfer(from=caller, to=0xbeef, value=calldata word):
    LOG3 with topics [Transfer, caller, 0xbeef]."""
    # runtime: PUSH1 0 CALLDATALOAD PUSH1 0 MSTORE PUSH2 0xbeef CALLER PUSH32 topic PUSH1 32 PUSH1 0 LOG3 STOP
    runtime = bytes.fromhex("600035600052") + bytes.fromhex("61beef") + bytes.fromhex("33") \
        + b"\x7f" + bytes.fromhex(TRANSFER_TOPIC[2:]) + bytes.fromhex("60206000a300")
    init = bytes.fromhex(f"60{len(runtime):02x}600c60003960{len(runtime):02x}6000f3") + runtime
    creation = chain.request("eth_sendTransaction", [{"from": chain.dev_addresses[0], "data": "0x" + init.hex()}])
    address = chain.request("eth_getTransactionReceipt", [creation])["contractAddress"]
    receipts = []
    for i, sender in enumerate(chain.dev_addresses[:3]):
        h = chain.request("eth_sendTransaction", [{"from": sender, "to": address, "data": "0x" + (i + 1).to_bytes(32, "big").hex()}])
        receipts.append(chain.request("eth_getTransactionReceipt", [h]))
    return address, receipts


def test_get_logs_accepts_every_standard_filter_form(dev):
    address, receipts = emit_logs(dev)
    assert all(len(r["logs"]) == 1 for r in receipts)
    other, _ = emit_logs(dev)
    everything = dev.request("eth_getLogs", [{"fromBlock": "earliest", "toBlock": "latest"}])
    assert len(everything) == 6
    # the standard single-string address (what ethers/viem/cast/curl send), any case
    mine = dev.request("eth_getLogs", [{"address": address, "fromBlock": "0x0"}])
    assert [log["transactionHash"] for log in mine] == [r["transactionHash"] for r in receipts]
    assert dev.request("eth_getLogs", [{"address": address.lower(), "fromBlock": "0x0"}]) == mine
    # a list of addresses
    assert len(dev.request("eth_getLogs", [{"address": [address, other], "fromBlock": "0x0"}])) == 6
    # topics: exact, null wildcard, OR-list, too many positions
    sender1 = "0x" + "00" * 12 + dev.dev_addresses[1][2:].lower()
    sender2 = "0x" + "00" * 12 + dev.dev_addresses[2][2:].lower()
    assert len(dev.request("eth_getLogs", [{"address": address, "fromBlock": "0x0", "topics": [TRANSFER_TOPIC]}])) == 3
    by_sender = dev.request("eth_getLogs", [{"address": address, "fromBlock": "0x0", "topics": [None, sender1]}])
    assert [log["topics"][1] for log in by_sender] == [sender1]
    either = dev.request("eth_getLogs", [{"address": address, "fromBlock": "0x0", "topics": [None, [sender1, sender2]]}])
    assert len(either) == 2
    assert dev.request("eth_getLogs", [{"address": address, "fromBlock": "0x0",
                                        "topics": [None, None, None, TRANSFER_TOPIC]}]) == []
    # block hash, and hex/tag ranges
    block_hash = receipts[1]["blockHash"]
    assert dev.request("eth_getLogs", [{"blockHash": block_hash}]) == [by_sender[0]]
    one = int(receipts[1]["blockNumber"], 16)
    assert dev.request("eth_getLogs", [{"fromBlock": hex(one), "toBlock": hex(one)}]) == [by_sender[0]]
    assert dev.request("eth_getLogs", [{"address": address}]) == []  # default: latest block only
    log = mine[0]
    assert set(log) >= {"address", "topics", "data", "blockNumber", "blockHash", "transactionHash",
                        "transactionIndex", "logIndex", "removed"}
    assert log["data"] == "0x" + (1).to_bytes(32, "big").hex()


def test_get_logs_rejects_malformed_filters_with_invalid_params(dev):
    for bad in ({"address": "0x1234"}, {"address": 5}, {"topics": ["0x12"]},
                {"blockHash": "0x" + "00" * 32, "fromBlock": "0x0"}):
        with pytest.raises(RPCError) as exc:
            dev.request("eth_getLogs", [bad])
        assert exc.value.code == -32602


def test_call_reverts_in_the_standard_error_shape(dev):
    coop = deploy(dev)
    nothing_to_withdraw = "0x" + keccak(text="NothingToWithdraw()")[:4].hex()
    selector = "0x" + keccak(text="withdraw()")[:4].hex()
    with pytest.raises(RPCError) as exc:
        dev.request("eth_call", [{"from": dev.dev_addresses[3], "to": coop, "data": selector}, "latest"])
    assert exc.value.code == 3 and exc.value.data == nothing_to_withdraw
    assert exc.value.as_json() == {"code": 3, "message": "execution reverted", "data": nothing_to_withdraw}
    with pytest.raises(RPCError) as exc:
        dev.request("eth_estimateGas", [{"from": dev.dev_addresses[3], "to": coop, "data": selector}])
    assert exc.value.code == 3 and exc.value.data == nothing_to_withdraw
    # a caller without any ETH can still call views (no gas price for eth_call)
    count = dev.request("eth_call", [{"from": "0x" + "42" * 20, "to": coop,
                                      "data": "0x" + keccak(text="taskCount()")[:4].hex()}])
    assert int(count, 16) == 0


def test_estimate_gas_is_enough_and_tight(dev):
    art = load_artifact("CoopML")
    estimate = int(dev.request("eth_estimateGas", [{"from": dev.dev_addresses[0], "data": art["bytecode"]}]), 16)
    h = dev.request("eth_sendTransaction", [{"from": dev.dev_addresses[0], "data": art["bytecode"], "gas": hex(estimate)}])
    used = int(dev.request("eth_getTransactionReceipt", [h])["gasUsed"], 16)
    assert dev.request("eth_getTransactionReceipt", [h])["status"] == "0x1"
    assert used <= estimate <= used * 1.05 + 2_300
    assert int(dev.request("eth_estimateGas", [{"from": dev.dev_addresses[0], "to": dev.dev_addresses[1],
                                                "value": "0x1"}]), 16) == 21_000


def test_pool_admission_errors_name_their_cause(dev):
    key = keccak(text="pool-admission")
    me = Account.from_key(key).address
    with pytest.raises(RPCError, match="insufficient funds"):
        dev.request("eth_sendRawTransaction", [sign(dev, key, nonce=0, to=me)])
    dev.request("eth_sendTransaction", [{"from": dev.dev_addresses[0], "to": me, "value": hex(10**18)}])
    first = sign(dev, key, nonce=0, to=me)
    h = dev.request("eth_sendRawTransaction", [first])
    assert dev.request("eth_getTransactionReceipt", [h])["status"] == "0x1"
    with pytest.raises(RPCError, match="already known"):  # a re-broadcast of a mined tx
        dev.request("eth_sendRawTransaction", [first])
    with pytest.raises(RPCError, match="nonce too low"):
        dev.request("eth_sendRawTransaction", [sign(dev, key, nonce=0, to=me, value=1)])
    with pytest.raises(RPCError, match="invalid chain id"):
        dev.request("eth_sendRawTransaction", [sign(dev, key, nonce=1, to=me, chainId=1)])
    with pytest.raises(RPCError, match="intrinsic gas too low"):
        dev.request("eth_sendRawTransaction", [sign(dev, key, nonce=1, to=me, gas=20_000)])
    with pytest.raises(RPCError, match="max fee per gas less than block base fee"):
        dev.request("eth_sendRawTransaction", [sign(dev, key, nonce=1, to=me, maxFeePerGas=1, maxPriorityFeePerGas=1)])
    # a nonce gap waits in the pool (pending nonce unchanged), then both are mined together
    later = dev.request("eth_sendRawTransaction", [sign(dev, key, nonce=2, to=me)])
    assert dev.request("eth_getTransactionReceipt", [later]) is None
    assert dev.request("eth_getTransactionByHash", [later])["blockNumber"] is None
    assert dev.request("eth_getTransactionCount", [me, "pending"]) == "0x1"
    gap = dev.request("eth_sendRawTransaction", [sign(dev, key, nonce=1, to=me)])
    assert dev.request("eth_getTransactionReceipt", [gap])["blockNumber"] == \
        dev.request("eth_getTransactionReceipt", [later])["blockNumber"]
    assert dev.request("eth_getTransactionCount", [me, "latest"]) == "0x3"


def test_replacement_needs_a_fee_bump_and_pending_nonce_counts_the_pool():
    dev = DevChain(block_time=3600)  # interval mining, no tick during the test: blocks by evm_mine
    try:
        key = keccak(text="pool-replacement")
        me = Account.from_key(key).address
        dev.request("eth_sendTransaction", [{"from": dev.dev_addresses[0], "to": me, "value": hex(10**18)}])
        dev.request("evm_mine", [])
        stuck = dev.request("eth_sendRawTransaction", [sign(dev, key, nonce=0, to=me, maxFeePerGas=1, maxPriorityFeePerGas=1)])
        assert dev.request("eth_getTransactionCount", [me, "pending"]) == "0x1"
        assert dev.request("eth_getTransactionCount", [me, "latest"]) == "0x0"
        dev.request("evm_mine", [])
        assert dev.request("eth_getTransactionReceipt", [stuck]) is None  # fee below base fee: waits
        with pytest.raises(RPCError, match="replacement transaction underpriced"):
            dev.request("eth_sendRawTransaction", [sign(dev, key, nonce=0, to=me, value=5, maxFeePerGas=1, maxPriorityFeePerGas=1)])
        bumped = dev.request("eth_sendRawTransaction", [sign(dev, key, nonce=0, to=me, value=5)])
        assert dev.request("txpool_content", [])["pending"][me]["0"]["hash"] == bumped
        dev.request("evm_mine", [])
        assert dev.request("eth_getTransactionReceipt", [bumped])["status"] == "0x1"
        assert dev.request("eth_getTransactionByHash", [stuck]) is None  # replaced, forgotten
    finally:
        dev.stop()


def test_blocks_receipts_fees_and_filters_have_standard_shapes(dev):
    block_filter = dev.request("eth_newBlockFilter", [])
    address, _ = emit_logs(dev)
    log_filter = dev.request("eth_newFilter", [{"address": address, "topics": [TRANSFER_TOPIC]}])
    assert dev.request("eth_getFilterChanges", [log_filter]) == []
    h = dev.request("eth_sendTransaction", [{"from": dev.dev_addresses[4], "to": address, "data": "0x" + "00" * 32}])
    changes = dev.request("eth_getFilterChanges", [log_filter])
    assert [c["transactionHash"] for c in changes] == [h]
    assert dev.request("eth_getFilterChanges", [log_filter]) == []
    assert len(dev.request("eth_getFilterLogs", [log_filter])) == 1
    new_blocks = dev.request("eth_getFilterChanges", [block_filter])
    assert len(new_blocks) == 5 and new_blocks[-1] == dev.request("eth_getBlockByNumber", ["latest", False])["hash"]
    assert dev.request("eth_uninstallFilter", [block_filter]) is True
    with pytest.raises(RPCError, match="filter not found"):
        dev.request("eth_getFilterChanges", [block_filter])

    block = dev.request("eth_getBlockByNumber", ["latest", True])
    assert int(block["number"], 16) == int(dev.request("eth_blockNumber", []), 16)
    tx = block["transactions"][0]
    assert tx["hash"] == h and tx["from"] == dev.dev_addresses[4] and tx["type"] == "0x2"
    assert dev.request("eth_getBlockByHash", [block["hash"], False])["transactions"] == [h]
    assert dev.request("eth_getBlockByNumber", ["0xffffff", False]) is None
    receipt = dev.request("eth_getTransactionReceipt", [h])
    assert receipt["logs"][0]["logIndex"] == "0x0" and receipt["effectiveGasPrice"].startswith("0x")
    history = dev.request("eth_feeHistory", ["0x4", "latest", [25, 75]])
    assert len(history["baseFeePerGas"]) == 5 and len(history["reward"]) == 4
    assert int(dev.request("eth_maxPriorityFeePerGas", []), 16) > 0
    assert dev.request("net_version", []) == str(dev.chain_id)
    assert int(dev.request("eth_chainId", []), 16) == dev.chain_id
    with pytest.raises(RPCError) as exc:
        dev.request("eth_subscribe", ["newHeads"])
    assert exc.value.code == -32601


def test_increase_time_moves_the_next_block_at_least_that_far(dev):
    for _ in range(5):  # a burst runs the block clock ahead of wall time (+1 s per block)
        dev.request("evm_mine", [])
    before = int(dev.request("eth_getBlockByNumber", ["latest", False])["timestamp"], 16)
    dev.request("evm_increaseTime", [3_600])
    dev.request("evm_mine", [])
    after = int(dev.request("eth_getBlockByNumber", ["latest", False])["timestamp"], 16)
    assert after >= before + 3_600


def test_state_file_restores_contracts_balances_and_logs(tmp_path):
    path = tmp_path / "chain.sqlite"
    first = DevChain(block_time=0, state_path=path)
    address, receipts = emit_logs(first)
    coop = deploy(first)
    payee = "0x" + "ab" * 20
    first.request("eth_sendTransaction", [{"from": first.dev_addresses[0], "to": payee, "value": "0x1234"}])
    head = first.request("eth_getBlockByNumber", ["latest", False])
    logs = first.request("eth_getLogs", [{"address": address, "fromBlock": "0x0"}])
    first.stop()

    second = DevChain(block_time=0, state_path=path)
    try:
        assert second.request("eth_getBlockByNumber", ["latest", False]) == head
        assert second.request("eth_getBalance", [payee, "latest"]) == "0x1234"
        assert second.request("eth_getCode", [coop, "latest"]) == load_artifact("CoopML")["deployedBytecode"]
        assert second.request("eth_getLogs", [{"address": address, "fromBlock": "0x0"}]) == logs
        assert second.request("eth_getTransactionReceipt", [receipts[0]["transactionHash"]]) == receipts[0]
        # and it goes on from there
        second.request("eth_sendTransaction", [{"from": second.dev_addresses[0], "to": payee, "value": "0x1"}])
        assert second.request("eth_getBalance", [payee, "latest"]) == "0x1235"
    finally:
        second.stop()
    with pytest.raises(Exception, match="chain id"):
        DevChain(block_time=0, state_path=path, chain_id=1)


def test_a_state_file_that_is_not_a_database_is_refused(tmp_path):
    bad = tmp_path / "chain.sqlite"
    bad.write_text("not a database\n" * 100)
    with pytest.raises(Exception, match="chain.sqlite"):
        DevChain(block_time=0, state_path=bad)

"""TxManager: a payment retried under the same intent is never paid twice — across a crash of
the sender between journaling and broadcasting, a node restart that loses its pool, a stuck
transaction replaced with higher fees; errors name their cause."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
import time

import pytest
from eth_account import Account
from eth_utils import keccak
from web3.exceptions import TransactionNotFound

from conftest import NO_ANVIL
from coopml.chain import ETHER, Chain
from coopml.chain.devchain import DevChain
from coopml.chain.node import ThreadedNode
from coopml.chain.processes import (
    anvil_binary,
    free_port,
    start_anvil,
    start_embedded_node,
)
from coopml.chain.transactions import FeePolicy, TxJournal
from coopml.errors import (
    ChainError,
    ChainUnavailable,
    InsufficientFunds,
    TransactionReplaced,
    WrongChain,
)

FAST = FeePolicy(stuck_after_s=0.5, receipt_timeout_s=30, poll_max_s=0.05)


@pytest.fixture
def instant():
    with ThreadedNode(DevChain(block_time=0)) as node:
        yield node


@pytest.fixture
def interval():
    with ThreadedNode(DevChain(block_time=0.2)) as node:
        yield node


def funded(chain: Chain, seed: str, eth: int = 10) -> str:
    return chain.new_account(eth * ETHER, seed=f"{seed}-{time.time_ns()}")


def test_same_intent_is_paid_once_and_journal_is_private(instant, tmp_path):
    journal = tmp_path / "tx-journal.sqlite"
    chain = Chain.rpc(instant.url, journal=journal)
    me = funded(chain, "idem")
    payee = "0x" + "a1" * 20
    first = chain.send({"to": payee, "value": 12345}, me, intent="pay:invoice-1")
    again = chain.send({"to": payee, "value": 12345}, me, intent="pay:invoice-1")
    assert again["transactionHash"] == first["transactionHash"]
    assert chain.balance(payee) == 12345
    assert stat.S_IMODE(os.stat(journal).st_mode) == 0o600
    with pytest.raises(ChainError, match="journaled for another transaction"):
        chain.send({"to": payee, "value": 99}, me, intent="pay:invoice-1")
    # a new process with the same journal (restart) answers from it too
    restarted = Chain.rpc(instant.url, journal=journal)
    restarted.add_key(chain._keys[me].key)
    assert restarted.send({"to": payee, "value": 12345}, me, intent="pay:invoice-1")["transactionHash"] == \
        first["transactionHash"]
    assert chain.balance(payee) == 12345


CRASHING_SENDER = textwrap.dedent("""
    import os, sys
    from coopml.chain import Chain
    url, journal, key, payee, crash = sys.argv[1:6]
    chain = Chain.rpc(url, journal=journal)
    me = chain.add_key(bytes.fromhex(key))
    if crash == "before-broadcast":
        chain.txm.before_broadcast = lambda intent: os._exit(17)  # journaled, never sent
    receipt = chain.send({"to": payee, "value": 777}, me, intent="pay:crash-test")
    print(receipt["transactionHash"].hex(), receipt["blockNumber"])
""")


def run_sender(url: str, journal, key: bytes, payee: str, crash: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CRASHING_SENDER, url, str(journal), key.hex(), payee, crash],
                          check=False, capture_output=True, text=True, timeout=180)


@pytest.mark.parametrize("backend", ["embedded", pytest.param("anvil", marks=pytest.mark.anvil)])
def test_sender_killed_between_journal_and_broadcast_pays_once_after_restart(backend, tmp_path):
    if backend == "anvil" and anvil_binary() is None:
        pytest.skip(NO_ANVIL)
    node = start_embedded_node(block_time=0) if backend == "embedded" else start_anvil()
    try:
        chain = Chain.rpc(node.url)
        key = keccak(text=f"crash-{backend}-{time.time_ns()}")
        me = chain.add_key(key)
        chain.fund(me, ETHER)
        payee = Account.create().address
        journal = tmp_path / "journal.sqlite"
        crashed = run_sender(node.url, journal, key, payee, "before-broadcast")
        assert crashed.returncode == 17, crashed.stderr
        entry = TxJournal(journal).get("pay:crash-test")
        assert entry is not None and entry.state == "pending" and len(entry.hashes) == 1
        assert chain.balance(payee) == 0 and chain.w3.eth.get_transaction_count(me) == 0  # never broadcast
        done = run_sender(node.url, journal, key, payee, "none")
        assert done.returncode == 0, done.stderr
        assert done.stdout.split()[0] == entry.hashes[0][2:]  # the journaled bytes, not a new tx
        again = run_sender(node.url, journal, key, payee, "none")  # a third attempt: answered from the journal
        assert again.stdout.split() == done.stdout.split()
        assert chain.balance(payee) == 777
        assert chain.w3.eth.get_transaction_count(me) == 1
    finally:
        node.stop()


@pytest.mark.parametrize("backend", ["embedded", pytest.param("anvil", marks=pytest.mark.anvil)])
def test_node_restart_losing_the_pool_rebroadcasts_the_same_transaction(backend, tmp_path):
    """The node holds our transaction in its pool (no block yet) and restarts from its state
    file: the pool is gone. Retrying the intent sends the same signed bytes, mined once."""
    if backend == "anvil" and anvil_binary() is None:
        pytest.skip(NO_ANVIL)
    state = tmp_path / ("chain.sqlite" if backend == "embedded" else "anvil-state.json")
    port = free_port()

    def start():
        if backend == "embedded":
            return start_embedded_node(port=port, block_time=3600, state=state)
        return start_anvil(port=port, block_time=3600, state=state)
    node = start()
    try:
        chain = Chain.rpc(node.url, journal=tmp_path / "journal.sqlite", fee_policy=FAST)
        me = chain.add_key(keccak(text=f"restart-{backend}-{time.time_ns()}"))
        dev = chain.dev_accounts()[0]
        chain.w3.eth.send_transaction({"from": dev, "to": me, "value": ETHER})
        chain.mine()
        payee = Account.create().address
        tx_hash = chain.txm.submit(chain._keys[me], {"to": payee, "value": 4242, "gas": 21_000}, "pay:restart")
        assert chain.w3.eth.get_transaction(tx_hash)["blockNumber"] is None  # pooled, not mined
        if backend == "embedded":
            node.kill()  # a crash: committed blocks survive in the state file, the pool does not
        else:
            node.stop()  # anvil writes --state only on a clean exit
        node = start()
        if backend == "embedded":
            with pytest.raises(TransactionNotFound):
                chain.w3.eth.get_transaction(tx_hash)  # the node forgot it
        assert chain.txm.rebroadcast("pay:restart") == tx_hash  # re-broadcast, not re-signed
        chain.mine()
        receipt = chain.txm.resume("pay:restart")
        assert "0x" + bytes(receipt["transactionHash"]).hex() == tx_hash
        chain.mine()
        assert chain.balance(payee) == 4242
        assert chain.w3.eth.get_transaction_count(me) == 1
    finally:
        node.stop()


def test_stuck_transaction_is_replaced_with_higher_fees_same_nonce(interval, tmp_path):
    chain = Chain.rpc(interval.url, journal=tmp_path / "j.sqlite", fee_policy=FAST)
    me = funded(chain, "stuck")
    payee = Account.create().address
    real = chain.txm.suggest_fees
    chain.txm.suggest_fees = lambda: (1, 1)  # the first version is signed below the base fee
    stuck = chain.txm.submit(chain._keys[me], {"to": payee, "value": 5, "gas": 21_000}, "pay:stuck")
    chain.txm.suggest_fees = real
    time.sleep(0.5)
    assert chain.w3.eth.get_transaction(stuck)["blockNumber"] is None
    receipt = chain.send({"to": payee, "value": 5}, me, intent="pay:stuck")
    entry = chain.txm.journal.get("pay:stuck")
    assert len(entry.hashes) >= 2 and entry.state == "mined"
    assert "0x" + bytes(receipt["transactionHash"]).hex() == entry.mined_hash != stuck
    assert chain.w3.eth.get_transaction(receipt["transactionHash"])["nonce"] == entry.nonce == 0
    assert chain.balance(payee) == 5


def test_another_process_using_the_key_shows_as_replaced(interval, tmp_path):
    chain = Chain.rpc(interval.url, journal=tmp_path / "j.sqlite", fee_policy=FAST)
    me = funded(chain, "replaced")
    chain.txm.suggest_fees = lambda: (1, 1)  # ours waits (below base fee) ...
    ours = chain.txm.submit(chain._keys[me], {"to": "0x" + "b2" * 20, "value": 1, "gas": 21_000}, "pay:mine")
    # ... and another holder of the key spends the same nonce at a normal fee
    other = Account.sign_transaction({"to": Account.create().address, "value": 2, "gas": 21_000, "nonce": 0, "type": 2,
                                      "chainId": chain.txm.chain_id(), "maxFeePerGas": 10**11,
                                      "maxPriorityFeePerGas": 10**9}, chain._keys[me].key)
    chain.w3.eth.send_raw_transaction(other.raw_transaction)
    with pytest.raises(TransactionReplaced, match="did NOT happen"):
        chain.txm.resume("pay:mine")
    assert chain.balance("0x" + "b2" * 20) == 0
    assert chain.txm.journal.get("pay:mine").state == "replaced" and ours


def test_confirmations_wait_for_blocks_on_top(interval):
    chain = Chain.rpc(interval.url, fee_policy=FeePolicy(confirmations=2, poll_max_s=0.05))
    me = funded(chain, "confirm")
    receipt = chain.send({"to": "0x" + "d4" * 20, "value": 1}, me, intent="pay:deep")
    assert chain.block_number() >= receipt["blockNumber"] + 2


def test_errors_name_their_cause(instant, tmp_path):
    chain = Chain.rpc(instant.url, journal=tmp_path / "j.sqlite")
    poor = chain.add_key(keccak(text=f"poor-{time.time_ns()}"))
    with pytest.raises(InsufficientFunds):
        chain.send({"to": "0x" + "e5" * 20, "value": 10, "gas": 21_000}, poor, intent="pay:poor")
    assert chain.txm.journal.get("pay:poor") is None  # refused outright: forgotten, nothing pending
    chain.fund(poor, ETHER)
    assert chain.send({"to": "0x" + "e5" * 20, "value": 10, "gas": 21_000}, poor, intent="pay:poor")["status"] == 1
    with pytest.raises(WrongChain):
        Chain.rpc(instant.url, chain_id=1)
    with pytest.raises(ChainUnavailable):
        Chain.rpc(f"http://127.0.0.1:{free_port()}", timeout=2)
    assert ChainUnavailable.transient and not InsufficientFunds.transient


def test_a_journal_of_another_chain_is_refused(tmp_path):
    journal = tmp_path / "j.sqlite"
    for expect_error in (False, True):
        with ThreadedNode(DevChain(block_time=0)) as node:  # a fresh dev chain: same id, new genesis
            chain = Chain.rpc(node.url, journal=journal)
            me = funded(chain, "genesis")
            if expect_error:
                with pytest.raises(WrongChain, match="node was reset"):
                    chain.send({"to": me, "value": 1}, me, intent="x")
            else:
                chain.send({"to": me, "value": 1}, me, intent="x")
            time.sleep(1.1)  # next genesis gets another timestamp, hence another hash


def test_node_down_while_sending_is_transient(tmp_path):
    node = ThreadedNode(DevChain(block_time=0))
    chain = Chain.rpc(node.url, journal=tmp_path / "j.sqlite", fee_policy=FeePolicy(receipt_timeout_s=1))
    me = funded(chain, "down")
    node.stop()
    with pytest.raises(ChainUnavailable):
        chain.send({"to": me, "value": 1, "gas": 21_000}, me, intent="pay:down")

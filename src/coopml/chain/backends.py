"""One `Chain` interface over two backends: the in-process py-evm chain of eth-tester (default) and
any JSON-RPC endpoint (anvil, the `coopml.chain.node` server, a real node).

A Chain sends transactions from two kinds of accounts: the node's unlocked dev accounts
(`dev_accounts()`, signed by the node) and local keys added with `add_key` / `new_account`
(signed here, sent raw), so several processes can each hold their own key on one shared chain.
Local-key transactions go through a `TxManager` (coopml.chain.transactions): EIP-1559 fees with
caps, nonces, and a journal keyed by intent ids, so a retried payment is never paid twice.
"""

from __future__ import annotations

import ast
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

from eth_abi import decode as abi_decode
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import keccak, to_checksum_address
from hexbytes import HexBytes
from web3 import HTTPProvider, Web3
from web3.contract import Contract
from web3.contract.contract import ContractFunction
from web3.exceptions import ContractLogicError, TransactionNotFound
from web3.types import RPCEndpoint, TxParams, TxReceipt, Wei

from coopml.chain.artifacts import load_artifact
from coopml.chain.heads import HeadSubscription, websocket_url
from coopml.chain.transactions import FeePolicy, TxJournal, TxManager, is_unavailable
from coopml.errors import (
    ChainError,
    ChainUnavailable,
    ContractRevert,
    TransactionTimeout,
    WrongChain,
)

ETHER = 10**18
_ERROR_STRING = bytes.fromhex("08c379a0")  # Error(string)
_PANIC = bytes.fromhex("4e487b71")  # Panic(uint256)


def revert_data_from_exception(exc: BaseException) -> bytes | None:
    """Raw revert bytes of a failed call, from web3 (JSON-RPC `data`) or eth-tester (message)."""
    data: Any = getattr(exc, "data", None)
    if isinstance(data, str) and data.startswith("0x"):
        return bytes.fromhex(data[2:])
    if isinstance(data, (bytes, bytearray)):
        return bytes(data)
    # eth-tester raises TransactionFailed("execution reverted: b'...'") with the repr of the bytes
    text = str(exc.args[0]) if exc.args else ""
    marker = "execution reverted: "
    if marker in text:
        tail = text.split(marker, 1)[1].strip()
        if tail.startswith(("b'", 'b"')):
            try:
                raw = ast.literal_eval(tail)
                if isinstance(raw, bytes):
                    return raw
            except (ValueError, SyntaxError):
                return None
    return None


class ErrorDecoder:
    """Maps 4-byte selectors of an ABI's custom errors to ContractRevert(name, args)."""

    def __init__(self, abi: list[dict[str, Any]]):
        self._errors: dict[bytes, tuple[str, list[str]]] = {}
        for item in abi:
            if item.get("type") == "error":
                types = [i["type"] for i in item["inputs"]]
                selector = keccak(text=f"{item['name']}({','.join(types)})")[:4]
                self._errors[selector] = (item["name"], types)

    def decode(self, data: bytes) -> ContractRevert:
        selector, body = data[:4], data[4:]
        if selector == _ERROR_STRING:
            return ContractRevert("Error", abi_decode(["string"], body))
        if selector == _PANIC:
            return ContractRevert("Panic", abi_decode(["uint256"], body))
        if selector in self._errors:
            name, types = self._errors[selector]
            return ContractRevert(name, abi_decode(types, body))
        return ContractRevert("Unknown", (data.hex(),), f"contract reverted with unknown data 0x{data.hex()}")


class Chain:
    """A connection to one chain. Create with `Chain.embedded()` or `Chain.rpc(url)`."""

    def __init__(self, w3: Web3, kind: str, tester: Any = None, receipt_timeout: float = 60.0,
                 journal: TxJournal | str | Path | None = None, fee_policy: FeePolicy | None = None,
                 chain_id: int | None = None):
        self.w3 = w3
        self.kind = kind  # "embedded" or "rpc"
        self._tester = tester  # eth_tester.EthereumTester for the embedded backend
        self._keys: dict[str, LocalAccount] = {}
        self._lock = threading.RLock()
        self.receipt_timeout = receipt_timeout
        self.max_poll_interval = 0.1  # receipt polling backs off from 1 ms to this
        policy = fee_policy or FeePolicy(receipt_timeout_s=receipt_timeout)
        self.txm = TxManager(w3, journal, policy, expected_chain_id=chain_id, lock=self._lock)
        self.url: str | None = None          # the JSON-RPC endpoint (rpc chains)
        self.ws_url: str | None = None       # where new heads are pushed (rpc chains; None: poll)
        self._heads: HeadSubscription | None = None
        self._heads_tried = False

    # ------------------------------------------------------------------ construction

    @classmethod
    def embedded(cls) -> Chain:
        """A fresh in-process EVM (py-evm via eth-tester): auto-mines one block per transaction."""
        from eth_tester import EthereumTester, PyEVMBackend
        from web3 import EthereumTesterProvider

        tester = EthereumTester(PyEVMBackend())
        return cls(Web3(EthereumTesterProvider(tester)), "embedded", tester=tester)

    @classmethod
    def rpc(cls, url: str, timeout: float = 30.0, journal: TxJournal | str | Path | None = None,
            fee_policy: FeePolicy | None = None, chain_id: int | None = None, ws_url: str | None = None) -> Chain:
        """Any JSON-RPC node: anvil, `python -m coopml.chain.node`, geth --dev, ...

        `journal`: SQLite file of the transaction manager (None: in memory, lost at exit); agents
        that move money pass one in their workdir. `chain_id`: refuse a node serving another
        chain (WrongChain). `ws_url`: the node's websocket endpoint for pushed heads (geth serves
        it on its own port, 8546 by default); None: the HTTP URL's own host and port as ws:// (anvil);
        "none": no subscription, poll. Raises ChainUnavailable when nothing answers at `url`."""
        w3 = Web3(HTTPProvider(url, request_kwargs={"timeout": timeout}))
        try:
            actual = int(w3.eth.chain_id)
        except Exception as exc:  # any transport failure means "unreachable"
            raise ChainUnavailable(f"no JSON-RPC node answers at {url}: {exc}") from exc
        if chain_id is not None and actual != chain_id:
            raise WrongChain(f"wrong chain: configured chain id {chain_id}, the node at {url} serves {actual}",
                             chain_id, actual)
        chain = cls(w3, "rpc", journal=journal, fee_policy=fee_policy, chain_id=chain_id)
        chain.url = url
        chain.ws_url = None if ws_url == "none" else ws_url or websocket_url(url)
        return chain

    def heads(self) -> HeadSubscription | None:
        """Block headers pushed by the node over its websocket (started on first use, waiting up to
        a few seconds for the subscription), or None: an embedded chain, no websocket configured,
        or a node that serves none at `ws_url` (its callers poll)."""
        with self._lock:
            if not self._heads_tried:
                self._heads_tried = True
                if self.ws_url is not None:
                    self._heads = HeadSubscription(self.ws_url)
            heads = self._heads
        if heads is None:
            return None
        heads.wait_ready(heads.open_timeout + 1)
        return heads if heads.unsupported is None else None

    # ------------------------------------------------------------------ accounts

    def dev_accounts(self) -> list[str]:
        """Accounts the node itself unlocks and funds (eth-tester: 10 x 1e6 ETH; anvil: 10 x 1e4 ETH)."""
        return [to_checksum_address(a) for a in self.w3.eth.accounts]

    def add_key(self, private_key: bytes | str) -> str:
        """Sign this account's transactions locally from now on; returns its address."""
        account: LocalAccount = Account.from_key(private_key)
        self._keys[account.address] = account
        return account.address

    def new_account(self, fund_wei: int = 0, seed: str | None = None) -> str:
        """A local account (deterministic from `seed`, so other processes can derive it too),
        funded with `fund_wei` from the first dev account."""
        key = keccak(text=f"coopml-dev-account:{seed}") if seed is not None else Account.create().key
        address = self.add_key(key)
        if fund_wei:
            self.fund(address, fund_wei)
        return address

    def fund(self, address: str, amount_wei: int, sender: str | None = None) -> None:
        sender = sender or self.dev_accounts()[0]
        self.send({"to": to_checksum_address(address), "value": amount_wei}, sender)

    def fund_many(self, amounts: Mapping[str, int], sender: str | None = None) -> list[TxReceipt]:
        """Fund several addresses from one node-managed dev account: every transfer is sent before
        any is awaited, so they share a block (one block instead of one per address on a chain
        that seals every few seconds)."""
        sender = to_checksum_address(sender or self.dev_accounts()[0])
        if sender in self._keys or self._tester is not None:      # local keys / eth-tester: one by one
            return [self.send({"to": to_checksum_address(a), "value": v}, sender) for a, v in amounts.items()]
        try:
            with self._lock:
                hashes = [self.w3.eth.send_transaction({"from": sender, "to": to_checksum_address(a), "value": Wei(v)})
                          for a, v in amounts.items()]
        except Exception as exc:  # transport failures are named
            if is_unavailable(exc):
                raise ChainUnavailable(f"node unreachable: {exc}") from exc
            raise
        return [self._wait(tx_hash) for tx_hash in hashes]

    def balance(self, address: str) -> int:
        return self.w3.eth.get_balance(to_checksum_address(address))

    # ------------------------------------------------------------------ time

    def now(self) -> int:
        """Timestamp of the latest block (what `block.timestamp` was last)."""
        return self.head()[1]

    def block_number(self) -> int:
        return int(self.w3.eth.block_number)

    def head(self) -> tuple[int, int]:
        """The latest block's number and timestamp, in one read."""
        block = self.w3.eth.get_block("latest")
        return int(block["number"]), int(block["timestamp"])

    def increase_time(self, seconds: int) -> None:
        """Move the chain clock forward and mine a block (eth-tester time travel / evm_increaseTime)."""
        if self._tester is not None:
            with self._lock:
                # eth-tester mines the travelling block one second before the target; its pending
                # block already carries the wall-clock time when that is later than the last block:
                # never travel to before it (eth-tester refuses; "at least `seconds`" is the contract)
                pending = int(self._tester.get_block_by_number("pending")["timestamp"])
                self._tester.time_travel(max(self.now() + int(seconds) + 1, pending + 1))
        else:
            self.w3.provider.make_request(RPCEndpoint("evm_increaseTime"), [int(seconds)])
            self.mine()

    def mine(self) -> None:
        if self._tester is not None:
            with self._lock:
                self._tester.mine_blocks(1)
        else:
            self.w3.provider.make_request(RPCEndpoint("evm_mine"), [])

    # ------------------------------------------------------------------ contracts

    def contract(self, address: str, name: str = "CoopML") -> Contract:
        return self.w3.eth.contract(address=to_checksum_address(address), abi=load_artifact(name)["abi"])

    def deploy_contract(self, name: str, sender: str, *args: Any) -> tuple[Contract, TxReceipt]:
        art = load_artifact(name)
        factory = self.w3.eth.contract(abi=art["abi"], bytecode=art["bytecode"])
        receipt = self.transact(factory.constructor(*args), sender, decoder=ErrorDecoder(art["abi"]))
        address = receipt["contractAddress"]
        if address is None:
            raise ChainError(f"deploying {name} produced no contract address")
        return self.contract(address, name), receipt

    # ------------------------------------------------------------------ transactions

    def send(self, tx: dict[str, Any], sender: str, intent: str | None = None) -> TxReceipt:
        """Send a plain transaction dict and wait for its receipt. For a local key, `intent`
        makes it idempotent: asking again with the same id returns the first one's receipt."""
        tx = {**tx, "from": to_checksum_address(sender)}
        if tx.get("to"):
            tx["to"] = to_checksum_address(tx["to"])
        try:
            if tx["from"] in self._keys:
                if "gas" not in tx and not (intent is not None and self.txm.knows(intent)):
                    tx["gas"] = self.w3.eth.estimate_gas(cast(TxParams, tx))
                return self.txm.send(self._keys[tx["from"]], tx, intent)
            with self._lock:
                tx_hash = self.w3.eth.send_transaction(cast(TxParams, tx))
        except ChainError:
            raise
        except Exception as exc:  # transport failures are named
            if is_unavailable(exc):
                raise ChainUnavailable(f"node unreachable: {exc}") from exc
            raise
        return self._wait(tx_hash)

    def transact(self, fn: ContractFunction | Any, sender: str, value: int = 0,
                 decoder: ErrorDecoder | None = None, extra_gas: int = 0, intent: str | None = None) -> TxReceipt:
        """Run a contract function as a transaction; reverts raise ContractRevert(name).

        Gas is the node's estimate + 20% + `extra_gas`: the estimate runs on the latest block, and
        code whose path depends on the block (verifier selection hashes prevrandao) can need more
        in the block that includes it.

        `intent` (local keys): an id naming this action once and for all (e.g. "withdraw:3"). The
        signed transaction is journaled before it is broadcast; calling again with the same id
        (after a timeout, a node restart, a crash) re-broadcasts that same transaction or
        returns its receipt — it never sends a second one."""
        decoder = decoder or ErrorDecoder(load_artifact("CoopML")["abi"])
        params: dict[str, Any] = {"from": to_checksum_address(sender), "value": value}
        local = params["from"] in self._keys
        try:
            known = local and intent is not None and self.txm.knows(intent)
            if not known:  # a journaled intent is resumed as it was signed: no new estimate
                with self._lock:
                    params["gas"] = self._gas_for(fn, params, extra_gas)
            if local:
                built = fn.build_transaction(cast(TxParams, {
                    **params, "gas": params.get("gas", 1), "chainId": self.txm.chain_id(), "nonce": 0,
                    "maxFeePerGas": 1, "maxPriorityFeePerGas": 1}))
                receipt = self.txm.send(self._keys[params["from"]], built, intent)
            else:
                with self._lock:
                    tx_hash = fn.transact(cast(TxParams, params))
                receipt = None
        except ChainError:
            raise
        except Exception as exc:  # translate reverts, re-raise the rest
            raise self._translate(exc, decoder) from exc
        if receipt is None:
            receipt = self._wait(tx_hash)
        if receipt["status"] != 1:
            raise self._replay_failure(fn, params, receipt, decoder)
        return receipt

    EMBEDDED_TX_GAS = 10_000_000

    def _gas_for(self, fn: Any, params: dict[str, Any], extra_gas: int) -> int:
        if self._tester is not None:
            # py-evm's estimate is a binary search (~14 executions); one call surfaces any revert
            # and a fixed limit is fine on a private chain (gasUsed is what the tx really used)
            if hasattr(fn, "call"):  # a constructor has no call; its failure shows in the receipt
                fn.call({**params, "gas": self.EMBEDDED_TX_GAS})
            return self.EMBEDDED_TX_GAS
        return int(fn.estimate_gas(params) * 1.2) + extra_gas

    def call(self, fn: ContractFunction, decoder: ErrorDecoder | None = None) -> Any:
        try:
            return fn.call()
        except Exception as exc:
            raise self._translate(exc, decoder or ErrorDecoder(load_artifact("CoopML")["abi"])) from exc

    def _wait(self, tx_hash: bytes) -> TxReceipt:
        """Poll for the receipt with exponential back-off: an auto-mining node answers within a
        few ms (a fixed 50 ms poll would cap a client at ~20 tx/s), a 1 s block time in <= 1.1 s."""
        deadline = time.monotonic() + self.receipt_timeout
        interval = 0.001
        while True:
            try:
                return self.w3.eth.get_transaction_receipt(HexBytes(tx_hash))
            except TransactionNotFound:
                pass
            except Exception as exc:
                if not is_unavailable(exc):
                    raise
            if time.monotonic() > deadline:
                raise TransactionTimeout(f"transaction {tx_hash.hex()} not mined within {self.receipt_timeout}s")
            time.sleep(interval)
            interval = min(interval * 2, self.max_poll_interval)

    def _translate(self, exc: Exception, decoder: ErrorDecoder) -> Exception:
        data = revert_data_from_exception(exc)
        if data:
            return decoder.decode(data)
        if isinstance(exc, ContractLogicError) or "revert" in str(exc).lower():
            return ContractRevert("Unknown", (), f"contract reverted without data: {exc}")
        if isinstance(exc, ChainError):
            return exc
        if is_unavailable(exc):
            return ChainUnavailable(f"node unreachable: {exc}")
        return ChainError(f"chain request failed: {exc}")

    def _replay_failure(self, fn: Any, params: dict[str, Any], receipt: TxReceipt,
                        decoder: ErrorDecoder) -> Exception:
        """A mined transaction failed (state changed between estimate and inclusion): re-run it
        as a call on the parent block to recover the custom error."""
        try:
            if hasattr(fn, "call"):
                fn.call(params, block_identifier=receipt["blockNumber"] - 1)
        except Exception as exc:  # noqa: BLE001
            return self._translate(exc, decoder)
        out_of_gas = receipt["gasUsed"] >= params.get("gas", 0)
        return ContractRevert("OutOfGas" if out_of_gas else "Unknown", (),
                              f"transaction {receipt['transactionHash'].hex()} failed"
                              + (f" out of gas ({receipt['gasUsed']})" if out_of_gas else ""))

"""The development chain behind `python -m coopml.chain.node`: py-evm's MiningChain (the EVM that
eth-tester runs, Prague rules) driven directly, with what a JSON-RPC node needs around it:

- a transaction pool with geth's admission rules (nonce too low, insufficient funds, replacement
  needs a 10 % fee bump, `already known`), so clients see the errors a real node gives;
- interval mining (`block_time` seconds, like anvil `--block-time`: the chain clock moves even
  when nobody sends anything) or instant mining (`block_time=0`: one block per batch of
  submissions, for tests); pooled transactions are mined in one batch per block, which is what
  makes the node fast (py-evm re-hashes the whole pending block on every incremental apply);
- a log index, block/log filters and standard JSON shapes for blocks, transactions, receipts
  and logs (the `eth_getLogs` forms ethers.js, viem, cast and curl send);
- an optional SQLite state file: every mined block is committed atomically (key/value rows of
  py-evm's database plus a little metadata), so a restarted node has the same contracts,
  balances, blocks and logs.

`DevChain.request(method, params)` answers one JSON-RPC call (raising `RPCError`); it is
thread-safe. The HTTP server lives in `coopml.chain.node`.
"""

from __future__ import annotations

import bisect
import contextlib
import heapq
import json
import os
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import rlp
from eth_account import Account
from eth_typing import Address, BlockNumber
from eth_utils import keccak, to_checksum_address

from coopml.chain import _ecc
from coopml.errors import ChainError

DEFAULT_CHAIN_ID = 131277322940537  # eth-tester's, so the in-process backend and the node agree
CLIENT_VERSION = "coopml-devchain/1 (py-evm)"
DEV_BALANCE_WEI = 10**6 * 10**18
DEFAULT_PRIORITY_FEE = 10**9
STATE_FORMAT = 1
ZERO_ADDRESS = b"\x00" * 20
FILTER_TTL = 300.0  # seconds an unpolled filter lives (geth: 5 min)


class RPCError(Exception):
    """A JSON-RPC error reply: `code`, `message` and optional `data` (revert bytes as 0x-hex)."""

    def __init__(self, code: int, message: str, data: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.data = code, message, data

    def as_json(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error


def _invalid(message: str) -> RPCError:
    return RPCError(-32602, message)


def _server(message: str) -> RPCError:
    return RPCError(-32000, message)


# ---------------------------------------------------------------------------------- hex codecs


def qty(value: int) -> str:
    return hex(int(value))


def hexdata(value: bytes) -> str:
    return "0x" + bytes(value).hex()


def parse_qty(value: Any, name: str = "quantity") -> int:
    if isinstance(value, bool):
        raise _invalid(f"{name}: expected a hex quantity, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.startswith(("0x", "0X")):
        try:
            return int(value, 16) if len(value) > 2 else 0
        except ValueError:
            pass
    raise _invalid(f"{name}: expected a hex quantity like 0x1a, got {value!r}")


def parse_data(value: Any, name: str = "data") -> bytes:
    if isinstance(value, str) and value.startswith(("0x", "0X")):
        text = value[2:]
        if len(text) % 2:
            text = "0" + text
        try:
            return bytes.fromhex(text)
        except ValueError:
            pass
    raise _invalid(f"{name}: expected 0x-prefixed hex bytes, got {str(value)[:80]!r}")


def parse_address(value: Any, name: str = "address") -> bytes:
    raw = parse_data(value, name)
    if len(raw) != 20:
        raise _invalid(f"{name}: expected a 20-byte address, got {len(raw)} bytes")
    return raw


def parse_hash(value: Any, name: str = "hash") -> bytes:
    raw = parse_data(value, name)
    if len(raw) != 32:
        raise _invalid(f"{name}: expected a 32-byte hash, got {len(raw)} bytes")
    return raw


# ---------------------------------------------------------------------------------- state file


class _TrackedMemoryDB:
    """py-evm's key/value store as a dict that remembers what changed since the last flush."""

    def __init__(self, kv: dict[bytes, bytes]) -> None:
        from eth.db.backends.memory import MemoryDB

        class Tracked(MemoryDB):
            def __setitem__(inner, key: bytes, value: bytes) -> None:
                inner.kv_store[key] = value
                self.dirty[key] = value

            def __delitem__(inner, key: bytes) -> None:
                del inner.kv_store[key]
                self.dirty[key] = None

        self.dirty: dict[bytes, bytes | None] = {}
        self.db = Tracked(kv)


class StateFile:
    """SQLite file holding py-evm's key/value rows and node metadata; one transaction per flush,
    so a crash leaves the state of the last mined block (WAL mode: readers never block)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self.conn.execute("CREATE TABLE IF NOT EXISTS kv (k BLOB PRIMARY KEY, v BLOB NOT NULL)")
            self.conn.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
        except sqlite3.DatabaseError as exc:
            raise ChainError(f"state file {self.path} is not a coopml chain state (SQLite): {exc}") from exc

    def load(self) -> tuple[dict[bytes, bytes], dict[str, Any]]:
        try:
            kv = {bytes(k): bytes(v) for k, v in self.conn.execute("SELECT k, v FROM kv")}
            meta = {n: json.loads(v) for n, v in self.conn.execute("SELECT name, value FROM meta")}
        except sqlite3.DatabaseError as exc:
            raise ChainError(f"state file {self.path} is corrupted: {exc}") from exc
        return kv, meta

    def flush(self, dirty: dict[bytes, bytes | None], meta: dict[str, Any]) -> None:
        if not dirty and not meta:
            return
        with self.conn:  # one atomic transaction
            self.conn.execute("BEGIN")
            self.conn.executemany("INSERT OR REPLACE INTO kv (k, v) VALUES (?, ?)",
                                  [(k, v) for k, v in dirty.items() if v is not None])
            self.conn.executemany("DELETE FROM kv WHERE k = ?", [(k,) for k, v in dirty.items() if v is None])
            self.conn.executemany("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)",
                                  [(n, json.dumps(v)) for n, v in meta.items()])

    def close(self) -> None:
        try:
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            self.conn.close()


# ---------------------------------------------------------------------------------- pool


@dataclass(order=True)
class PooledTx:
    received: float
    hash: bytes = field(compare=False)
    sender: bytes = field(compare=False)
    nonce: int = field(compare=False)
    tx: Any = field(compare=False, repr=False)

    @property
    def max_fee(self) -> int:
        return int(self.tx.max_fee_per_gas)

    @property
    def tip(self) -> int:
        return int(self.tx.max_priority_fee_per_gas)

    @property
    def cost(self) -> int:
        return int(self.tx.value) + int(self.tx.gas) * self.max_fee


@dataclass
class _LogFilter:
    criteria: dict[str, Any]
    next_block: int
    touched: float


@dataclass
class _BlockFilter:
    next_block: int
    touched: float


def _chain_class(chain_id: int) -> Any:
    from eth.chains.base import MiningChain
    from eth.vm.forks import PragueVM

    class DevMiningChain(MiningChain):
        vm_configuration = ((BlockNumber(0), PragueVM),)

        def create_header_from_parent(self, parent_header: Any, **header_params: Any) -> Any:
            # constant gas limit, as eth-tester
            return super().create_header_from_parent(parent_header,
                                                     **{**header_params, "gas_limit": parent_header.gas_limit})

    DevMiningChain.chain_id = chain_id
    return DevMiningChain


class DevChain:
    """One development chain answering JSON-RPC calls (`request`). See the module docstring."""

    def __init__(self, block_time: float = 1.0, state_path: str | Path | None = None, accounts: int = 10,
                 balance_wei: int = DEV_BALANCE_WEI, chain_id: int | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        _ecc.install()
        from eth.db.atomic import AtomicDB
        from eth_tester.backends.pyevm.main import (
            generate_genesis_state_for_keys,
            get_default_account_keys,
            get_default_genesis_params,
        )

        if block_time < 0:
            raise ChainError(f"block time must be >= 0 seconds, got {block_time}")
        self.block_time = float(block_time)
        self.clock = clock
        self.lock = threading.RLock()
        self.mined = threading.Condition(self.lock)  # notified after each block
        self.state_file = StateFile(Path(state_path)) if state_path else None
        kv, meta = self.state_file.load() if self.state_file else ({}, {})
        restored = bool(kv)
        if restored:
            if meta.get("format") != STATE_FORMAT:
                raise ChainError(f"state file {state_path} has format {meta.get('format')}, expected {STATE_FORMAT}")
            if chain_id is not None and chain_id != meta["chain_id"]:
                raise ChainError(f"state file {state_path} holds chain id {meta['chain_id']}, not {chain_id}")
            chain_id = int(meta["chain_id"])
            accounts = int(meta["accounts"])
        self.chain_id = int(chain_id or DEFAULT_CHAIN_ID)
        self.n_accounts = accounts
        self.dev_keys = [k.to_bytes() for k in get_default_account_keys(quantity=accounts)]
        self.dev_addresses = [Account.from_key(k).address for k in self.dev_keys]
        self._dev_by_address = {bytes.fromhex(a[2:]): k for a, k in zip(self.dev_addresses, self.dev_keys)}
        self._dev_public = {bytes.fromhex(a[2:]): k.public_key.to_bytes()
                            for a, k in zip(self.dev_addresses, get_default_account_keys(quantity=accounts))}
        self._tracked = _TrackedMemoryDB(kv)
        klass = _chain_class(self.chain_id)
        if restored:
            self.chain = klass(AtomicDB(self._tracked.db))
        else:
            genesis_state = generate_genesis_state_for_keys(get_default_account_keys(quantity=accounts),
                                                            overrides={"balance": balance_wei})
            params = get_default_genesis_params(overrides={"timestamp": int(self.clock())})
            self.chain = klass.from_genesis(AtomicDB(self._tracked.db), params, genesis_state)
        self._tx_builder = self.chain.get_vm().get_transaction_builder()  # one fork: never changes
        self.time_offset = int(meta.get("time_offset", 0))
        self.next_timestamp: int | None = None  # evm_setNextBlockTimestamp
        self.min_next_timestamp = 0  # evm_increaseTime: next block at least this late
        # pool: sender -> nonce -> tx; plus by hash
        self.pool: dict[bytes, dict[int, PooledTx]] = {}
        self.pool_by_hash: dict[bytes, PooledTx] = {}
        self._senders: dict[bytes, bytes] = {}  # tx hash -> sender, for mined txs
        self._receipts: OrderedDict[int, list[dict[str, Any]]] = OrderedDict()  # block -> receipt JSONs
        self._log_blocks: list[int] = []  # mined blocks with at least one log (sorted)
        self._filters: dict[int, _LogFilter | _BlockFilter] = {}
        self._filter_ids = iter(range(1, 1 << 62))
        self._miner: threading.Thread | None = None
        self._head_state: tuple[bytes, Any] | None = None
        self._stop = threading.Event()
        self.stats = {"blocks_mined": 0, "txs_mined": 0}
        self._index_logs(0)
        self._flush(force=True)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start interval mining (no-op when block_time == 0)."""
        if self.block_time > 0 and self._miner is None:
            self._miner = threading.Thread(target=self._mine_loop, name="devchain-miner", daemon=True)
            self._miner.start()

    def stop(self) -> None:
        """Stop mining, mine what is pooled, and write the state file."""
        self._stop.set()
        if self._miner is not None:
            self._miner.join(timeout=30)
        with self.lock:
            if self.pool_by_hash:
                self._mine_block()
            self._flush(force=True)
            if self.state_file is not None:
                self.state_file.close()
                self.state_file = None

    def _mine_loop(self) -> None:
        next_tick = time.monotonic() + self.block_time
        while not self._stop.wait(max(0.0, next_tick - time.monotonic())):
            with self.lock:
                self._mine_block()
            next_tick += self.block_time
            now = time.monotonic()
            if next_tick < now:  # mining took longer than a block time: skip missed ticks
                next_tick = now + self.block_time

    def _flush(self, force: bool = False) -> None:
        if self.state_file is None:
            self._tracked.dirty.clear()
            return
        meta = {"format": STATE_FORMAT, "chain_id": self.chain_id, "accounts": self.n_accounts,
                "time_offset": self.time_offset}
        self.state_file.flush(self._tracked.dirty, meta)
        self._tracked.dirty.clear()

    # ------------------------------------------------------------------ chain views

    @property
    def head(self) -> Any:
        return self.chain.get_canonical_head()

    def _header_at(self, number: int) -> Any:
        from eth.exceptions import HeaderNotFound

        try:
            return self.chain.get_canonical_block_header_by_number(number)
        except HeaderNotFound as exc:
            raise _server(f"block {number} not found") from exc

    def _block_number(self, tag: Any, name: str = "block") -> int:
        """A block tag / number / EIP-1898 object -> the number of a mined block."""
        head = int(self.head.block_number)
        if tag is None or tag in ("latest", "pending", "safe", "finalized"):
            return head
        if tag == "earliest":
            return 0
        if isinstance(tag, dict):
            if "blockHash" in tag:
                return int(self._header_by_hash(parse_hash(tag["blockHash"], "blockHash")).block_number)
            if "blockNumber" in tag:
                return self._block_number(tag["blockNumber"], name)
            raise _invalid(f"{name}: expected blockHash or blockNumber in {tag}")
        number = parse_qty(tag, name)
        if number > head:
            raise _server(f"{name} {number} is beyond the head {head}")
        return number

    def _header_by_hash(self, block_hash: bytes) -> Any:
        from eth.exceptions import HeaderNotFound

        try:
            header = self.chain.chaindb.get_block_header_by_hash(block_hash)
        except HeaderNotFound as exc:
            raise _server(f"block {hexdata(block_hash)} not found") from exc
        if self._header_at(header.block_number).hash != header.hash:
            raise _server(f"block {hexdata(block_hash)} is not canonical")
        return header

    def _state_at(self, number: int) -> Any:
        """Read-only state after block `number` (the head's is cached until the next block:
        building a Prague VM state costs more than the reads it serves)."""
        header = self._header_at(number)
        cached = self._head_state
        if cached is not None and cached[0] == header.hash:
            return cached[1]
        state = self.chain.get_vm(at_header=header).state
        if number == int(self.head.block_number):
            self._head_state = (header.hash, state)
        return state

    def _sender(self, tx: Any) -> bytes:
        sender = self._senders.get(tx.hash)
        if sender is None:
            sender = bytes(tx.sender)
            self._senders[tx.hash] = sender
        return sender

    def pending_nonce(self, address: bytes) -> int:
        nonce = int(self._state_at(int(self.head.block_number)).get_nonce(address))
        queued = self.pool.get(address, {})
        while nonce in queued:
            nonce += 1
        return nonce

    # ------------------------------------------------------------------ serialisation

    def _block_json(self, block: Any, full: bool) -> dict[str, Any]:
        h = block.header
        txs = [self._tx_json(tx, h, i) if full else hexdata(tx.hash) for i, tx in enumerate(block.transactions)]
        out: dict[str, Any] = {
            "number": qty(h.block_number), "hash": hexdata(h.hash), "parentHash": hexdata(h.parent_hash),
            "nonce": hexdata(h.nonce), "sha3Uncles": hexdata(h.uncles_hash),
            "logsBloom": hexdata(int(h.bloom).to_bytes(256, "big")), "transactionsRoot": hexdata(h.transaction_root),
            "stateRoot": hexdata(h.state_root), "receiptsRoot": hexdata(h.receipt_root),
            "miner": to_checksum_address(h.coinbase), "difficulty": qty(h.difficulty), "totalDifficulty": "0x0",
            "extraData": hexdata(h.extra_data), "size": qty(len(rlp.encode(block))),
            "gasLimit": qty(h.gas_limit), "gasUsed": qty(h.gas_used), "timestamp": qty(h.timestamp),
            "transactions": txs, "uncles": [], "baseFeePerGas": qty(h.base_fee_per_gas), "mixHash": hexdata(h.mix_hash),
            "withdrawals": [], "withdrawalsRoot": hexdata(h.withdrawals_root),
            "blobGasUsed": qty(h.blob_gas_used), "excessBlobGas": qty(h.excess_blob_gas),
            "parentBeaconBlockRoot": hexdata(h.parent_beacon_block_root),
        }
        if getattr(h, "requests_hash", None) is not None:
            out["requestsHash"] = hexdata(h.requests_hash)
        return out

    def _tx_json(self, tx: Any, header: Any | None, index: int | None, sender: bytes | None = None) -> dict[str, Any]:
        type_id = getattr(tx, "type_id", None)
        sender = sender if sender is not None else self._sender(tx)
        base_fee = int(header.base_fee_per_gas) if header is not None else None
        out: dict[str, Any] = {
            "hash": hexdata(tx.hash), "nonce": qty(tx.nonce), "from": to_checksum_address(sender),
            "to": to_checksum_address(tx.to) if tx.to else None, "value": qty(tx.value), "gas": qty(tx.gas),
            "input": hexdata(tx.data), "type": qty(type_id or 0), "chainId": qty(self.chain_id),
            "r": qty(tx.r), "s": qty(tx.s),
            "blockHash": hexdata(header.hash) if header is not None else None,
            "blockNumber": qty(header.block_number) if header is not None else None,
            "transactionIndex": qty(index) if index is not None else None,
        }
        if type_id is None:
            out["gasPrice"] = qty(tx.gas_price)
            out["v"] = qty(tx.v)
        else:
            out["accessList"] = [{"address": to_checksum_address(a), "storageKeys": [hexdata(k.to_bytes(32, "big")) if isinstance(k, int) else hexdata(k) for k in keys]}
                                 for a, keys in tx.access_list]
            out["v"] = out["yParity"] = qty(tx.y_parity)
            if type_id == 1:
                out["gasPrice"] = qty(tx.max_fee_per_gas)
            else:
                out["maxFeePerGas"] = qty(tx.max_fee_per_gas)
                out["maxPriorityFeePerGas"] = qty(tx.max_priority_fee_per_gas)
                tip = min(int(tx.max_priority_fee_per_gas), int(tx.max_fee_per_gas) - (base_fee or 0))
                out["gasPrice"] = qty((base_fee or 0) + tip) if base_fee is not None else qty(tx.max_fee_per_gas)
        return out

    def _receipts_of(self, number: int) -> list[dict[str, Any]]:
        """Receipt JSONs of a mined block (cached: mined blocks never change on a dev chain)."""
        cached = self._receipts.get(number)
        if cached is not None:
            self._receipts.move_to_end(number)
            return cached
        from eth._utils.address import generate_contract_address

        block = self.chain.get_canonical_block_by_number(number)
        header = block.header
        receipts = block.get_receipts(self.chain.chaindb)
        out: list[dict[str, Any]] = []
        previous_gas = 0
        log_index = 0
        for i, (tx, receipt) in enumerate(zip(block.transactions, receipts)):
            sender = self._sender(tx)
            gas_used = int(receipt.gas_used) - previous_gas
            previous_gas = int(receipt.gas_used)
            logs = []
            for log in receipt.logs:
                logs.append({
                    "address": to_checksum_address(log.address),
                    "topics": [hexdata(t.to_bytes(32, "big") if isinstance(t, int) else t) for t in log.topics],
                    "data": hexdata(log.data), "blockNumber": qty(number), "blockHash": hexdata(header.hash),
                    "blockTimestamp": qty(header.timestamp),
                    "transactionHash": hexdata(tx.hash), "transactionIndex": qty(i), "logIndex": qty(log_index),
                    "removed": False,
                })
                log_index += 1
            tx_json = self._tx_json(tx, header, i, sender)
            out.append({
                "transactionHash": hexdata(tx.hash), "transactionIndex": qty(i), "blockHash": hexdata(header.hash),
                "blockNumber": qty(number), "from": tx_json["from"], "to": tx_json["to"],
                "cumulativeGasUsed": qty(receipt.gas_used), "gasUsed": qty(gas_used),
                "effectiveGasPrice": tx_json["gasPrice"],
                "contractAddress": (to_checksum_address(generate_contract_address(Address(sender), tx.nonce))
                                    if not tx.to else None),
                "logs": logs, "logsBloom": hexdata(int(receipt.bloom).to_bytes(256, "big")),
                "type": tx_json["type"], "status": "0x1" if receipt.state_root == b"\x01" else "0x0",
                "blobGasUsed": "0x0",
            })
        self._receipts[number] = out
        if len(self._receipts) > 4096:
            self._receipts.popitem(last=False)
        return out

    def _index_logs(self, start: int) -> None:
        for number in range(start, int(self.head.block_number) + 1):
            if int(self._header_at(number).bloom):
                self._log_blocks.append(number)

    # ------------------------------------------------------------------ mining

    def _timestamp_for_next(self) -> int:
        parent = int(self.head.timestamp)
        if self.next_timestamp is not None:
            ts, self.next_timestamp = self.next_timestamp, None
            return max(ts, parent + 1)
        return max(parent + 1, int(self.clock()) + self.time_offset, self.min_next_timestamp)

    def _select(self, base_fee: int, state: Any) -> list[PooledTx]:
        """Executable pooled txs in arrival order per sender's nonce sequence; drops stale ones."""
        chosen: list[PooledTx] = []
        heap: list[PooledTx] = []
        expected: dict[bytes, int] = {}
        budget: dict[bytes, int] = {}
        for sender, queued in list(self.pool.items()):
            nonce = int(state.get_nonce(sender))
            for stale in [n for n in queued if n < nonce]:  # mined elsewhere or replaced
                self._forget(queued[stale])
            expected[sender] = nonce
            budget[sender] = int(state.get_balance(sender))
            if nonce in queued:
                heapq.heappush(heap, queued[nonce])
        while heap:
            ptx = heapq.heappop(heap)
            if ptx.max_fee < base_fee or ptx.cost > budget[ptx.sender]:
                continue  # waits for a lower base fee / more funds; later nonces wait too
            chosen.append(ptx)
            budget[ptx.sender] -= ptx.cost
            expected[ptx.sender] += 1
            following = self.pool.get(ptx.sender, {}).get(expected[ptx.sender])
            if following is not None:
                heapq.heappush(heap, following)
        return chosen

    def _forget(self, ptx: PooledTx) -> None:
        queued = self.pool.get(ptx.sender)
        if queued is not None and queued.get(ptx.nonce) is ptx:
            del queued[ptx.nonce]
            if not queued:
                del self.pool[ptx.sender]
        self.pool_by_hash.pop(ptx.hash, None)

    def _mine_block(self) -> Any:
        """Seal one block with every executable pooled transaction (caller holds the lock)."""
        from eth_utils import ValidationError as EVMValidationError

        header = self.chain.header.copy(timestamp=self._timestamp_for_next())
        self.chain.header = header
        state = self._state_at(int(self.head.block_number))
        chosen = self._select(int(header.base_fee_per_gas), state)
        txs = [p.tx for p in chosen]
        try:
            result = self.chain.mine_all(txs, mix_hash=os.urandom(32))
            block = result[0].imported_block
        except EVMValidationError:
            # should not happen (selection checked nonce, fee, balance); include what applies
            self.chain.header = header
            included = []
            for p in chosen:
                try:
                    self.chain.apply_transaction(p.tx)
                    included.append(p)
                except EVMValidationError:
                    self._forget(p)
            chosen = included
            block = self.chain.mine_block(mix_hash=os.urandom(32))
        for p in chosen:
            self._senders[p.hash] = p.sender
            self._forget(p)
        if int(block.header.bloom):
            self._log_blocks.append(int(block.header.block_number))
        self.stats["blocks_mined"] += 1
        self.stats["txs_mined"] += len(chosen)
        self._flush()
        self.mined.notify_all()
        return block

    # ------------------------------------------------------------------ transactions

    def submit_raw(self, raw: bytes, wait: bool | None = None) -> bytes:
        """Admit a signed transaction to the pool (geth's rules); in instant mode mine it before
        returning. Expensive signature recovery runs before taking the lock."""
        from eth_utils import ValidationError as EVMValidationError

        try:
            tx = self._tx_builder.decode(raw)
        except Exception as exc:  # rlp / type errors of a malformed payload
            raise _server(f"invalid transaction: cannot decode: {exc}") from exc
        if tx.chain_id is not None and int(tx.chain_id) != self.chain_id:
            raise _server(f"invalid chain id {tx.chain_id}: this node serves chain id {self.chain_id}")
        try:
            tx.validate()
            sender = bytes(tx.sender)
        except EVMValidationError as exc:
            text = str(exc)
            if "gas" in text.lower():
                raise _server(f"intrinsic gas too low: {text}") from exc
            raise _server(f"invalid transaction: {text}") from exc
        if tx.gas < tx.intrinsic_gas:
            raise _server(f"intrinsic gas too low: gas {tx.gas} < {tx.intrinsic_gas}")
        ptx = PooledTx(time.monotonic(), bytes(tx.hash), sender, int(tx.nonce), tx)
        with self.lock:
            self._admit(ptx)
            if wait if wait is not None else self.block_time == 0:
                self._wait_mined(ptx)
        return ptx.hash

    def _admit(self, ptx: PooledTx) -> None:
        if ptx.hash in self.pool_by_hash:
            raise _server("already known")
        header = self.chain.header
        if ptx.tx.gas > header.gas_limit:
            raise _server(f"exceeds block gas limit: gas {ptx.tx.gas} > {header.gas_limit}")
        state = self._state_at(int(self.head.block_number))
        nonce = int(state.get_nonce(ptx.sender))
        if ptx.nonce < nonce:
            if self._is_mined(ptx.hash):
                raise _server("already known")
            raise _server(f"nonce too low: next nonce {nonce}, tx nonce {ptx.nonce}")
        balance = int(state.get_balance(ptx.sender))
        if ptx.cost > balance:
            raise _server(f"insufficient funds for gas * price + value: address {to_checksum_address(ptx.sender)} "
                          f"have {balance} want {ptx.cost}")
        if self.block_time == 0 and ptx.max_fee < int(header.base_fee_per_gas):
            raise _server(f"max fee per gas less than block base fee: maxFeePerGas {ptx.max_fee} < "
                          f"baseFee {header.base_fee_per_gas}")
        queued = self.pool.setdefault(ptx.sender, {})
        old = queued.get(ptx.nonce)
        if old is not None:
            if old.max_fee * 110 > ptx.max_fee * 100 or old.tip * 110 > ptx.tip * 100:
                raise _server("replacement transaction underpriced")
            self.pool_by_hash.pop(old.hash, None)
        queued[ptx.nonce] = ptx
        self.pool_by_hash[ptx.hash] = ptx

    def _is_mined(self, tx_hash: bytes) -> bool:
        from eth.exceptions import TransactionNotFound

        try:
            self.chain.chaindb.get_transaction_index(tx_hash)
            return True
        except TransactionNotFound:
            return False

    def _wait_mined(self, ptx: PooledTx) -> None:
        """Instant mode: mine now (with whatever else is pooled) unless a block already took it."""
        if ptx.hash in self.pool_by_hash:
            self._mine_block()

    def _send_from_dev(self, params: dict[str, Any]) -> bytes:
        """eth_sendTransaction for a dev account: nonce, gas and fees filled, signed and admitted
        under one lock, so concurrent senders from the same account never collide on a nonce."""
        sender = parse_address(params.get("from"), "from")
        key = self._dev_by_address.get(sender)
        if key is None:
            raise _server(f"unknown account {to_checksum_address(sender)}: eth_sendTransaction signs only for "
                          "eth_accounts; sign locally and use eth_sendRawTransaction")
        with self.lock:
            tx: dict[str, Any] = {"chainId": self.chain_id, "value": parse_qty(params.get("value", "0x0"), "value"),
                                  "data": hexdata(parse_data(params.get("data", params.get("input", "0x")), "data"))}
            if params.get("to"):
                tx["to"] = to_checksum_address(parse_address(params["to"], "to"))
            tx["nonce"] = (parse_qty(params["nonce"], "nonce") if "nonce" in params
                           else self.pending_nonce(sender))
            tx["gas"] = (parse_qty(params["gas"], "gas") if "gas" in params
                         else self._estimate_gas({**params}, int(self.head.block_number)))
            if "gasPrice" in params:
                tx["gasPrice"] = parse_qty(params["gasPrice"], "gasPrice")
            else:
                tip = parse_qty(params.get("maxPriorityFeePerGas", qty(DEFAULT_PRIORITY_FEE)), "maxPriorityFeePerGas")
                tx["maxPriorityFeePerGas"] = tip
                tx["maxFeePerGas"] = (parse_qty(params["maxFeePerGas"], "maxFeePerGas") if "maxFeePerGas" in params
                                      else 2 * int(self.chain.header.base_fee_per_gas) + tip)
            raw = bytes(Account.sign_transaction(tx, key).raw_transaction)
            evm_tx = self._tx_builder.decode(raw)
            _ecc.remember_sender(evm_tx, self._dev_public[sender])
            ptx = PooledTx(time.monotonic(), bytes(evm_tx.hash), sender, int(evm_tx.nonce), evm_tx)
            self._admit(ptx)
            if self.block_time == 0:
                self._wait_mined(ptx)
        return ptx.hash

    # ------------------------------------------------------------------ execution (eth_call)

    def _execute(self, params: dict[str, Any], number: int, gas: int | None = None) -> Any:
        """Run a call on the post-state of block `number` (its context) and roll it back."""
        if not isinstance(params, dict):
            raise _invalid("call object: expected {from, to, data, value, gas}")
        from eth.vm.spoof import SpoofTransaction

        header = self._header_at(number)
        vm = self.chain.get_vm(at_header=header)
        state = vm.state
        sender = parse_address(params["from"], "from") if params.get("from") else ZERO_ADDRESS
        to = parse_address(params["to"], "to") if params.get("to") else b""
        data = parse_data(params.get("data", params.get("input", "0x")) or "0x", "data")
        limit = gas if gas is not None else (parse_qty(params["gas"], "gas") if params.get("gas") else int(header.gas_limit))
        unsigned = vm.get_transaction_builder().new_unsigned_dynamic_fee_transaction(
            chain_id=self.chain_id, nonce=int(state.get_nonce(sender)), max_priority_fee_per_gas=0,
            max_fee_per_gas=0, gas=limit, to=to,
            value=parse_qty(params.get("value", "0x0"), "value"), data=data, access_list=())
        spoof = SpoofTransaction(unsigned, from_=sender)
        # no validation and a zero gas price, as geth's eth_call: the caller need not hold ETH
        executor = state.get_transaction_executor()
        snapshot = state.snapshot()
        try:
            if spoof.gas < spoof.intrinsic_gas:
                raise _server(f"intrinsic gas too low: gas {spoof.gas} < {spoof.intrinsic_gas}")
            return executor.build_computation(executor.build_evm_message(spoof), spoof)
        finally:
            state.revert(snapshot)

    @staticmethod
    def _raise_if_failed(computation: Any) -> None:
        if not computation.is_error:
            return
        from eth.exceptions import Revert

        error = computation.error
        if isinstance(error, Revert):
            data = bytes(error.args[0]) if error.args and isinstance(error.args[0], (bytes, bytearray)) else b""
            message = "execution reverted"
            if data[:4] == bytes.fromhex("08c379a0"):
                from eth_abi import decode

                with contextlib.suppress(Exception):  # malformed Error(string): keep the bare message
                    message += ": " + decode(["string"], data[4:])[0]
            raise RPCError(3, message, hexdata(data))
        raise RPCError(-32000, f"execution failed: {type(error).__name__}: {error}")

    def _call(self, params: dict[str, Any], tag: Any) -> str:
        from eth_utils import ValidationError as EVMValidationError

        try:
            computation = self._execute(params, self._block_number(tag))
        except EVMValidationError as exc:
            raise _server(str(exc)) from exc
        self._raise_if_failed(computation)
        return hexdata(computation.output)

    def _estimate_gas(self, params: dict[str, Any], number: int) -> int:
        """Smallest gas limit that succeeds (EIP-150's 63/64 probed first, then bisection)."""
        from eth_utils import ValidationError as EVMValidationError

        cap = parse_qty(params["gas"], "gas") if params.get("gas") else int(self._header_at(number).gas_limit)

        def run(limit: int) -> Any:
            try:
                return self._execute(params, number, gas=limit)
            except EVMValidationError as exc:
                raise _server(str(exc)) from exc

        top = run(cap)
        self._raise_if_failed(top)
        data = parse_data(params.get("data", params.get("input", "0x")) or "0x", "data")
        floor = 21_000 + 10 * (data.count(0) + 4 * (len(data) - data.count(0)))  # EIP-7623 data floor
        used = max(cap - int(top.get_gas_remaining()), floor)
        to = parse_address(params["to"], "to") if params.get("to") else None
        if to is not None and not self._state_at(number).get_code(to):
            return used  # a plain transfer: exactly its intrinsic gas, as geth answers
        guess = min(cap, used * 64 // 63 + 2_300)
        if guess < cap and not run(guess).is_error:
            return guess  # at most ~1.6 % + 2300 above the minimum: callers add their own margin
        low, high = guess, cap
        while high - low > max(1_000, high // 200):
            mid = (low + high) // 2
            if run(mid).is_error:
                low = mid
            else:
                high = mid
        return high

    # ------------------------------------------------------------------ logs & filters

    def _log_criteria(self, params: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(params, dict):
            raise _invalid("filter: expected an object {address, topics, fromBlock, toBlock | blockHash}")
        address = params.get("address")
        if address is None:
            addresses = None
        elif isinstance(address, str):
            addresses = {parse_address(address, "address")}
        elif isinstance(address, list):
            addresses = {parse_address(a, "address") for a in address} or None
        else:
            raise _invalid(f"address: expected an address or a list of addresses, got {address!r}")
        topics: list[set[str] | None] = []
        for position, entry in enumerate(params.get("topics") or []):
            if entry is None:
                topics.append(None)
            elif isinstance(entry, str):
                topics.append({hexdata(parse_hash(entry, f"topics[{position}]"))})
            elif isinstance(entry, list):
                options = {hexdata(parse_hash(t, f"topics[{position}]")) for t in entry if t is not None}
                topics.append(options if options and None not in entry else None)
            else:
                raise _invalid(f"topics[{position}]: expected a hash, null or a list of hashes, got {entry!r}")
        criteria: dict[str, Any] = {"addresses": addresses, "topics": topics}
        if params.get("blockHash") is not None:
            if params.get("fromBlock") is not None or params.get("toBlock") is not None:
                raise _invalid("blockHash cannot be combined with fromBlock/toBlock")
            criteria["block_hash"] = parse_hash(params["blockHash"], "blockHash")
        else:
            criteria["from"] = params.get("fromBlock", "latest")
            criteria["to"] = params.get("toBlock", "latest")
        return criteria

    def _logs(self, criteria: dict[str, Any], start: int | None = None, end: int | None = None) -> list[dict[str, Any]]:
        if "block_hash" in criteria:
            start = end = int(self._header_by_hash(criteria["block_hash"]).block_number)
        else:
            start = self._block_number(criteria["from"], "fromBlock") if start is None else start
            end = self._block_number(criteria["to"], "toBlock") if end is None else end
        if start > end:
            return []
        addresses = {to_checksum_address(a) for a in criteria["addresses"]} if criteria["addresses"] else None
        topics = criteria["topics"]
        out = []
        lo = bisect.bisect_left(self._log_blocks, start)
        hi = bisect.bisect_right(self._log_blocks, end)
        for number in self._log_blocks[lo:hi]:
            for receipt in self._receipts_of(number):
                for log in receipt["logs"]:
                    if addresses is not None and log["address"] not in addresses:
                        continue
                    if all(want is None or (i < len(log["topics"]) and log["topics"][i] in want)
                           for i, want in enumerate(topics)):
                        out.append(log)
        return out

    def _new_filter(self, flt: _LogFilter | _BlockFilter) -> str:
        self._expire_filters()
        fid = next(self._filter_ids)
        self._filters[fid] = flt
        return qty(fid)

    def _expire_filters(self) -> None:
        now = time.monotonic()
        for fid in [f for f, flt in self._filters.items() if now - flt.touched > FILTER_TTL]:
            del self._filters[fid]

    def _filter(self, fid: Any) -> _LogFilter | _BlockFilter:
        flt = self._filters.get(parse_qty(fid, "filter id"))
        if flt is None:
            raise _server("filter not found")
        flt.touched = time.monotonic()
        return flt

    def _filter_changes(self, fid: Any) -> list[Any]:
        flt = self._filter(fid)
        head = int(self.head.block_number)
        if flt.next_block > head:
            return []
        start, flt.next_block = flt.next_block, head + 1
        if isinstance(flt, _BlockFilter):
            return [hexdata(self._header_at(n).hash) for n in range(start, head + 1)]
        if "block_hash" in flt.criteria:
            return []
        to = flt.criteria["to"]
        end = head if to in (None, "latest", "pending", "safe", "finalized") else min(head, parse_qty(to, "toBlock"))
        return self._logs(flt.criteria, start, end)

    # ------------------------------------------------------------------ JSON-RPC

    def request(self, method: str, params: list[Any] | None) -> Any:
        """Answer one JSON-RPC call; raises RPCError for anything the caller must see as an error."""
        handler = self._methods().get(method)
        if handler is None:
            raise RPCError(-32601, f"the method {method} does not exist/is not available")
        params = list(params or [])
        if method == "eth_sendRawTransaction":  # signature recovery outside the lock
            if not params:
                raise _invalid("eth_sendRawTransaction: missing the signed transaction")
            return hexdata(self.submit_raw(parse_data(params[0], "raw transaction")))
        if method == "eth_sendTransaction":
            if not params or not isinstance(params[0], dict):
                raise _invalid("eth_sendTransaction: expected a transaction object")
            return hexdata(self._send_from_dev(params[0]))
        with self.lock:
            try:
                return handler(*params)
            except TypeError as exc:
                if "positional argument" in str(exc):
                    raise _invalid(f"{method}: wrong number of parameters ({len(params)})") from exc
                raise

    def request_batch(self, calls: list[tuple[str, list[Any] | None]]) -> list[Any | RPCError]:
        """Answer a JSON-RPC batch in order. Submissions in it share one block in instant mode
        (a batch of 100 signed transactions is one block, not 100)."""
        out: list[Any | RPCError] = []
        submitted = False
        for method, params in calls:
            try:
                if method == "eth_sendRawTransaction" and params:
                    out.append(hexdata(self.submit_raw(parse_data(params[0], "raw transaction"), wait=False)))
                    submitted = True
                else:
                    out.append(self.request(method, params))
            except RPCError as exc:
                out.append(exc)
        if submitted and self.block_time == 0:
            with self.lock:
                if self.pool_by_hash:
                    self._mine_block()
        return out

    def _methods(self) -> dict[str, Callable[..., Any]]:
        return {
            "web3_clientVersion": lambda: CLIENT_VERSION,
            "web3_sha3": lambda data: hexdata(keccak(parse_data(data))),
            "net_version": lambda: str(self.chain_id),
            "net_listening": lambda: True,
            "net_peerCount": lambda: "0x0",
            "eth_chainId": lambda: qty(self.chain_id),
            "eth_protocolVersion": lambda: "0x41",
            "eth_syncing": lambda: False,
            "eth_mining": lambda: True,
            "eth_hashrate": lambda: "0x0",
            "eth_coinbase": lambda: to_checksum_address(ZERO_ADDRESS),
            "eth_accounts": lambda: list(self.dev_addresses),
            "eth_blockNumber": lambda: qty(self.head.block_number),
            "eth_gasPrice": lambda: qty(int(self.chain.header.base_fee_per_gas) + DEFAULT_PRIORITY_FEE),
            "eth_maxPriorityFeePerGas": lambda: qty(DEFAULT_PRIORITY_FEE),
            "eth_blobBaseFee": lambda: "0x1",
            "eth_feeHistory": self._fee_history,
            "eth_getBalance": lambda a, tag="latest": qty(self._state_at(self._block_number(tag)).get_balance(parse_address(a))),
            "eth_getCode": lambda a, tag="latest": hexdata(self._state_at(self._block_number(tag)).get_code(parse_address(a))),
            "eth_getStorageAt": lambda a, slot, tag="latest": hexdata(
                int(self._state_at(self._block_number(tag)).get_storage(parse_address(a), parse_qty(slot, "slot"))).to_bytes(32, "big")),
            "eth_getTransactionCount": self._transaction_count,
            "eth_getBlockByNumber": self._block_by_number,
            "eth_getBlockByHash": lambda h, full=False: self._block_json(
                self.chain.get_block_by_hash(self._header_by_hash(parse_hash(h)).hash), bool(full)),
            "eth_getBlockTransactionCountByNumber": lambda tag: qty(len(
                self.chain.get_canonical_block_by_number(self._block_number(tag)).transactions)),
            "eth_getBlockReceipts": lambda tag: self._receipts_of(self._block_number(tag)),
            "eth_getTransactionByHash": self._transaction_by_hash,
            "eth_getTransactionReceipt": self._transaction_receipt,
            "eth_call": lambda call, tag="latest", *_overrides: self._call(call, tag),
            "eth_estimateGas": lambda call, tag="latest", *_: qty(self._estimate_gas(call, self._block_number(tag))),
            "eth_sendRawTransaction": lambda raw: None,  # handled in request()
            "eth_sendTransaction": lambda tx: None,  # handled in request()
            "eth_getLogs": lambda params: self._logs(self._log_criteria(params)),
            "eth_newFilter": lambda params: self._new_filter(_LogFilter(
                self._log_criteria(params), self._filter_start(params), time.monotonic())),
            "eth_newBlockFilter": lambda: self._new_filter(_BlockFilter(int(self.head.block_number) + 1, time.monotonic())),
            "eth_newPendingTransactionFilter": lambda: self._new_filter(_BlockFilter(1 << 62, time.monotonic())),
            "eth_getFilterChanges": self._filter_changes,
            "eth_getFilterLogs": lambda fid: self._filter_logs(fid),
            "eth_uninstallFilter": lambda fid: self._filters.pop(parse_qty(fid, "filter id"), None) is not None,
            "txpool_content": self._txpool_content,
            "evm_mine": self._evm_mine,
            "anvil_mine": lambda n="0x1", interval=None: self._evm_mine_many(parse_qty(n, "blocks")),
            "evm_increaseTime": self._increase_time,
            "evm_setNextBlockTimestamp": self._set_next_timestamp,
            "coopml_nodeInfo": lambda: {"blockTime": self.block_time, "stateFile": str(self.state_file.path) if self.state_file else None,
                                        "pooled": len(self.pool_by_hash), **self.stats},
        }

    def _filter_start(self, params: dict[str, Any]) -> int:
        frm = params.get("fromBlock") if isinstance(params, dict) else None
        if frm in (None, "latest", "pending", "safe", "finalized"):
            return int(self.head.block_number) + 1
        return self._block_number(frm, "fromBlock")

    def _filter_logs(self, fid: Any) -> list[dict[str, Any]]:
        flt = self._filter(fid)
        if not isinstance(flt, _LogFilter):
            raise _server("filter is not a log filter")
        return self._logs(flt.criteria)

    def _transaction_count(self, address: Any, tag: Any = "latest") -> str:
        raw = parse_address(address)
        if tag == "pending":
            return qty(self.pending_nonce(raw))
        return qty(self._state_at(self._block_number(tag)).get_nonce(raw))

    def _block_by_number(self, tag: Any, full: bool = False) -> dict[str, Any] | None:
        if tag == "pending":
            h = self.chain.header
            latest = self._block_json(self.chain.get_canonical_block_by_number(int(self.head.block_number)), False)
            txs = [self._tx_json(p.tx, None, None, p.sender) if full else hexdata(p.hash)
                   for p in sorted(self.pool_by_hash.values())]
            return {**latest, "number": qty(h.block_number), "hash": None, "parentHash": latest["hash"],
                    "timestamp": qty(max(int(self.head.timestamp) + 1, int(self.clock()) + self.time_offset)),
                    "baseFeePerGas": qty(h.base_fee_per_gas), "transactions": txs, "gasUsed": "0x0", "nonce": None}
        try:
            number = self._block_number(tag)
        except RPCError:
            if isinstance(tag, str) and tag.startswith("0x"):
                return None  # a future block: null, as geth
            raise
        return self._block_json(self.chain.get_canonical_block_by_number(number), bool(full))

    def _transaction_by_hash(self, tx_hash: Any) -> dict[str, Any] | None:
        from eth.exceptions import TransactionNotFound

        raw = parse_hash(tx_hash)
        pooled = self.pool_by_hash.get(raw)
        if pooled is not None:
            return self._tx_json(pooled.tx, None, None, pooled.sender)
        try:
            number, index = self.chain.chaindb.get_transaction_index(raw)
        except TransactionNotFound:
            return None
        block = self.chain.get_canonical_block_by_number(number)
        return self._tx_json(block.transactions[index], block.header, index)

    def _transaction_receipt(self, tx_hash: Any) -> dict[str, Any] | None:
        from eth.exceptions import TransactionNotFound

        try:
            number, index = self.chain.chaindb.get_transaction_index(parse_hash(tx_hash))
        except TransactionNotFound:
            return None
        return self._receipts_of(number)[index]

    def _fee_history(self, count: Any, newest: Any = "latest", percentiles: list[float] | None = None) -> dict[str, Any]:
        n = max(1, min(1024, parse_qty(count, "blockCount") if not isinstance(count, int) else count))
        last = self._block_number(newest, "newestBlock")
        first = max(0, last - n + 1)
        base_fees, ratios, rewards = [], [], []
        for number in range(first, last + 1):
            h = self._header_at(number)
            base_fees.append(qty(h.base_fee_per_gas))
            ratios.append(int(h.gas_used) / int(h.gas_limit))
            if percentiles:
                tips = sorted(max(0, min(int(tx.max_priority_fee_per_gas),
                                         int(tx.max_fee_per_gas) - int(h.base_fee_per_gas)))
                              for tx in self.chain.get_canonical_block_by_number(number).transactions)
                rewards.append([qty(tips[min(len(tips) - 1, int(len(tips) * p / 100))] if tips else 0)
                                for p in percentiles])
        base_fees.append(qty(self.chain.header.base_fee_per_gas) if last == int(self.head.block_number)
                         else qty(self._header_at(last + 1).base_fee_per_gas))
        out: dict[str, Any] = {"oldestBlock": qty(first), "baseFeePerGas": base_fees, "gasUsedRatio": ratios,
                               "baseFeePerBlobGas": ["0x1"] * len(base_fees), "blobGasUsedRatio": [0.0] * len(ratios)}
        if percentiles:
            out["reward"] = rewards
        return out

    def _txpool_content(self) -> dict[str, Any]:
        pending: dict[str, dict[str, Any]] = {}
        for sender, queued in self.pool.items():
            pending[to_checksum_address(sender)] = {str(n): self._tx_json(p.tx, None, None, sender)
                                                    for n, p in sorted(queued.items())}
        return {"pending": pending, "queued": {}}

    def _evm_mine(self, timestamp: Any = None) -> str:
        if timestamp is not None:
            self.next_timestamp = parse_qty(timestamp, "timestamp") if not isinstance(timestamp, dict) else None
        self._mine_block()
        return "0x0"

    def _evm_mine_many(self, n: int) -> None:
        for _ in range(max(1, n)):
            self._mine_block()

    def _increase_time(self, seconds: Any) -> str:
        delta = parse_qty(seconds, "seconds") if not isinstance(seconds, int) else seconds
        if delta < 0:
            raise _invalid("evm_increaseTime: seconds must be >= 0")
        self.time_offset += delta
        # at least `delta` after the head even when bursts of blocks ran the clock ahead of wall time
        self.min_next_timestamp = max(self.min_next_timestamp, int(self.head.timestamp) + delta)
        return qty(self.time_offset)

    def _set_next_timestamp(self, timestamp: Any) -> None:
        ts = parse_qty(timestamp, "timestamp") if not isinstance(timestamp, int) else timestamp
        if ts <= int(self.head.timestamp):
            raise _invalid(f"timestamp {ts} is not after the head's {self.head.timestamp}")
        self.next_timestamp = ts


def dev_keys(accounts: int = 10) -> list[bytes]:
    """The node's dev account keys (1, 2, ... as 32-byte keys: public knowledge, dev only)."""
    from eth_tester.backends.pyevm.main import get_default_account_keys

    return [k.to_bytes() for k in get_default_account_keys(quantity=accounts)]


def batch(iterable: Iterable[Any], size: int) -> Iterable[list[Any]]:
    chunk: list[Any] = []
    for item in iterable:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk

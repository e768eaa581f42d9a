"""Transaction manager for agents: local signing, EIP-1559 fees with caps, nonces that survive
restarts, and a journal that makes payments idempotent.

The rule: a node never pays twice by retrying. Every transaction belongs to an *intent* (an id
the caller chooses, e.g. "withdraw:task-3" or "deposit:task-3:verifier"). Before anything is
broadcast, the signed raw transaction is committed to the journal (SQLite, fsync'd, mode 0600).
Asking again for the same intent — after a timeout, a node restart or a crash of this process —
never signs a new payment: it returns the existing receipt, or re-broadcasts the SAME signed
transaction (same nonce, so at most one version can ever be mined), or, if it is stuck, replaces
it with a fee-bumped version of the same nonce (journaled first too).

Errors are named by cause (coopml.errors): ChainUnavailable / TransactionTimeout (transient:
retry the same intent), InsufficientFunds, FeeTooHigh, NonceConflict, TransactionReplaced,
TransactionDropped, WrongChain.
"""

from __future__ import annotations

import math
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import requests
from eth_account.signers.local import LocalAccount
from eth_typing import HexStr
from eth_utils import keccak, to_checksum_address
from hexbytes import HexBytes
from pydantic import BaseModel, ConfigDict, Field
from web3 import Web3
from web3.exceptions import TransactionNotFound
from web3.types import TxParams, TxReceipt

from coopml.errors import (
    ChainError,
    ChainUnavailable,
    FeeTooHigh,
    InsufficientFunds,
    NonceConflict,
    TransactionDropped,
    TransactionReplaced,
    TransactionTimeout,
    WrongChain,
)

GWEI = 10**9


class FeePolicy(BaseModel):
    """How the manager prices, waits for and replaces transactions."""

    model_config = ConfigDict(frozen=True)

    max_fee_cap_wei: int = Field(500 * GWEI, gt=0, description="never sign a maxFeePerGas above this")
    priority_fee_cap_wei: int = Field(5 * GWEI, ge=0, description="never tip more than this per gas")
    priority_fee_wei: int | None = Field(None, ge=0, description="fixed tip; None: ask the node (eth_maxPriorityFeePerGas)")
    base_fee_multiplier: float = Field(2.0, ge=1.0, description="maxFee = base fee x this + tip (2: six full blocks of headroom)")
    bump_percent: int = Field(13, ge=10, description="fee increase of a replacement (nodes require >= 10 %)")
    stuck_after_s: float = Field(30.0, gt=0, description="no receipt this long: re-broadcast if forgotten, else bump fees")
    confirmations: int = Field(0, ge=0, description="blocks on top of the including block before a receipt counts (0 on dev chains)")
    receipt_timeout_s: float = Field(120.0, gt=0, description="give up waiting (TransactionTimeout: retry the intent)")
    poll_min_s: float = Field(0.001, gt=0)
    poll_max_s: float = Field(0.25, gt=0)
    fee_cache_s: float = Field(1.0, ge=0, description="reuse fee suggestions this long")


@dataclass(frozen=True)
class JournalEntry:
    intent: str
    chain_id: int
    sender: str
    nonce: int
    state: str  # pending | mined | failed (mined but reverted)
    hashes: tuple[str, ...]  # every signed version, oldest first
    mined_hash: str | None
    fingerprint: str


class TxJournal:
    """SQLite journal of intents and every signed version of their transaction. `path=None`:
    in memory (tests, throw-away chains). Commits are synchronous (FULL): an entry written
    before a broadcast survives a crash right after it."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not self.path.exists():
                os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
            os.chmod(self.path, 0o600)
        try:
            self.conn = sqlite3.connect(str(self.path) if self.path else ":memory:", check_same_thread=False,
                                        isolation_level=None)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            self.conn.executescript("""
                CREATE TABLE IF NOT EXISTS intents (
                    intent TEXT PRIMARY KEY, chain_id INTEGER NOT NULL, sender TEXT NOT NULL,
                    nonce INTEGER NOT NULL, state TEXT NOT NULL, mined_hash TEXT, fingerprint TEXT NOT NULL,
                    created REAL NOT NULL, updated REAL NOT NULL);
                CREATE TABLE IF NOT EXISTS txs (
                    tx_hash TEXT PRIMARY KEY, intent TEXT NOT NULL REFERENCES intents(intent),
                    raw BLOB NOT NULL, max_fee INTEGER NOT NULL, priority_fee INTEGER NOT NULL, created REAL NOT NULL);
                CREATE INDEX IF NOT EXISTS intents_by_sender ON intents (chain_id, sender, state);
                CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
            """)
        except sqlite3.DatabaseError as exc:
            raise ChainError(f"transaction journal {self.path} is unreadable (not a journal?): {exc}") from exc
        self.lock = threading.RLock()

    def meta(self, name: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return str(row[0]) if row else None

    def set_meta(self, name: str, value: str) -> None:
        with self.lock:
            self.conn.execute("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", (name, value))

    def get(self, intent: str) -> JournalEntry | None:
        row = self.conn.execute("SELECT intent, chain_id, sender, nonce, state, mined_hash, fingerprint FROM intents "
                                "WHERE intent = ?", (intent,)).fetchone()
        if row is None:
            return None
        hashes = tuple(h for (h,) in self.conn.execute(
            "SELECT tx_hash FROM txs WHERE intent = ? ORDER BY created, rowid", (intent,)))
        return JournalEntry(row[0], int(row[1]), row[2], int(row[3]), row[4], hashes, row[5], row[6])

    def raw(self, tx_hash: str) -> tuple[bytes, int, int]:
        row = self.conn.execute("SELECT raw, max_fee, priority_fee FROM txs WHERE tx_hash = ?", (tx_hash,)).fetchone()
        if row is None:
            raise ChainError(f"transaction {tx_hash} is not in the journal")
        return bytes(row[0]), int(row[1]), int(row[2])

    def record(self, intent: str, chain_id: int, sender: str, nonce: int, fingerprint: str, tx_hash: str,
               raw: bytes, max_fee: int, priority_fee: int) -> None:
        """Commit a signed version (creating the intent if new) BEFORE it is broadcast."""
        now = time.time()
        with self.lock, self.conn:
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.execute("INSERT OR IGNORE INTO intents (intent, chain_id, sender, nonce, state, fingerprint, "
                              "created, updated) VALUES (?, ?, ?, ?, 'pending', ?, ?, ?)",
                              (intent, chain_id, sender, nonce, fingerprint, now, now))
            self.conn.execute("INSERT OR IGNORE INTO txs (tx_hash, intent, raw, max_fee, priority_fee, created) "
                              "VALUES (?, ?, ?, ?, ?, ?)", (tx_hash, intent, raw, max_fee, priority_fee, now))

    def finish(self, intent: str, state: str, mined_hash: str) -> None:
        with self.lock, self.conn:
            self.conn.execute("UPDATE intents SET state = ?, mined_hash = ?, updated = ? WHERE intent = ?",
                              (state, mined_hash, time.time(), intent))

    def forget(self, intent: str) -> None:
        """Drop an intent whose only version the node refused outright (never in any pool)."""
        with self.lock, self.conn:
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.execute("DELETE FROM txs WHERE intent = ?", (intent,))
            self.conn.execute("DELETE FROM intents WHERE intent = ?", (intent,))

    def pending(self, chain_id: int, sender: str | None = None) -> list[JournalEntry]:
        query = "SELECT intent FROM intents WHERE chain_id = ? AND state = 'pending'"
        args: tuple[Any, ...] = (chain_id,)
        if sender is not None:
            query += " AND sender = ?"
            args += (sender,)
        return [e for (i,) in self.conn.execute(query + " ORDER BY nonce", args) if (e := self.get(i)) is not None]

    def highest_nonce(self, chain_id: int, sender: str) -> int | None:
        row = self.conn.execute("SELECT MAX(nonce) FROM intents WHERE chain_id = ? AND sender = ?",
                                (chain_id, sender)).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def close(self) -> None:
        self.conn.close()


def _message(exc: BaseException) -> str:
    """The node's error message (web3 v8 puts the JSON-RPC error dict in args[0])."""
    arg = exc.args[0] if exc.args else None
    if isinstance(arg, dict):
        return str(arg.get("message", arg))
    return str(exc)


def is_unavailable(exc: BaseException) -> bool:
    return isinstance(exc, (requests.ConnectionError, requests.Timeout, ConnectionError, TimeoutError, ChainUnavailable))


def fingerprint(tx: dict[str, Any]) -> str:
    """What the intent pays for: recipient, value and calldata (not gas, fees or nonce)."""
    to = (tx.get("to") or "").lower()
    data = HexBytes(tx.get("data") or b"").hex()
    return keccak(text=f"{to}|{int(tx.get('value', 0))}|{data}").hex()


class TxManager:
    """Sends transactions signed by local keys through one web3 connection. Thread-safe."""

    def __init__(self, w3: Web3, journal: TxJournal | str | Path | None = None, policy: FeePolicy | None = None,
                 expected_chain_id: int | None = None, lock: threading.RLock | None = None) -> None:
        self.w3 = w3
        self.journal = journal if isinstance(journal, TxJournal) else TxJournal(journal)
        self.policy = policy or FeePolicy()
        self.expected_chain_id = expected_chain_id
        self._chain_id: int | None = None
        self._nonces: dict[str, int] = {}
        self._resumed: set[str] = set()
        self._fee_cache: tuple[float, int, int] | None = None  # (time, base fee, tip)
        self._node_tip_supported = True
        # held while allocating a nonce, journaling and broadcasting (share the Chain's: the
        # in-process eth-tester backend is not thread-safe)
        self._lock = lock or threading.RLock()
        self._keys_for: dict[str, bytes] = {}  # senders whose stuck transactions may be re-signed
        # test hook: called with the intent id after journaling, before the first broadcast
        self.before_broadcast: Callable[[str], None] | None = None

    # ------------------------------------------------------------------ chain identity

    def _rpc(self, fn: Callable[[], Any], what: str) -> Any:
        try:
            return fn()
        except Exception as exc:  # classify transport failures
            if is_unavailable(exc):
                raise ChainUnavailable(f"node unreachable while {what}: {exc}") from exc
            raise

    def chain_id(self) -> int:
        """The node's chain id, checked once against the configured one and the journal's chain."""
        if self._chain_id is None:
            actual = int(self._rpc(lambda: self.w3.eth.chain_id, "reading the chain id"))
            if self.expected_chain_id is not None and actual != self.expected_chain_id:
                raise WrongChain(f"wrong chain: configured chain id {self.expected_chain_id}, the node serves {actual}",
                                 self.expected_chain_id, actual)
            genesis = HexBytes(self._rpc(lambda: self.w3.eth.get_block(0)["hash"], "reading the genesis block")).hex()
            known = self.journal.meta(f"genesis:{actual}")
            if known is None:
                self.journal.set_meta(f"genesis:{actual}", genesis)
            elif known != genesis:
                raise WrongChain(f"the transaction journal {self.journal.path} belongs to another chain with id {actual} "
                                 f"(genesis {known[:18]}..., the node's is {genesis[:18]}...): the node was reset; "
                                 "start a new journal", known, genesis)
            self._chain_id = actual
        return self._chain_id

    # ------------------------------------------------------------------ fees & nonces

    def suggest_fees(self) -> tuple[int, int]:
        """(maxFeePerGas, maxPriorityFeePerGas) within the policy's caps."""
        p = self.policy
        cached = self._fee_cache
        if cached is not None and time.monotonic() - cached[0] < p.fee_cache_s:
            base, tip = cached[1], cached[2]
        else:
            block = self._rpc(lambda: self.w3.eth.get_block("latest"), "reading the latest block")
            base = int(block.get("baseFeePerGas") or 0)
            tip = p.priority_fee_wei if p.priority_fee_wei is not None else self._node_tip()
            self._fee_cache = (time.monotonic(), base, tip)
        tip = min(tip, p.priority_fee_cap_wei)
        if base > p.max_fee_cap_wei:
            raise FeeTooHigh(f"base fee {base} wei is above the fee cap {p.max_fee_cap_wei} wei: not signing")
        max_fee = min(p.max_fee_cap_wei, math.ceil(base * p.base_fee_multiplier) + tip)
        return max_fee, min(tip, max_fee)

    def _node_tip(self) -> int:
        if self._node_tip_supported:
            try:
                return int(self._rpc(lambda: self.w3.eth.max_priority_fee, "reading the priority fee"))
            except ChainUnavailable:
                raise
            except Exception:  # noqa: BLE001 - method missing on this node: use fee history / default
                self._node_tip_supported = False
        try:
            history = self.w3.eth.fee_history(5, "latest", [50])
            tips = [int(r[0]) for r in history.get("reward", []) if r]
            if tips:
                return sorted(tips)[len(tips) // 2]
        except Exception as exc:
            if is_unavailable(exc):
                raise ChainUnavailable(f"node unreachable while reading fee history: {exc}") from exc
        return GWEI

    def _allocate_nonce(self, sender: str, chain_id: int) -> int:
        """Next nonce: the node's pending count the first time in this process (and after a
        refusal), then a local counter; never below the journal's highest + 1."""
        local = self._nonces.get(sender)
        if local is None:
            local = int(self._rpc(lambda: self.w3.eth.get_transaction_count(to_checksum_address(sender), "pending"),
                                  "reading the nonce"))
        journaled = self.journal.highest_nonce(chain_id, sender)
        nonce = max(local, (journaled + 1) if journaled is not None else 0)
        self._nonces[sender] = nonce + 1
        return nonce

    # ------------------------------------------------------------------ sending

    def knows(self, intent: str) -> bool:
        return self.journal.get(intent) is not None

    def send(self, account: LocalAccount, tx: Mapping[str, Any], intent: str | None = None) -> TxReceipt:
        """Sign and send `tx` (to, value, data, gas; fees and nonce are filled here) as `intent`,
        then wait for its receipt (with the policy's confirmations). Returns the receipt — also
        for a reverted transaction (status 0): deciding what a revert means is the caller's.
        An intent already journaled is resumed instead (nothing new is signed unless stuck)."""
        intent = intent or f"anon:{uuid.uuid4()}"
        if self._start(account, dict(tx), intent):
            return self.resume(intent)
        return self._await(intent)

    def submit(self, account: LocalAccount, tx: Mapping[str, Any], intent: str | None = None) -> str:
        """As `send`, but return the transaction hash once broadcast, without waiting."""
        intent = intent or f"anon:{uuid.uuid4()}"
        if self._start(account, dict(tx), intent):
            return self.rebroadcast(intent)
        entry = self.journal.get(intent)
        assert entry is not None
        return entry.hashes[-1]

    def _start(self, account: LocalAccount, tx: dict[str, Any], intent: str) -> bool:
        """Journal and broadcast a new intent; True when the intent was already journaled."""
        chain_id = self.chain_id()
        sender = to_checksum_address(account.address)
        fp = fingerprint(tx)
        self._keys_for[sender] = bytes(account.key)
        entry = self.journal.get(intent)
        if entry is not None:
            if entry.fingerprint != fp or entry.sender != sender:
                raise ChainError(f"intent {intent!r} was journaled for another transaction (sender {entry.sender}); "
                                 "intent ids must name one payment")
            return True
        with self._lock:
            self._resume_sender(sender, chain_id)
            max_fee, tip = self.suggest_fees()
            nonce = self._allocate_nonce(sender, chain_id)
            signed = self._sign(account, tx, chain_id, nonce, max_fee, tip)
            tx_hash = "0x" + bytes(signed.hash).hex()
            self.journal.record(intent, chain_id, sender, nonce, fp, tx_hash, bytes(signed.raw_transaction),
                                max_fee, tip)
            if self.before_broadcast is not None:
                self.before_broadcast(intent)
            self._first_broadcast(intent, account, tx, bytes(signed.raw_transaction), sender, chain_id)
        return False

    def _sign(self, account: LocalAccount, tx: dict[str, Any], chain_id: int, nonce: int, max_fee: int,
              tip: int) -> Any:
        fields = {k: v for k, v in tx.items() if k not in ("from", "gasPrice", "maxFeePerGas", "maxPriorityFeePerGas",
                                                             "nonce", "chainId", "type")}
        fields.update(chainId=chain_id, nonce=nonce, maxFeePerGas=max_fee, maxPriorityFeePerGas=tip, type=2)
        if fields.get("to"):
            fields["to"] = to_checksum_address(fields["to"])
        if "gas" not in fields:
            call = cast(TxParams, {**{k: v for k, v in fields.items() if k in ("to", "value", "data")},
                                   "from": account.address})
            fields["gas"] = int(self._rpc(lambda: self.w3.eth.estimate_gas(call), "estimating gas") * 1.2)
        return account.sign_transaction(fields)

    def _first_broadcast(self, intent: str, account: LocalAccount, tx: dict[str, Any], raw: bytes, sender: str,
                         chain_id: int) -> None:
        try:
            self._broadcast(raw)
        except _Rejected as rejected:
            text = rejected.text.lower()
            self.journal.forget(intent)  # refused outright: it is in no pool, nothing can mine it
            self._nonces.pop(sender, None)
            if "insufficient funds" in text:
                raise InsufficientFunds(f"{sender} cannot pay for intent {intent!r}: {rejected.text}") from None
            if "nonce too low" in text or "nonce too high" in text:
                # our counter was stale: another tool used the key. Nothing of ours went out: re-sign once.
                max_fee, tip = self.suggest_fees()
                nonce = self._allocate_nonce(sender, chain_id)
                signed = self._sign(account, tx, chain_id, nonce, max_fee, tip)
                self.journal.record(intent, chain_id, sender, nonce, fingerprint(tx), "0x" + bytes(signed.hash).hex(),
                                    bytes(signed.raw_transaction), max_fee, tip)
                try:
                    self._broadcast(bytes(signed.raw_transaction))
                except _Rejected as again:
                    self.journal.forget(intent)
                    self._nonces.pop(sender, None)
                    raise NonceConflict(f"nonce {nonce} of {sender} is taken by a transaction this journal does not "
                                        f"know ({again.text}); is another process using the same key?") from None
                return
            raise ChainError(f"node refused the transaction of intent {intent!r}: {rejected.text}") from None

    def _broadcast(self, raw: bytes) -> None:
        """eth_sendRawTransaction; 'already known' counts as accepted. Raises _Rejected with the
        node's message, ChainUnavailable when the outcome is unknown (node unreachable)."""
        try:
            self.w3.eth.send_raw_transaction(raw)
        except Exception as exc:
            if is_unavailable(exc):
                raise ChainUnavailable(f"node unreachable while broadcasting: {exc}") from exc
            text = _message(exc)
            low = text.lower()
            if "already known" in low or "already imported" in low or "known transaction" in low:
                return
            raise _Rejected(text) from exc

    # ------------------------------------------------------------------ resuming

    def resume(self, intent: str) -> TxReceipt:
        """Carry a journaled intent to its receipt without signing anything new unless stuck."""
        entry = self._entry(intent)
        if entry.state != "pending" and entry.mined_hash:
            receipt = self._receipt(entry.mined_hash)
            if receipt is not None:
                return receipt
        try:
            self._rebroadcast(entry)
        except ChainUnavailable:
            pass  # _await keeps trying until the node is back or the timeout
        return self._await(intent)

    def rebroadcast(self, intent: str) -> str:
        """Send a journaled intent's newest signed version again (a node restart lost its pool);
        returns its hash. Nothing is re-signed."""
        entry = self._entry(intent)
        return self._rebroadcast(entry) or entry.hashes[-1]

    def _entry(self, intent: str) -> JournalEntry:
        entry = self.journal.get(intent)
        if entry is None:
            raise ChainError(f"intent {intent!r} is not in the journal")
        if entry.chain_id != self.chain_id():
            raise WrongChain(f"intent {intent!r} was signed for chain {entry.chain_id}, the node serves {self.chain_id()}",
                             entry.chain_id, self.chain_id())
        return entry

    def _rebroadcast(self, entry: JournalEntry) -> str | None:
        """Re-send the newest version the node accepts; None when one is already mined."""
        for tx_hash in reversed(entry.hashes):
            if self._receipt(tx_hash) is not None:
                return None
            try:
                self._broadcast(self.journal.raw(tx_hash)[0])
                return tx_hash
            except _Rejected:
                continue  # underpriced against our own newer version, or nonce used: _await decides
        return None

    def _resume_sender(self, sender: str, chain_id: int) -> None:
        """Once per sender and process: re-broadcast journaled transactions the node forgot (a
        node restart loses its pool), so a new nonce never waits behind a lost one."""
        if sender in self._resumed:
            return
        for entry in self.journal.pending(chain_id, sender):
            for tx_hash in reversed(entry.hashes):
                if self._receipt(tx_hash) is not None:
                    break
                try:
                    self._broadcast(self.journal.raw(tx_hash)[0])
                    break
                except _Rejected:
                    continue
        self._resumed.add(sender)

    def resume_all(self) -> list[str]:
        """Re-broadcast every pending journaled intent (at start-up); returns their ids."""
        chain_id = self.chain_id()
        entries = self.journal.pending(chain_id)
        for sender in {e.sender for e in entries}:
            self._resumed.discard(sender)
            self._resume_sender(sender, chain_id)
        return [e.intent for e in entries]

    # ------------------------------------------------------------------ waiting

    def _receipt(self, tx_hash: str) -> TxReceipt | None:
        try:
            return cast(TxReceipt, self._rpc(lambda: self.w3.eth.get_transaction_receipt(HexStr(tx_hash)), "reading a receipt"))
        except TransactionNotFound:
            return None

    def _known(self, tx_hash: str) -> bool:
        try:
            self._rpc(lambda: self.w3.eth.get_transaction(HexStr(tx_hash)), "reading a transaction")
            return True
        except TransactionNotFound:
            return False

    def _await(self, intent: str) -> TxReceipt:
        p = self.policy
        deadline = time.monotonic() + p.receipt_timeout_s
        last_action = time.monotonic()
        interval = p.poll_min_s
        unavailable: ChainUnavailable | None = None
        while True:
            entry = self.journal.get(intent)
            assert entry is not None
            try:
                for tx_hash in reversed(entry.hashes):
                    receipt = self._receipt(tx_hash)
                    if receipt is not None:
                        if self._confirmed(receipt):
                            self.journal.finish(intent, "mined" if receipt["status"] == 1 else "failed", tx_hash)
                            return receipt
                        break
                else:
                    if time.monotonic() - last_action > p.stuck_after_s:
                        self._unstick(entry)
                        last_action = time.monotonic()
                unavailable = None
            except ChainUnavailable as exc:  # the node restarts: keep the intent, keep trying
                unavailable = exc
            if time.monotonic() > deadline:
                if unavailable is not None:
                    raise ChainUnavailable(f"node unreachable while waiting for intent {intent!r} "
                                           f"({entry.hashes[-1]}); retry the intent: {unavailable}") from unavailable
                raise TransactionTimeout(f"intent {intent!r} ({entry.hashes[-1]}, nonce {entry.nonce}) not mined "
                                         f"within {p.receipt_timeout_s:g} s; it stays journaled: retry the intent")
            time.sleep(interval)
            interval = min(interval * 2, p.poll_max_s)

    def _confirmed(self, receipt: TxReceipt) -> bool:
        if self.policy.confirmations == 0:
            return True
        head = int(self._rpc(lambda: self.w3.eth.block_number, "reading the head"))
        return head - int(receipt["blockNumber"]) >= self.policy.confirmations

    def _unstick(self, entry: JournalEntry) -> None:
        """No receipt for a while: nonce used by someone else? forgotten by the node? underpriced?"""
        latest = int(self._rpc(lambda: self.w3.eth.get_transaction_count(to_checksum_address(entry.sender), "latest"), "reading the nonce"))
        if latest > entry.nonce:
            for tx_hash in entry.hashes:  # a last look: mined between our polls?
                if self._receipt(tx_hash) is not None:
                    return
            self.journal.finish(entry.intent, "replaced", "")
            raise TransactionReplaced(
                f"nonce {entry.nonce} of {entry.sender} was used by a transaction that is not one of intent "
                f"{entry.intent!r}'s {len(entry.hashes)} version(s): another process signs with this key; "
                "the intent did NOT happen")
        newest = entry.hashes[-1]
        if not any(self._known(h) for h in entry.hashes):
            raw = self.journal.raw(newest)[0]
            try:
                self._broadcast(raw)  # the node forgot it (restart, eviction): same signed bytes again
            except _Rejected as rejected:
                raise TransactionDropped(f"the node forgot intent {entry.intent!r} ({newest}) and refuses it again: "
                                         f"{rejected.text}") from None
            return
        self._replace(entry)

    def _replace(self, entry: JournalEntry) -> None:
        """Same nonce, fees raised by bump_percent (and at least today's suggestion), journaled first."""
        p = self.policy
        raw, old_max, old_tip = self.journal.raw(entry.hashes[-1])
        new_tip = min(p.priority_fee_cap_wei, max(math.ceil(old_tip * (100 + p.bump_percent) / 100), old_tip + 1))
        try:
            suggested_max, suggested_tip = self.suggest_fees()
        except FeeTooHigh:
            suggested_max, suggested_tip = p.max_fee_cap_wei, new_tip
        new_tip = max(new_tip, min(suggested_tip, p.priority_fee_cap_wei))
        new_max = min(p.max_fee_cap_wei, max(math.ceil(old_max * (100 + p.bump_percent) / 100), suggested_max, new_tip))
        if new_max * 100 < old_max * 110 or new_tip * 100 < old_tip * 110:
            return  # at the caps: a replacement would be refused; keep waiting
        key = self._keys_for.get(entry.sender)  # absent after a restart until the sender sends again
        if key is None:
            return  # resumed without the key (resume_all at start-up): cannot re-sign, only re-broadcast
        from eth_account import Account

        decoded = _decode_fields(raw)
        decoded.update(maxFeePerGas=new_max, maxPriorityFeePerGas=new_tip)
        signed = Account.sign_transaction(decoded, key)
        tx_hash = "0x" + bytes(signed.hash).hex()
        self.journal.record(entry.intent, entry.chain_id, entry.sender, entry.nonce, entry.fingerprint, tx_hash,
                            bytes(signed.raw_transaction), new_max, new_tip)
        try:
            self._broadcast(bytes(signed.raw_transaction))
        except _Rejected:
            pass  # e.g. the old version got mined meanwhile: the next poll sees its receipt


class _Rejected(Exception):
    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


def _decode_fields(raw: bytes) -> dict[str, Any]:
    """The signable fields of a journaled EIP-1559 transaction (to re-sign it with new fees)."""
    from eth_account.typed_transactions import TypedTransaction

    tx = TypedTransaction.from_bytes(HexBytes(raw))
    d = tx.as_dict()
    out = {k: d[k] for k in ("chainId", "nonce", "gas", "value", "maxFeePerGas", "maxPriorityFeePerGas")}
    out["data"] = HexBytes(d.get("data", b"")).to_0x_hex() if d.get("data") else "0x"
    if d.get("to"):
        out["to"] = to_checksum_address(d["to"])
    out["accessList"] = d.get("accessList", ())
    out["type"] = 2
    return out

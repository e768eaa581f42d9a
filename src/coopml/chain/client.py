"""Typed client for the CoopML v2 contract: one method per contract action, plus read views.

    chain = Chain.embedded()
    coop = deploy(chain, chain.dev_accounts()[0])       # TaskClient bound to the deployer
    task_id = coop.as_(initiator).publish_task(manifest_hash, manifest_cid, delivery_key, terms)
    coop.as_(alice).register_contributor(task_id)
    model_id = coop.as_(alice).announce_model(task_id, envelope_hash, key_commitment(K), cid)
    chain.mine()                                         # the draw needs block drawBlock sealed
    coop.draw_verifiers(model_id)                        # anyone

See docs/chain.md for the state machine and the properties each step upholds.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import astuple, dataclass, field, fields
from functools import cache
from typing import Any

from eth_abi import encode as abi_encode
from eth_utils import keccak, to_checksum_address
from hexbytes import HexBytes
from web3.types import TxReceipt

from coopml.chain.artifacts import load_artifact
from coopml.chain.backends import Chain, ErrorDecoder
from coopml.errors import ChainError

PROTOCOL_VERSION = keccak(text="coopml/2")
"""What `protocolVersion()` returns on a v2 deployment."""

MAX_ANNOUNCE_PERIOD = 90 * 86_400
MAX_WINDOW = 30 * 86_400
DRAW_DELAY = 1
BLOCKHASH_HORIZON = 256
MAX_VERIFIERS_PER_MODEL = 99
MAX_MODELS = 10_000


class ModelStatus(enum.IntEnum):
    """Model states in the contract's order."""

    NONE = 0
    AWAITING_DRAW = 1
    VERIFYING = 2
    APPROVED = 3
    DELIVERED = 4
    DELIVERY_DISPUTED = 5
    MODEL_DISPUTED = 6
    RELEASED = 7
    REJECTED = 8
    INCONCLUSIVE = 9
    CANCELLED = 10
    FORFEITED = 11
    REFUNDED = 12

    @property
    def terminal(self) -> bool:
        return self >= ModelStatus.RELEASED


class Vote(enum.IntEnum):
    """Three-valued vote. ABSTAIN: could not evaluate through no fault of the contributor."""

    APPROVE = 1
    REJECT = 2
    ABSTAIN = 3


class BurnReason(enum.IntEnum):
    """`reason` of the contract's Burnt event."""

    MODEL_REJECTED = 0
    KEY_NOT_DELIVERED = 1
    DISPUTE_UPHELD = 2
    FEE_NOT_EARNED = 3
    VERIFIER_SLASHED = 4
    DISPUTE_BOND_LOST = 5


def _values(value: Any) -> tuple[Any, ...]:
    return tuple(value.values()) if isinstance(value, Mapping) else tuple(value)


@dataclass(frozen=True)
class TaskTerms:
    """Economic and timing terms (wei, seconds; announce_deadline is a block timestamp)."""

    reward_per_model: int
    verifier_fee: int
    contributor_deposit: int
    verifier_deposit: int
    max_models: int
    verifiers_per_model: int
    announce_deadline: int
    verify_window: int
    reveal_window: int
    delivery_window: int
    dispute_window: int

    @property
    def reserve(self) -> int:
        """Escrow one announced model reserves: its reward and its V verifier fees."""
        return self.reward_per_model + self.verifiers_per_model * self.verifier_fee

    @property
    def escrow(self) -> int:
        """ETH the initiator must send with publish_task."""
        return self.max_models * self.reserve

    def as_abi(self) -> tuple[int, ...]:
        return astuple(self)

    @classmethod
    def from_abi(cls, value: Any) -> TaskTerms:
        return cls(*[int(x) for x in _values(value)])


@dataclass(frozen=True)
class TaskInfo:
    task_id: int
    initiator: str
    published_block: int
    closed: bool
    models_active: int
    models_bought: int
    active_verifiers: int
    manifest_hash: bytes
    delivery_key: bytes
    terms: TaskTerms
    unallocated: int
    locked: int


@dataclass(frozen=True)
class ModelInfo:
    model_id: int
    task_id: int
    contributor: str
    status: ModelStatus
    commits: int
    draw_block: int
    pool_snapshot: int
    verify_deadline: int
    reveal_deadline: int
    reveals: int
    approve: int
    reject: int
    abstain: int
    dispute_votes: int
    mismatch_votes: int
    delivery_deadline: int
    dispute_deadline: int
    response_deadline: int  # dispute A: answer by; dispute B: adjudication deadline
    envelope_hash: bytes
    key_commitment: bytes
    sealed_key_hash: bytes
    cid: str

    @property
    def deadlines(self) -> tuple[int, int, int, int, int]:
        """The model's chain-time deadlines (0 = not set yet): verify, reveal, delivery, dispute,
        response. One list for every party that asks whether one has passed or which is next."""
        return (self.verify_deadline, self.reveal_deadline, self.delivery_deadline, self.dispute_deadline,
                self.response_deadline)


@dataclass(frozen=True)
class MemberInfo:
    contributor: bool
    verifier: bool
    announced: bool
    contributor_left: bool
    verifier_left: bool
    slashed: bool
    open_assignments: int
    pool_index: int
    slashed_block: int


@dataclass(frozen=True)
class BallotInfo:
    selected: bool
    committed: bool
    revealed: bool
    vote: int  # a Vote once revealed, 0 before
    settled: bool
    dispute_voted: bool
    commitment: bytes


def _row(cls: type, value: Any, *prefix: Any) -> Any:
    """Build dataclass `cls` from an ABI tuple, converting each field to its annotated kind."""
    raw = (*prefix, *_values(value))
    out: list[Any] = []
    for f, v in zip(fields(cls), raw, strict=True):
        kind = f.type
        if kind == "bool":
            out.append(bool(v))
        elif kind == "int":
            out.append(int(v))
        elif kind == "bytes":
            out.append(bytes(v))
        else:
            out.append(v)
    return cls(*out)


@cache
def coopml_errors() -> ErrorDecoder:
    return ErrorDecoder(load_artifact("CoopML")["abi"])


def key_commitment(key: bytes) -> bytes:
    """keccak256(K) of the 32-byte envelope key K: what announce_model commits and
    answer_dispute / dispute_model must open."""
    if len(key) != 32:
        raise ValueError(f"an envelope key is 32 bytes, got {len(key)}")
    return keccak(key)


def vote_commitment(model_id: int, voter: str, vote: Vote | int, salt: bytes) -> bytes:
    """keccak256(abi.encode(modelId, voter, uint8 vote, salt)), as revealVote recomputes it."""
    return keccak(abi_encode(["uint256", "address", "uint8", "bytes32"],
                             [model_id, to_checksum_address(voter), int(vote), salt]))


@dataclass
class TaskClient:
    """The CoopML contract at `address`, acting as `account`. `as_(other)` switches account."""

    chain: Chain
    address: str
    account: str
    last_receipt: TxReceipt | None = field(default=None, repr=False)
    # where event scans of this contract can start; known when `deploy` made it, else 0 (genesis)
    deploy_block: int = 0
    # agents: every value-carrying call is journaled under an intent named by its arguments, so a
    # retry after a crash or timeout re-sends the same signed transaction instead of paying twice.
    # Off for library use, where the same call may legitimately be made twice (two equal tasks).
    payment_intents: bool = False

    def __post_init__(self) -> None:
        self.address = to_checksum_address(self.address)
        self.account = to_checksum_address(self.account)
        self.contract = self.chain.contract(self.address)
        self._decoder = coopml_errors()

    def as_(self, account: str) -> TaskClient:
        return TaskClient(self.chain, self.address, account, deploy_block=self.deploy_block,
                          payment_intents=self.payment_intents)

    # ------------------------------------------------------------------ plumbing

    def _tx(self, fn_name: str, *args: Any, value: int = 0, extra_gas: int = 0, intent: str | None = None) -> TxReceipt:
        """`intent` names a payment once and for all: the transaction manager journals the signed
        transaction under it, so a retry after a timeout or a crash re-sends that same transaction
        (same nonce) instead of paying twice. With `payment_intents`, every call that carries value has one."""
        fn = getattr(self.contract.functions, fn_name)(*args)
        if not self.payment_intents:
            intent = None
        elif value and intent is None:
            intent = f"{self.address}:{self.account}:{fn_name}:{':'.join(str(a.hex() if isinstance(a, bytes) else a) for a in args)}"
        self.last_receipt = self.chain.transact(fn, self.account, value=value, decoder=self._decoder,
                                                extra_gas=extra_gas, intent=intent)
        return self.last_receipt

    def _view(self, fn_name: str, *args: Any) -> Any:
        return self.chain.call(getattr(self.contract.functions, fn_name)(*args), self._decoder)

    def events_in(self, receipt: TxReceipt, event: str) -> list[dict[str, Any]]:
        """Decoded args of every `event` this contract emitted in the transaction."""
        ev = getattr(self.contract.events, event)()
        topic = HexBytes(ev.topic)
        return [dict(ev.process_log(log)["args"]) for log in receipt["logs"]
                if log["address"] == self.address and log["topics"] and HexBytes(log["topics"][0]) == topic]

    def _event_arg(self, receipt: TxReceipt, event: str, arg: str) -> Any:
        for args in self.events_in(receipt, event):
            return args[arg]
        raise ChainError(f"{event} event missing from transaction {receipt['transactionHash'].hex()}")

    def _status_after(self, model_id: int) -> ModelStatus:
        return self.model(model_id).status

    @property
    def last_gas(self) -> int:
        return int(self.last_receipt["gasUsed"]) if self.last_receipt else 0

    # ------------------------------------------------------------------ initiator

    def publish_task(self, manifest_hash: bytes, manifest_cid: str, delivery_key: bytes, terms: TaskTerms,
                     value: int | None = None) -> int:
        """Publish a task escrowing `terms.escrow` wei (override `value` only to test the check).
        `manifest_hash` = sha256 of the manifest bytes at `manifest_cid`; `delivery_key` = the
        initiator's X25519 public key that approved models' keys are sealed to."""
        receipt = self._tx("publishTask", manifest_hash, manifest_cid, delivery_key, terms.as_abi(),
                           value=terms.escrow if value is None else value,
                           intent=f"{self.address}:publish:{self.account}:{manifest_hash.hex()}")
        return int(self._event_arg(receipt, "TaskPublished", "taskId"))

    def close_task(self, task_id: int) -> int:
        """Close (the initiator any time, anyone after the announce deadline); returns the
        unreserved escrow credited back to the initiator."""
        receipt = self._tx("closeTask", task_id)
        return int(self._event_arg(receipt, "TaskClosedEvent", "returned"))

    # ------------------------------------------------------------------ members

    def register_contributor(self, task_id: int, deposit: int | None = None) -> None:
        amount = self.task(task_id).terms.contributor_deposit if deposit is None else deposit
        self._tx("registerContributor", task_id, value=amount)

    def register_verifier(self, task_id: int, box_key: bytes, deposit: int | None = None) -> int:
        """Join the verifier pool; `box_key` is this verifier's X25519 public key (nonzero).
        Returns the pool index."""
        amount = self.task(task_id).terms.verifier_deposit if deposit is None else deposit
        receipt = self._tx("registerVerifier", task_id, box_key, value=amount)
        return int(self._event_arg(receipt, "VerifierRegistered", "poolIndex"))

    def leave_task(self, task_id: int) -> int:
        """Take back every deposit not at stake (open or closed task); returns the refund."""
        receipt = self._tx("leaveTask", task_id)
        return int(self._event_arg(receipt, "MemberLeft", "refund"))

    def post_message(self, task_id: int, model_id: int, to: str, kind: int, cid: str) -> None:
        """Tell `to` that a payload for it is in storage at `cid` (event only, O(1) gas)."""
        self._tx("postMessage", task_id, model_id, to_checksum_address(to), kind, cid)

    # ------------------------------------------------------------------ models

    def announce_model(self, task_id: int, envelope_hash: bytes, key_commitment: bytes, cid: str) -> int:
        """Commit a model (sha256 of its envelope bytes, keccak256 of its key); its verifiers are
        drawn later by `draw_verifiers`, once block `draw_block` is sealed."""
        receipt = self._tx("announceModel", task_id, envelope_hash, key_commitment, cid)
        return int(self._event_arg(receipt, "ModelAnnounced", "modelId"))

    def draw_ready(self, model_id: int) -> bool:
        """True once the latest block is past the draw block, so that a draw_verifiers sent now
        is past it on every backend (the embedded chain pre-runs calls at the latest block's
        number, anvil at the next one)."""
        return self.chain.block_number() > self.model(model_id).draw_block

    def draw_verifiers(self, model_id: int) -> list[str]:
        """Draw the model's verifiers (anyone). Returns them; an empty list means the draw was
        cancelled (block hash expired or fewer than V eligible) and the deposit refunded."""
        receipt = self._tx("drawVerifiers", model_id)
        drawn = self.events_in(receipt, "VerifiersDrawn")
        return [to_checksum_address(a) for a in drawn[0]["verifiers"]] if drawn else []

    def commit_vote(self, model_id: int, vote: Vote | int, salt: bytes) -> bytes:
        """Commit this account's hidden vote; returns the commitment sent."""
        commitment = vote_commitment(model_id, self.account, vote, salt)
        self._tx("commitVote", model_id, commitment)
        return commitment

    def reveal_vote(self, model_id: int, vote: Vote | int, salt: bytes) -> None:
        self._tx("revealVote", model_id, int(vote), salt)

    def finalize_model(self, model_id: int) -> ModelStatus:
        """Tally (anyone): APPROVED, REJECTED (deposit burnt) or INCONCLUSIVE (deposit refunded)."""
        receipt = self._tx("finalizeModel", model_id)
        return ModelStatus(int(self._event_arg(receipt, "ModelFinalized", "status")))

    def settle_vote(self, model_id: int, verifier: str) -> int:
        """Settle one drawn verifier (anyone); returns the fee paid (0: not revealed, slashed)."""
        receipt = self._tx("settleVote", model_id, to_checksum_address(verifier))
        return int(self._event_arg(receipt, "VoteSettled", "paid"))

    # ------------------------------------------------------------------ delivery and disputes

    def deliver_key(self, model_id: int, sealed_key: bytes) -> None:
        """Contributor: K sealed to the task's delivery key (only the initiator can open it)."""
        self._tx("deliverKey", model_id, sealed_key)

    def expire_delivery(self, model_id: int) -> None:
        self._tx("expireDelivery", model_id)

    def finalize_delivery(self, model_id: int) -> None:
        self._tx("finalizeDelivery", model_id)

    def dispute_delivery(self, model_id: int, bond: int | None = None) -> None:
        """Initiator, dispute A: the sealed key does not open to the committed key."""
        amount = self._bond(model_id) if bond is None else bond
        self._tx("disputeDelivery", model_id, value=amount)

    def answer_dispute(self, model_id: int, key: bytes) -> None:
        """Contributor: answer dispute A by publishing K (must match the commitment)."""
        self._tx("answerDispute", model_id, key)

    def resolve_dispute(self, model_id: int) -> ModelStatus:
        """Anyone, after an unanswered dispute A: REFUNDED."""
        self._tx("resolveDispute", model_id)
        return self._status_after(model_id)

    def dispute_model(self, model_id: int, key: bytes, bond: int | None = None) -> None:
        """Initiator, dispute B: the delivered model (K published here) is not what was verified."""
        amount = self._bond(model_id) if bond is None else bond
        self._tx("disputeModel", model_id, key, value=amount)

    def vote_dispute(self, model_id: int, mismatch: bool) -> None:
        self._tx("voteDispute", model_id, mismatch)

    def resolve_model_dispute(self, model_id: int) -> ModelStatus:
        """Anyone: REFUNDED on a mismatch majority of V, else RELEASED."""
        self._tx("resolveModelDispute", model_id)
        return self._status_after(model_id)

    def _bond(self, model_id: int) -> int:
        return self.task(self.model(model_id).task_id).terms.contributor_deposit

    # ------------------------------------------------------------------ money

    def withdraw(self) -> int:
        """Pull everything owed to this account; returns the amount (wei)."""
        receipt = self._tx("withdraw")
        return int(self._event_arg(receipt, "Withdrawn", "amount"))

    # ------------------------------------------------------------------ views

    def task(self, task_id: int) -> TaskInfo:
        v = _values(self._view("getTask", task_id))
        return TaskInfo(task_id, to_checksum_address(v[0]), int(v[1]), bool(v[2]), int(v[3]), int(v[4]),
                        int(v[5]), bytes(v[6]), bytes(v[7]), TaskTerms.from_abi(v[8]), int(v[9]), int(v[10]))

    def manifest_cid(self, task_id: int) -> str:
        """The manifest CID from the TaskPublished event (the contract stores only its hash)."""
        info = self.task(task_id)
        logs = self.contract.events.TaskPublished().get_logs(
            from_block=info.published_block, to_block=info.published_block, argument_filters={"taskId": task_id})
        if not logs:
            raise ChainError(f"TaskPublished event of task {task_id} not found")
        return str(logs[0]["args"]["manifestCid"])

    def model(self, model_id: int) -> ModelInfo:
        info = _row(ModelInfo, self._view("getModel", model_id), model_id)
        return ModelInfo(**{**info.__dict__, "contributor": to_checksum_address(info.contributor),
                            "status": ModelStatus(info.status)})

    def member(self, task_id: int, account: str) -> MemberInfo:
        return _row(MemberInfo, self._view("getMember", task_id, to_checksum_address(account)))

    def ballot(self, model_id: int, verifier: str) -> BallotInfo:
        return _row(BallotInfo, self._view("getBallot", model_id, to_checksum_address(verifier)))

    def selected_verifiers(self, model_id: int) -> list[str]:
        return [to_checksum_address(a) for a in self._view("getSelectedVerifiers", model_id)]

    def verifier_pool(self, task_id: int) -> list[str]:
        return [to_checksum_address(a) for a in self._view("getVerifierPool", task_id)]

    def owed(self, account: str) -> int:
        """Wei `account` can withdraw now."""
        return int(self._view("owed", to_checksum_address(account)))

    def total_owed(self) -> int:
        return int(self._view("totalOwed"))

    def total_burnt(self) -> int:
        """Wei burnt (slashed, forfeited, lost bonds): in the contract for good."""
        return int(self._view("totalBurnt"))

    def task_count(self) -> int:
        return int(self._view("taskCount"))

    def model_count(self) -> int:
        return int(self._view("modelCount"))

    def escrow_for(self, terms: TaskTerms) -> int:
        return int(self._view("escrowFor", terms.as_abi()))

    def protocol_version(self) -> bytes:
        return bytes(self._view("protocolVersion"))

    def contract_balance(self) -> int:
        return self.chain.balance(self.address)


def deploy(chain: Chain, deployer: str) -> TaskClient:
    """Deploy a fresh CoopML contract (one deployment hosts many tasks)."""
    contract, receipt = chain.deploy_contract("CoopML", deployer)
    return TaskClient(chain, contract.address, deployer, receipt, int(receipt["blockNumber"]))

"""Typed client for the CoopML contract: one method per contract action, plus read views.

    chain = Chain.embedded()
    coop = deploy(chain, chain.dev_accounts()[0])       # TaskClient bound to the deployer
    task_id = coop.publish_task(spec, terms)
    coop.as_(alice).register_contributor(task_id)
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

_SPEC_ABI_TYPE = "(string,string,string,string[],bytes32,string,bytes32)"


class ModelStatus(enum.IntEnum):
    NONE = 0
    VOTING = 1
    APPROVED = 2
    REJECTED = 3
    RELEASED = 4
    FORFEITED = 5


@dataclass(frozen=True)
class TaskSpec:
    """What the initiator publishes (kept in the TaskPublished event; only its hash is stored)."""

    objective: str
    criterion: str
    model_structure: str
    data_cids: tuple[str, ...] = ()
    verification_data_commitment: bytes = bytes(32)
    he_public_key_cid: str = ""
    he_public_key_hash: bytes = bytes(32)

    def as_abi(self) -> tuple:
        return (self.objective, self.criterion, self.model_structure, list(self.data_cids),
                self.verification_data_commitment, self.he_public_key_cid, self.he_public_key_hash)

    def spec_hash(self) -> bytes:
        """keccak256(abi.encode(spec)), as the contract stores it."""
        return keccak(abi_encode([_SPEC_ABI_TYPE], [self.as_abi()]))

    @classmethod
    def from_abi(cls, value: Any) -> TaskSpec:
        v = tuple(value.values()) if isinstance(value, Mapping) else tuple(value)
        return cls(v[0], v[1], v[2], tuple(v[3]), bytes(v[4]), v[5], bytes(v[6]))


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
    commit_window: int
    reveal_window: int
    release_window: int

    @property
    def escrow(self) -> int:
        """ETH the initiator must send with publish_task."""
        return self.max_models * (self.reward_per_model + self.verifiers_per_model * self.verifier_fee)

    def as_abi(self) -> tuple:
        return astuple(self)

    @classmethod
    def from_abi(cls, value: Any) -> TaskTerms:
        v = tuple(value.values()) if isinstance(value, Mapping) else tuple(value)
        return cls(*[int(x) for x in v])


@dataclass(frozen=True)
class TaskInfo:
    task_id: int
    initiator: str
    published_block: int
    closed: bool
    models_announced: int
    models_approved: int
    verifier_pool_size: int
    spec_hash: bytes
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
    reveals: int
    yes: int
    no: int
    commit_deadline: int
    reveal_deadline: int
    release_deadline: int
    model_hash: bytes
    key_commitment: bytes
    cid: str


@dataclass(frozen=True)
class MemberInfo:
    contributor: bool
    verifier: bool
    announced: bool
    verifier_slashed: bool
    contributor_deposit_settled: bool
    verifier_deposit_settled: bool
    open_assignments: int
    pool_index: int


@dataclass(frozen=True)
class BallotInfo:
    selected: bool
    revealed: bool
    vote: bool
    settled: bool
    commitment: bytes


def _row(cls: type, value: Any, *prefix: Any) -> Any:
    v = tuple(value.values()) if isinstance(value, Mapping) else tuple(value)
    return cls(*prefix, *v[: len(fields(cls)) - len(prefix)])


@cache
def coopml_errors() -> ErrorDecoder:
    return ErrorDecoder(load_artifact("CoopML")["abi"])


def key_commitment(access_key: bytes) -> bytes:
    """keccak256(accessKey): what announce_model commits and release_key must open."""
    return keccak(access_key)


def vote_commitment(model_id: int, voter: str, approve: bool, salt: bytes) -> bytes:
    """keccak256(abi.encode(modelId, voter, approve, salt)), as the contract recomputes it."""
    return keccak(abi_encode(["uint256", "address", "bool", "bytes32"],
                             [model_id, to_checksum_address(voter), approve, salt]))


@dataclass
class TaskClient:
    """The CoopML contract at `address`, acting as `account`. `as_(other)` switches account."""

    chain: Chain
    address: str
    account: str
    last_receipt: TxReceipt | None = field(default=None, repr=False)
    # where event scans of this contract can start; known when `deploy` made it, else 0 (genesis)
    deploy_block: int = 0

    def __post_init__(self) -> None:
        self.address = to_checksum_address(self.address)
        self.account = to_checksum_address(self.account)
        self.contract = self.chain.contract(self.address)
        self._decoder = coopml_errors()

    def as_(self, account: str) -> TaskClient:
        return TaskClient(self.chain, self.address, account, deploy_block=self.deploy_block)

    # ------------------------------------------------------------------ plumbing

    def _tx(self, fn_name: str, *args: Any, value: int = 0, extra_gas: int = 0) -> TxReceipt:
        fn = getattr(self.contract.functions, fn_name)(*args)
        self.last_receipt = self.chain.transact(fn, self.account, value=value, decoder=self._decoder,
                                                extra_gas=extra_gas)
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

    @property
    def last_gas(self) -> int:
        return int(self.last_receipt["gasUsed"]) if self.last_receipt else 0

    # ------------------------------------------------------------------ initiator

    def publish_task(self, spec: TaskSpec, terms: TaskTerms, value: int | None = None) -> int:
        """Escrow `terms.escrow` wei (override `value` only to test the contract's check)."""
        receipt = self._tx("publishTask", spec.as_abi(), terms.as_abi(),
                           value=terms.escrow if value is None else value)
        return int(self._event_arg(receipt, "TaskPublished", "taskId"))

    def close_task(self, task_id: int) -> None:
        self._tx("closeTask", task_id)

    # ------------------------------------------------------------------ members

    def register_contributor(self, task_id: int, deposit: int | None = None) -> None:
        amount = self.task(task_id).terms.contributor_deposit if deposit is None else deposit
        self._tx("registerContributor", task_id, value=amount)

    def register_verifier(self, task_id: int, deposit: int | None = None, box_key: bytes = bytes(32)) -> None:
        """`box_key`: the verifier's X25519 public key for sealed messages (zero: none)."""
        amount = self.task(task_id).terms.verifier_deposit if deposit is None else deposit
        self._tx("registerVerifier", task_id, box_key, value=amount)

    def post_message(self, task_id: int, model_id: int, to: str, kind: int, cid: str) -> None:
        """Tell `to` that a payload for it is in storage at `cid` (event only, O(1) gas)."""
        self._tx("postMessage", task_id, model_id, to_checksum_address(to), kind, cid)

    def announce_model(self, task_id: int, cid: str, model_hash: bytes, key_commitment: bytes) -> int:
        # the draw of V verifiers probes past taken slots: up to V*(V-1)/2 extra cold reads
        v = self.task(task_id).terms.verifiers_per_model
        receipt = self._tx("announceModel", task_id, cid, model_hash, key_commitment,
                           extra_gas=v * v * 3_000)
        return int(self._event_arg(receipt, "ModelAnnounced", "modelId"))

    def release_key(self, model_id: int, access_key: bytes) -> None:
        self._tx("releaseKey", model_id, access_key)

    def expire_release(self, model_id: int) -> None:
        self._tx("expireRelease", model_id)

    def commit_vote(self, model_id: int, approve: bool, salt: bytes) -> bytes:
        """Commit this account's hidden vote; returns the commitment sent."""
        commitment = vote_commitment(model_id, self.account, approve, salt)
        self._tx("commitVote", model_id, commitment)
        return commitment

    def reveal_vote(self, model_id: int, approve: bool, salt: bytes) -> None:
        self._tx("revealVote", model_id, approve, salt)

    def finalize_model(self, model_id: int) -> bool:
        """Tally the votes; returns True when the model was approved."""
        receipt = self._tx("finalizeModel", model_id)
        return bool(self._event_arg(receipt, "ModelFinalized", "approved"))

    def settle_vote(self, model_id: int, verifier: str) -> None:
        self._tx("settleVote", model_id, to_checksum_address(verifier))

    def claim_deposits(self, task_id: int) -> None:
        self._tx("claimDeposits", task_id)

    def withdraw(self) -> int:
        """Pull everything owed to this account; returns the amount (wei)."""
        receipt = self._tx("withdraw")
        return int(self._event_arg(receipt, "Withdrawn", "amount"))

    # ------------------------------------------------------------------ views

    def task(self, task_id: int) -> TaskInfo:
        raw = self._view("getTask", task_id)
        v = tuple(raw.values()) if isinstance(raw, Mapping) else tuple(raw)
        return TaskInfo(task_id, v[0], int(v[1]), bool(v[2]), int(v[3]), int(v[4]), int(v[5]),
                        bytes(v[6]), TaskTerms.from_abi(v[7]), int(v[8]), int(v[9]))

    def task_spec(self, task_id: int) -> TaskSpec:
        """The full spec from the TaskPublished event, checked against the stored hash."""
        info = self.task(task_id)
        event = self.contract.events.TaskPublished()
        logs = event.get_logs(from_block=info.published_block, to_block=info.published_block,
                              argument_filters={"taskId": task_id})
        if not logs:
            raise ChainError(f"TaskPublished event of task {task_id} not found")
        spec = TaskSpec.from_abi(logs[0]["args"]["spec"])
        if spec.spec_hash() != info.spec_hash:
            raise ChainError(f"task {task_id}: published spec does not match the stored hash")
        return spec

    def model(self, model_id: int) -> ModelInfo:
        info = _row(ModelInfo, self._view("getModel", model_id), model_id)
        return ModelInfo(**{**info.__dict__, "status": ModelStatus(info.status)})

    def member(self, task_id: int, account: str) -> MemberInfo:
        return _row(MemberInfo, self._view("getMember", task_id, to_checksum_address(account)))

    def ballot(self, model_id: int, verifier: str) -> BallotInfo:
        return _row(BallotInfo, self._view("getBallot", model_id, to_checksum_address(verifier)))

    def selected_verifiers(self, model_id: int) -> list[str]:
        return list(self._view("getSelectedVerifiers", model_id))

    def verifier_pool(self, task_id: int) -> list[str]:
        return list(self._view("getVerifierPool", task_id))

    def owed(self, account: str) -> int:
        """Wei `account` can withdraw now."""
        return int(self._view("owed", to_checksum_address(account)))

    def total_owed(self) -> int:
        return int(self._view("totalOwed"))

    def task_count(self) -> int:
        return int(self._view("taskCount"))

    def model_count(self) -> int:
        return int(self._view("modelCount"))

    def contract_balance(self) -> int:
        return self.chain.balance(self.address)


def deploy(chain: Chain, deployer: str) -> TaskClient:
    """Deploy a fresh CoopML contract (one deployment hosts many tasks)."""
    contract, receipt = chain.deploy_contract("CoopML", deployer)
    client = TaskClient(chain, contract.address, deployer, receipt, int(receipt["blockNumber"]))
    return client


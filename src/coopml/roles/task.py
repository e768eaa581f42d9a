"""A node's view of one task: the on-chain record plus the manifest it commits, checked against each other.

Before a node pays anything into a task it checks (P6): the contract at the configured address is
CoopML (done once by the runner), the manifest in the store hashes to what the chain committed,
the on-chain terms say what the manifest says, and the deposit is within this node's limits.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from coopml.chain import TaskClient, TaskInfo
from coopml.errors import CoopmlError
from coopml.storage import Store
from coopml.task import ManifestError, TaskManifest


class TermsRefused(CoopmlError):
    """The task asks for more than this node is configured to pay, or its terms contradict its manifest."""


class SpendingLimits(BaseModel):
    """What a node agrees to put at stake, whatever a task demands (a hostile task can ask 1000 ETH)."""

    model_config = ConfigDict(extra="forbid")

    max_deposit_wei: int = Field(10**18, ge=0, description="never deposit more than this into one task")
    max_deposit_to_reward: float = Field(1.0, gt=0, description="never deposit more than this multiple of the "
                                         "reward per model (contributors)")
    max_escrow_wei: int = Field(100 * 10**18, ge=0, description="initiators: never escrow more than this")


@dataclass(frozen=True)
class TaskView:
    info: TaskInfo
    manifest: TaskManifest
    manifest_cid: str
    delivery_key: bytes


def load_task(client: TaskClient, store: Store, task_id: int) -> TaskView:
    info = client.task(task_id)
    cid = client.manifest_cid(task_id)
    data = store.get(cid)
    if hashlib.sha256(data).digest() != bytes(info.manifest_hash):
        raise ManifestError(f"task {task_id}: the manifest at {cid} does not match the hash committed on-chain")
    manifest = TaskManifest.from_bytes(data, where=f"task {task_id} manifest")
    check_terms(manifest, info)
    return TaskView(info, manifest, cid, bytes(info.delivery_key))


def check_terms(manifest: TaskManifest, info: TaskInfo) -> None:
    """The contract enforces the terms; the manifest describes them: they must agree."""
    t, e, w = info.terms, manifest.economics, manifest.windows
    pairs = {"reward": (t.reward_per_model, e.reward_wei), "verifier fee": (t.verifier_fee, e.verifier_fee_wei),
             "contributor deposit": (t.contributor_deposit, e.contributor_deposit_wei),
             "verifier deposit": (t.verifier_deposit, e.verifier_deposit_wei),
             "max models": (t.max_models, e.max_models), "verifiers per model": (t.verifiers_per_model,
                                                                                 e.verifiers_per_model),
             "verify window": (t.verify_window, w.verify_s), "reveal window": (t.reveal_window, w.reveal_s),
             "delivery window": (t.delivery_window, w.delivery_s), "dispute window": (t.dispute_window, w.dispute_s)}
    bad = [f"{k}: chain {a} != manifest {b}" for k, (a, b) in pairs.items() if int(a) != int(b)]
    if bad:
        raise TermsRefused("on-chain terms contradict the task manifest (" + "; ".join(bad) + ")")


def check_deposit(kind: str, deposit: int, reward: int, limits: SpendingLimits) -> None:
    if deposit > limits.max_deposit_wei:
        raise TermsRefused(f"the task demands a {kind} deposit of {deposit / 1e18:g} ETH, more than this node's "
                           f"limit of {limits.max_deposit_wei / 1e18:g} ETH (limits.max_deposit_wei)")
    if kind == "contributor" and deposit > limits.max_deposit_to_reward * reward:
        raise TermsRefused(f"the task demands a deposit of {deposit / 1e18:g} ETH for a reward of {reward / 1e18:g} "
                           f"ETH, more than {limits.max_deposit_to_reward:g}x (limits.max_deposit_to_reward)")

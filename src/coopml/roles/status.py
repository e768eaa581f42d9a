"""A task's state as anyone can read it from the chain: its terms, each model's outcome and votes,
and the money paid out or burnt (what `coopml status` shows). Read-only: needs no account."""

from __future__ import annotations

from pydantic import BaseModel

from coopml.chain import ETHER, EventCursor, TaskClient, Vote
from coopml.chain.client import BurnReason


class TaskSummary(BaseModel):
    task_id: int
    initiator: str
    closed: bool
    models_bought: int
    max_models: int
    verifiers_per_model: int
    reward_eth: float
    announce_deadline: int


class ModelSummary(BaseModel):
    model_id: int
    contributor: str
    status: str
    approve: int
    reject: int
    abstain: int
    votes: dict[str, str]            # verifier address -> revealed vote
    cid: str
    verify_deadline: int
    reveal_deadline: int
    delivery_deadline: int
    dispute_deadline: int


class Payment(BaseModel):
    account: str
    kind: str                        # "reward", "verifier fee", "burnt: <reason>"
    wei: int


class TaskStatus(BaseModel):
    chain_time: int
    task: TaskSummary
    models: list[ModelSummary]
    payments: list[Payment]


def task_status(client: TaskClient, task_id: int, from_block: int = 0) -> TaskStatus:
    info = client.task(task_id)              # UnknownTask revert if there is no such task
    terms = info.terms
    votes: dict[int, dict[str, str]] = {}
    payments: list[Payment] = []
    ours: set[int] = set()
    cursor = EventCursor(client.chain, client.address, from_block=from_block)
    for ev in cursor.poll():
        a = ev.args
        if ev.name == "ModelAnnounced" and a.get("taskId") == task_id:
            ours.add(int(a["modelId"]))
        elif ev.name == "VoteRevealed" and a["modelId"] in ours:
            votes.setdefault(int(a["modelId"]), {})[a["verifier"]] = Vote(a["vote"]).name
        elif ev.name == "VoteSettled" and a["modelId"] in ours and a["paid"]:
            payments.append(Payment(account=a["verifier"], kind=f"verifier payout (model {a['modelId']})",
                                    wei=int(a["paid"])))
        elif ev.name == "ModelReleased" and a.get("taskId") == task_id:
            payments.append(Payment(account=a["contributor"], kind=f"reward (model {a['modelId']})",
                                    wei=int(terms.reward_per_model)))
        elif ev.name == "Burnt" and a.get("taskId") == task_id:
            payments.append(Payment(account=a["from"], kind=f"burnt: {BurnReason(a['reason']).name.lower()}",
                                    wei=int(a["amount"])))
    models = []
    for mid in sorted(ours):
        m = client.model(mid)
        models.append(ModelSummary(model_id=mid, contributor=m.contributor, status=m.status.name, approve=m.approve,
                                   reject=m.reject, abstain=m.abstain, votes=votes.get(mid, {}), cid=m.cid,
                                   verify_deadline=m.verify_deadline, reveal_deadline=m.reveal_deadline,
                                   delivery_deadline=m.delivery_deadline, dispute_deadline=m.dispute_deadline))
    task = TaskSummary(task_id=task_id, initiator=info.initiator, closed=info.closed, models_bought=info.models_bought,
                       max_models=terms.max_models, verifiers_per_model=terms.verifiers_per_model,
                       reward_eth=terms.reward_per_model / ETHER, announce_deadline=terms.announce_deadline)
    return TaskStatus(chain_time=client.chain.now(), task=task, models=models, payments=payments)

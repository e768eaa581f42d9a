"""Recovery of the real agents on a real EVM (the real contract, real training and CKKS verification,
reduced to a small task; on anvil): a node killed between recording what it is about to send and sending it
resends on restart; a model whose verifiers and buyer are gone is still finalized by its
contributor; ballots of drawn verifiers that vanished are settled, never left locked.

The nodes are stepped round-robin in this process, like `coopml.sim.lifecycle.run_in_process`, by
a driver that can also kill a node mid-action (`Crash`, raised where a kill -9 would stop it) and
start it again on the same working directory, or make a node vanish for good after it logged an
event. Chain time jumps to the next deadline when every node is idle."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from coopml.chain import Chain, EventCursor, ModelStatus, TaskClient, Vote, deploy
from coopml.chain.client import BurnReason
from coopml.chain.processes import start_anvil
from coopml.roles.config import ContributorConfig, InitiatorConfig, VerifierConfig, load_config
from coopml.roles.log import EventLog, LogEvent, LogRecord, Role
from coopml.roles.messages import MessageKind
from coopml.roles.runner import load_agent_class
from coopml.roles.state import AgentState
from coopml.roles.verifier import Assignment
from coopml.sim.lifecycle import (
    ContributorPlan,
    InitiatorPlan,
    LifecyclePlan,
    VerifierPlan,
    next_deadline,
    prepare,
    tiny_plan,
)
from coopml.storage import open_store

SILENT_INITIATOR = "coopml.sim.behaviours:SilentInitiator"
CONFIGS = {Role.INITIATOR: InitiatorConfig, Role.CONTRIBUTOR: ContributorConfig, Role.VERIFIER: VerifierConfig}


class Crash(BaseException):
    """The node is killed here (kill -9): nothing after this point of the action happens. A
    BaseException, so no handler in the agent mistakes it for an error it could decide about."""


def small_plan(verifiers: int, initiator: str = "coopml.roles.initiator:Initiator") -> LifecyclePlan:
    """One honest contributor (all ten classes), `verifiers` verifiers, all of them drawn; 40 CKKS
    queries per verifier: the smallest task whose model is approved on its merits (it scores 0.6 to
    0.75 on a verifier's 40 images; the bar is 0.5, so a query more or less never flips a vote).
    A short dispute window: the buyer stops waiting for missing audit reports 15 s before its end."""
    return tiny_plan([ContributorPlan(labels=list(range(10)), n_train=300, epochs=3)],
                     [VerifierPlan(n_verify=100) for _ in range(verifiers)],
                     InitiatorPlan(n_train=200, n_audit=16, fusion_epochs=2, fusion_augment=0, n_test=200,
                                   agent=initiator),
                     verification={"queries": 40, "max_queries": 64, "audit_per_request": 8},
                     criterion={"min_accuracy": 0.5, "min_gain": -1.0}, windows={"dispute_s": 20})


class Network:
    """Every node of one task, stepped in this process against one auto-mining anvil (a real EVM
    that costs the scenario far less CPU than the in-process py-evm chain)."""

    def __init__(self, plan: LifecyclePlan, workdir: Path) -> None:
        self.node = start_anvil()
        self.chain = Chain.rpc(self.node.url)
        self.coop = deploy(self.chain, self.chain.dev_accounts()[0])
        self.store = str(workdir / "store")
        self.setup = prepare(plan, workdir, self.chain, self.coop, self.node.url, self.store, keep_keys=True)
        self.records: list[tuple[str, LogRecord]] = []
        self.vanish_after: dict[str, LogEvent] = {}
        self.gone: set[str] = set()
        self.restarts: dict[str, int] = {}
        self.agents: dict[str, Any] = {"initiator": self.start("initiator", None)}
        self.agents["initiator"].run_once()                          # publishes the task
        self.task_id: int = self.agents["initiator"].task_id
        for name in self.setup.agents:
            if name != "initiator":
                self.agents[name] = self.start(name, self.task_id)

    def start(self, name: str, task_id: int | None) -> Any:
        """A fresh agent on the node's working directory (its state, secrets and cursor on disk)."""
        cls = load_agent_class(self.setup.agents[name])
        overrides: dict[str, object] = {"task_id": task_id}
        if cls.role == Role.VERIFIER:
            overrides["seed"] = int(name.removeprefix("verifier"))   # the same queries on every run
        cfg = load_config(CONFIGS[cls.role], self.setup.paths[name], **overrides)
        client = TaskClient(self.chain, self.coop.address, self.chain.add_key(self.setup.keys[name]),
                            deploy_block=self.coop.deploy_block, payment_intents=True)
        return cls(cfg, client=client, store=open_store(self.store), state=AgentState(Path(cfg.workdir) / "state.sqlite"),
                   log=EventLog(cls.role, name, lambda rec: self.records.append((name, rec))))

    def address(self, name: str) -> str:
        return next(a for a, n in self.setup.names.items() if n == name)

    def logged(self, name: str, event: LogEvent) -> list[LogRecord]:
        return [r for n, r in self.records if n == name and r.event == event]

    def _stop(self, name: str) -> None:
        self.agents[name].close()

    def _step(self, name: str) -> bool:
        try:
            return self.agents[name].run_once()
        except Crash:
            self._stop(name)                                   # the process dies ...
            self.restarts[name] = self.restarts.get(name, 0) + 1
            self.agents[name] = self.start(name, self.task_id)   # ... and is started again
            return True

    def run(self, until: Callable[[], bool] = lambda: False, max_rounds: int = 3000) -> None:
        """Step every live node until each is done or `until()`; returns early when nobody has
        anything left to do (no node acts, none computes, no deadline ahead to move the clock to)."""
        idle = 0
        for _ in range(max_rounds):
            live = {n: a for n, a in self.agents.items() if n not in self.gone and not a.done}
            if not live or until():
                return
            progressed = False
            for name in live:
                progressed = self._step(name) or progressed
                vanish = self.vanish_after.get(name)
                if vanish is not None and self.logged(name, vanish):
                    self._stop(name)                           # gone for good, mid-task
                    self.gone.add(name)
            busy = any(a.jobs.busy() for n, a in live.items() if n not in self.gone)
            self.chain.mine()
            if progressed or busy:
                idle = 0
                if busy and not progressed:
                    time.sleep(0.05)
                continue
            idle += 1
            due = next_deadline(self.coop, self.task_id)   # a past announce deadline counts: not a wait
            if idle >= 3 and due is not None and due > self.chain.now():
                self.chain.increase_time(due - self.chain.now())
                idle = 0
            elif idle >= 30:
                return
        raise AssertionError(f"the task did not come to rest in {max_rounds} rounds")

    def close(self) -> None:
        for name, agent in self.agents.items():
            if name not in self.gone:
                agent.close()
        self.node.stop()

    def burnt(self) -> dict[str, list[BurnReason]]:
        out: dict[str, list[BurnReason]] = {}
        for ev in self.events("Burnt"):
            out.setdefault(self.setup.names.get(ev["from"], ev["from"]), []).append(BurnReason(ev["reason"]))
        return out

    def withdrawn(self, name: str) -> int:
        return sum(e["amount"] for e in self.events("Withdrawn") if e["account"] == self.address(name))

    def events(self, name: str) -> list[dict[str, Any]]:
        """The args of every `name` event the contract emitted."""
        cursor = EventCursor(self.chain, self.coop.address, from_block=self.coop.deploy_block)
        return [ev.args for ev in cursor.poll() if ev.name == name]


@pytest.fixture
def network(tmp_path):
    nets: list[Network] = []

    def make(plan: LifecyclePlan) -> Network:
        nets.append(Network(plan, tmp_path))
        return nets[-1]
    yield make
    for net in nets:
        net.close()


def crash_before_first(agent: Any, method: str, when: Callable[..., bool] = lambda *a: True) -> None:
    """Kill `agent` the first time its client is about to send `method` (the transaction is never
    signed): whatever the agent recorded before it is on disk, the chain knows nothing of it."""
    real = getattr(agent.client, method)

    def send(*args: Any) -> Any:
        if when(*args):
            raise Crash(method)
        return real(*args)
    setattr(agent.client, method, send)


# ------------------------------------------------------------------------------ 1. verifier


@pytest.mark.timeout(300)
@pytest.mark.parametrize("lost", ["request", "commit"])
def test_a_verifier_resends_the_request_or_commit_a_crash_lost_and_its_vote_counts(network, lost):
    """The verifier is killed after storing its encrypted request (resp. its vote and salt) and
    before the transaction that posts it (resp. commits it) was sent. Restarted on the same
    workdir, it posts the same request (resp. commits the stored vote) itself: the contributor
    evaluates its queries, the verifier's own judgement is revealed and decides the model."""
    net = network(small_plan(verifiers=1))
    if lost == "request":
        crash_before_first(net.agents["verifier1"], "post_message", lambda task, mid, to, kind, cid:
                           kind == MessageKind.EVAL_REQUEST)
    else:
        crash_before_first(net.agents["verifier1"], "commit_vote")
    net.run()

    assert net.restarts == {"verifier1": 1}                       # the crash happened, once
    verifier, mid = net.address("verifier1"), 1
    m, ballot = net.coop.model(mid), net.coop.ballot(mid, verifier)
    asg = net.agents["verifier1"].state.fact("assignment", mid, Assignment)
    # its own judgement of the model decided it: approved and bought on one vote, revealed and paid
    assert (m.status, m.approve, m.reject) == (ModelStatus.RELEASED, 1, 0), (m.status.name, m.approve, m.reject,
                                                                             asg.reasons if asg else None)
    assert ballot.committed and ballot.revealed and Vote(ballot.vote) == Vote.APPROVE, ballot
    requests = [e for e in net.events("Message") if e["sender"] == verifier and e["kind"] == MessageKind.EVAL_REQUEST]
    assert len(requests) == 1, requests                           # posted once: after the restart, or before it
    assert len(net.logged("contributor1", LogEvent.ANSWERED)) == 1   # the contributor evaluated its queries
    assert not net.coop.member(net.task_id, verifier).slashed and "verifier1" not in net.burnt()
    assert net.coop.owed(verifier) == 0 and net.logged("verifier1", LogEvent.WITHDRAWN)   # fee and deposit out
    assert all(a.done for a in net.agents.values())


# ------------------------------------------------------------------------------ 2. contributor


@pytest.mark.timeout(300)
def test_a_contributor_finalizes_its_model_when_verifiers_and_buyer_are_gone(network):
    """The buyer publishes and falls silent; the one drawn verifier reveals its approval and
    vanishes before the reveal window ends. Nobody else is left to tally the vote: the contributor
    finalizes its own model after the reveal deadline, delivers, and is paid reward and deposit."""
    net = network(small_plan(verifiers=1, initiator=SILENT_INITIATOR))
    net.vanish_after = {"verifier1": LogEvent.REVEALED}
    contributor = net.agents["contributor1"]
    net.run(until=lambda: contributor.done)

    assert net.gone == {"verifier1"} and net.logged("verifier1", LogEvent.REVEALED)
    m = net.coop.model(1)
    assert (m.status, m.reveals, m.approve) == (ModelStatus.RELEASED, 1, 1), (m.status.name, m.reveals, m.approve)
    terms = net.coop.task(net.task_id).terms
    assert net.withdrawn("contributor1") == terms.reward_per_model + terms.contributor_deposit
    assert contributor.done and "RELEASED" in contributor.summary, contributor.summary
    assert not net.burnt()


# ------------------------------------------------------------------------------ 3. initiator


@pytest.mark.timeout(300)
def test_the_initiator_settles_the_ballots_of_drawn_verifiers_that_vanished(network):
    """Three verifiers are drawn: one honest; one reveals its approval and vanishes before it
    settles its ballot; one registers and is never heard of again. The model is approved and
    bought; when the initiator finishes, it has settled both abandoned ballots: the revealed one's
    fee is owed to it (with its deposit free to take back), the silent one's fee and deposit are
    burnt. Nothing of the task stays locked."""
    net = network(small_plan(verifiers=3))
    net.vanish_after = {"verifier2": LogEvent.REVEALED, "verifier3": LogEvent.REGISTERED}
    net.run()

    assert net.gone == {"verifier2", "verifier3"}
    assert all(a.done for n, a in net.agents.items() if n not in net.gone)
    m = net.coop.model(1)
    assert (m.status, m.reveals, m.approve) == (ModelStatus.RELEASED, 2, 2), (m.status.name, m.reveals, m.approve)
    names = {net.address(n): n for n in ("verifier1", "verifier2", "verifier3")}
    drawn = [names[v] for v in net.coop.selected_verifiers(1)]
    assert sorted(drawn) == ["verifier1", "verifier2", "verifier3"]
    unsettled = [n for n in drawn if not net.coop.ballot(1, net.address(n)).settled]
    assert not unsettled, f"ballots left unsettled (fee and deposit locked): {unsettled}"
    terms = net.coop.task(net.task_id).terms
    # revealed, then gone: its fee is owed to it; its deposit is no longer at stake
    v2 = net.address("verifier2")
    assert net.coop.owed(v2) == terms.verifier_fee
    me = net.coop.member(net.task_id, v2)
    assert me.open_assignments == 0 and not me.slashed, me
    # never revealed: fee and deposit burnt (paid to nobody)
    assert net.burnt() == {"verifier3": [BurnReason.FEE_NOT_EARNED, BurnReason.VERIFIER_SLASHED]}, net.burnt()
    assert net.coop.member(net.task_id, net.address("verifier3")).slashed
    # the vanished verifier that revealed comes back: its deposit and fee are there to take
    back = net.coop.as_(v2)
    back.leave_task(net.task_id)
    assert back.withdraw() == terms.verifier_fee + terms.verifier_deposit
    assert net.coop.task(net.task_id).locked == 0

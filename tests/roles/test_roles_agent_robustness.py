"""The agent loop against what a hostile or broken world does to it, on a real EVM: transient
failures (a store or chain node away) are retried with back-off and never lose the item; poison
input becomes a recorded decision, never an exception out of the loop; a chain outage is a retry,
not a crash; one agent per working directory; a node refuses terms beyond its spending limits
before it pays anything."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from coopml.chain import Chain, TaskClient, deploy
from coopml.errors import StorageUnavailable
from coopml.roles.agent import Agent, WorkdirBusy, WorkdirLock
from coopml.roles.log import EventLog, LogEvent, LogRecord, Role
from coopml.roles.state import AgentState, Decision, Outcome
from coopml.roles.task import SpendingLimits, TermsRefused, check_deposit
from coopml.storage import open_store


class Probe(Agent):
    role = Role.VERIFIER


def _agent(tmp_path: Path, chain: Chain, records: list[LogRecord], cls: type[Probe] = Probe) -> Probe:
    coop = deploy(chain, chain.dev_accounts()[0])
    client = TaskClient(chain, coop.address, chain.dev_accounts()[1], deploy_block=coop.deploy_block)
    return cls(client=client, store=open_store(str(tmp_path / "store")), state=AgentState(tmp_path / "state.sqlite"),
                 workdir=tmp_path, log=EventLog(Role.VERIFIER, "probe", records.append))


@pytest.fixture
def agent(tmp_path):
    records: list[LogRecord] = []
    a = _agent(tmp_path, Chain.embedded(), records)
    a.records = records   # type: ignore[attr-defined]
    return a


def test_a_transient_failure_is_retried_and_the_item_is_not_lost(agent):
    calls = []

    def flaky() -> Decision:
        calls.append(1)
        if len(calls) == 1:
            raise StorageUnavailable("ipfs daemon not answering")
        return Decision(outcome=Outcome.DONE)

    assert agent.handle("inbox:7", flaky, deadline=agent.chain.now() + 3600) is None
    assert agent.state.decision("inbox:7") is None            # not marked handled
    assert any(r.event == LogEvent.RETRY for r in agent.records)
    assert agent.handle("inbox:7", flaky) is None and len(calls) == 1   # backing off: not tried again yet
    agent.state.attempts("inbox:7").next_at = 0.0
    d = agent.handle("inbox:7", flaky)
    assert d is not None and d.outcome == Outcome.DONE and len(calls) == 2
    assert agent.handle("inbox:7", flaky).outcome == Outcome.DONE and len(calls) == 2   # at most once


def test_a_transient_failure_past_the_chain_deadline_expires_the_item(agent):
    def down() -> Decision:
        raise StorageUnavailable("gone")

    d = agent.handle("inbox:8", down, deadline=agent.chain.now() - 1)
    assert d is not None and d.outcome == Outcome.EXPIRED and "gone" in d.reason


@pytest.mark.parametrize("exc", [UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad"), ValueError("axis 1 is out of bounds"),
                                 RuntimeError("stride should be nonzero"), KeyError("error")])
def test_poison_input_becomes_a_recorded_rejection(agent, exc):
    def poison() -> Decision:
        raise exc

    d = agent.handle("inbox:9", poison)
    assert d is not None and d.outcome == Outcome.REJECTED and type(exc).__name__ in d.reason
    assert agent.state.decision("inbox:9").outcome == Outcome.REJECTED   # decided once, never re-run


def test_a_chain_outage_is_a_retry_not_a_crash(tmp_path):
    from coopml.chain.processes import start_embedded_node
    node = start_embedded_node()
    try:
        records: list[LogRecord] = []
        chain = Chain.rpc(node.url, timeout=3)
        a = _agent(tmp_path, chain, records)
        a.run_once()
    finally:
        node.stop()
    assert a.run_once() is False                       # the node is gone: no exception
    assert any(r.event == LogEvent.RETRY for r in records)


def test_one_agent_per_working_directory(tmp_path):
    lock = WorkdirLock(tmp_path)
    with pytest.raises(WorkdirBusy, match=str(os.getpid())):
        WorkdirLock(tmp_path)
    lock.release()
    WorkdirLock(tmp_path).release()
    # a holder killed with SIGKILL releases the lock with its process
    code = ("import sys, time; from pathlib import Path; from coopml.roles.agent import WorkdirLock; "
            f"WorkdirLock(Path({str(tmp_path)!r})); print('locked', flush=True); time.sleep(60)")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "locked"
        with pytest.raises(WorkdirBusy):
            WorkdirLock(tmp_path)
        os.kill(p.pid, signal.SIGKILL)
        p.wait(10)
        time.sleep(0.1)
        WorkdirLock(tmp_path).release()
    finally:
        if p.poll() is None:
            p.kill()


def test_terms_beyond_the_spending_limits_are_refused_before_paying():
    limits = SpendingLimits()
    with pytest.raises(TermsRefused, match="max_deposit"):
        check_deposit("contributor", 1000 * 10**18, 10**18, limits)
    with pytest.raises(TermsRefused, match="max_deposit_to_reward"):
        check_deposit("contributor", 5 * 10**18, 10**17, SpendingLimits(max_deposit_wei=10 * 10**18))
    check_deposit("contributor", 10**17, 10**18, limits)


def _bare_initiator(tmp_path, client, clock):
    """An Initiator with only what a round touches (no keys, store or fusion)."""
    from types import SimpleNamespace

    from coopml.roles.agent import Jobs
    from coopml.roles.initiator import Initiator

    ini = Initiator.__new__(Initiator)
    ini.client, ini.jobs = client, Jobs()
    ini.chain = SimpleNamespace(now=lambda: clock["time"], block_number=lambda: clock["block"],
                                head=lambda: (clock["block"], clock["time"]))
    ini.state = AgentState(tmp_path / "state.sqlite")
    ini.state.set("task_id", 1)
    ini.cfg = SimpleNamespace(close_when_models=None)
    ini.log = EventLog(Role.INITIATOR, "initiator", lambda rec: None)
    ini._view = SimpleNamespace(info=SimpleNamespace(terms=SimpleNamespace(verifiers_per_model=3)))
    ini._collect_fusion = ini._serve_decryptions = lambda: False
    ini.sweep_inbox = lambda relevant: None
    ini._seen_records, ini._named_models, ini._step_head = {}, set(), None
    ini._wake_block, ini._wake_times = None, []
    return ini


def _record(status, **deadlines):
    from fakes import model_info
    return model_info(status=status, **({"reveal_deadline": 9_000} | deadlines))


def _counting_client(records, reads):
    from types import SimpleNamespace

    class Client:
        def task(self, task_id):
            return SimpleNamespace(closed=False, terms=SimpleNamespace(announce_deadline=10_000, verifiers_per_model=3))

        def model(self, mid):
            reads.append(mid)
            return records[mid]
    return Client()


def test_an_initiator_round_reads_only_the_models_still_in_play(tmp_path):
    """A settled model (terminal status) never changes: once seen, the initiator's rounds stop
    reading it from the chain, so a round's cost follows the models in play, not every model the
    task ever had (before: two contract reads per model per round, O(N^2) over a task)."""
    from coopml.chain import ChainEvent, ModelStatus
    from coopml.roles.state import Fact

    records = {mid: _record(ModelStatus.RELEASED) for mid in range(1, 41)} | {41: _record(ModelStatus.VERIFYING)}
    reads: list[int] = []
    ini = _bare_initiator(tmp_path, _counting_client(records, reads), {"time": 100, "block": 10})
    for mid in records:
        ini.state.add("model", mid, Fact())
    assert ini.step() is False
    assert set(reads) == set(records)            # the first round learns which models are settled
    records[41] = _record(ModelStatus.REJECTED)
    ini.on_event(ChainEvent("ModelFinalized", {"taskId": 1, "modelId": 41}, 11, 0, "0x"))
    reads.clear()
    ini.step()
    assert reads == [41]                         # later rounds read only the one still in play
    reads.clear()
    ini.step()
    assert reads == []
    ini.jobs.shutdown()
    ini.state.close()


def test_an_idle_initiator_round_reads_a_model_again_only_when_something_may_have_changed(tmp_path):
    """The buyer follows every model, and its idle rounds read every model in play again (at N = 50:
    141 of its 155 CPU-s, 2,400 JSON-RPC requests a minute). A record is now read again only when
    an event names the model, one of its deadlines or its draw delay passes, or after
    MODEL_RECHECK_S; and one head read serves the whole round (was one per model)."""
    from coopml.chain import ChainEvent, ModelStatus
    from coopml.roles import initiator as initiator_module
    from coopml.roles.state import Fact

    clock = {"time": 100, "block": 10}
    records = {1: _record(ModelStatus.VERIFYING, reveal_deadline=200),
               2: _record(ModelStatus.AWAITING_DRAW, draw_block=12),
               3: _record(ModelStatus.VERIFYING, reveal_deadline=5_000)}
    reads: list[int] = []
    heads = {"n": 0}
    ini = _bare_initiator(tmp_path, _counting_client(records, reads), clock)
    head = ini.chain.head
    ini.chain.head = lambda: (heads.__setitem__("n", heads["n"] + 1), head())[1]
    for mid in records:
        ini.state.add("model", mid, Fact())
    assert ini.step() is False and sorted(reads) == [1, 2, 3]
    assert heads["n"] == 1                                   # one head read for three models
    reads.clear()
    assert ini.step() is False and reads == []               # nothing happened: nothing read
    ini.on_event(ChainEvent("VoteRevealed", {"modelId": 3, "verifier": "0x", "vote": 1}, 11, 0, "0x"))
    ini.on_event(ChainEvent("Message", {"taskId": 1, "modelId": 1}, 11, 0, "0x"))   # changes no record
    ini.step()
    assert reads == [3]                                      # the model an event named, only
    reads.clear()
    clock["block"] = 13                                      # model 2's target block is mined
    ini.step()
    assert reads == []                                       # its draw delay runs until block 14
    clock["block"] = 15
    drawn: list[int] = []
    ini.client.draw_verifiers = drawn.append
    ini.step()
    assert reads == [2] and drawn == [2]                     # read again, and drawn
    reads.clear()
    clock["time"] = 201                                      # model 1's reveal deadline passes
    finalized: list[int] = []
    ini.client.finalize_model = finalized.append
    ini.step()
    assert 1 in reads and finalized == [1]
    assert 2 in reads                                        # acted on last round: read afresh
    reads.clear()
    initiator_module_recheck = initiator_module.MODEL_RECHECK_S
    try:
        initiator_module.MODEL_RECHECK_S = 0.0               # the safety interval: everything again
        ini.step()
        assert sorted(set(reads)) == [1, 2, 3]
    finally:
        initiator_module.MODEL_RECHECK_S = initiator_module_recheck
    ini.jobs.shutdown()
    ini.state.close()


def test_verifiers_draw_only_as_a_backstop_one_per_turn():
    """The contributor and the initiator draw a model as soon as its target block is mined; the
    verifiers only if it is still undrawn DRAW_BACKSTOP_BLOCKS later, and then one per turn
    (`backstop_turn`) — else every verifier of the task sent the same draw into the same block and
    all but one paid for a revert. Five verifiers that all wake at every block, a draw landing in
    the block after it is sent, a second draw into a block that already has one reverting."""
    from types import SimpleNamespace

    from coopml.chain import ContractRevert, ModelStatus
    from coopml.roles.verifier import BACKSTOP_TURN_BLOCKS, DRAW_BACKSTOP_BLOCKS, Verifier

    def race(offline: set[int]) -> tuple[list[tuple[int, int]], int, dict[int, int | None]]:
        block = {"n": 0}
        landed: dict[str, int | None] = {"at": None}
        sent: list[tuple[int, int]] = []
        reverts = {"n": 0}

        def model(mid):
            undrawn = landed["at"] is None or landed["at"] > block["n"]
            return SimpleNamespace(status=ModelStatus.AWAITING_DRAW if undrawn else ModelStatus.VERIFYING,
                                   draw_block=10, pool_snapshot=5)

        def draw(index):
            def send(mid):
                assert mid == 7
                sent.append((index, block["n"]))
                if landed["at"] is not None and landed["at"] <= block["n"] + 1:
                    reverts["n"] += 1
                    raise ContractRevert("AlreadyDrawn")
                landed["at"] = block["n"] + 1
            return send

        verifiers, wakes = [], {}
        for index in range(5):
            v = Verifier.__new__(Verifier)
            facts: dict[str, object] = {}
            v.state = SimpleNamespace(facts=lambda kind, cls: {"7": object()}, get=facts.get, set=facts.__setitem__)
            v.client = SimpleNamespace(model=model, draw_verifiers=draw(index))
            v.chain = SimpleNamespace(block_number=lambda: block["n"])
            v.log = lambda *a, **k: None
            verifiers.append(v)
        for n in range(11, 11 + DRAW_BACKSTOP_BLOCKS + 5 * BACKSTOP_TURN_BLOCKS + 2):
            block["n"] = n
            for index, v in enumerate(verifiers):
                if index not in offline:
                    v._wake_block = None
                    v._help_draws(index)
                    wakes.setdefault(index, v._wake_block)
        return sent, reverts["n"], wakes

    sent, reverts, wakes = race(set())
    # (pool index + model id) % pool size: index 3 has turn 0 for model 7, at block 11 + DRAW_BACKSTOP_BLOCKS
    assert sent == [(3, 11 + DRAW_BACKSTOP_BLOCKS)] and reverts == 0, sent
    assert wakes[3] == 11 + DRAW_BACKSTOP_BLOCKS                      # it slept until its turn's block
    assert wakes[4] == 11 + DRAW_BACKSTOP_BLOCKS + BACKSTOP_TURN_BLOCKS
    sent, reverts, _ = race({3})                                       # its verifier is gone: the next turn's draws
    assert sent == [(4, 11 + DRAW_BACKSTOP_BLOCKS + BACKSTOP_TURN_BLOCKS)] and reverts == 0, sent
    assert 11 + DRAW_BACKSTOP_BLOCKS + 32 * BACKSTOP_TURN_BLOCKS < 10 + 256    # long before the draw would be cancelled


def test_the_initiator_draws_only_if_the_contributor_has_not(tmp_path):
    """The contributor draws its model at once; the initiator only INITIATOR_DRAW_DELAY_BLOCKS later
    if it is still undrawn (both at once: one of them paid for a revert on nearly every model)."""
    from types import SimpleNamespace

    from coopml.chain import ModelStatus
    from coopml.roles.initiator import INITIATOR_DRAW_DELAY_BLOCKS, Initiator
    from coopml.roles.verifier import DRAW_BACKSTOP_BLOCKS

    drawn: list[int] = []
    block = {"n": 11}
    ini = Initiator.__new__(Initiator)
    ini.client = SimpleNamespace(model=lambda mid: SimpleNamespace(status=ModelStatus.AWAITING_DRAW, draw_block=10),
                                 draw_verifiers=drawn.append)
    ini.chain = SimpleNamespace(head=lambda: (block["n"], 100))
    ini.state = AgentState(tmp_path / "state.sqlite")
    ini.log = EventLog(Role.INITIATOR, "initiator", lambda rec: None)
    for n in range(11, 11 + INITIATOR_DRAW_DELAY_BLOCKS):
        block["n"] = n
        ini._wake_block = None
        assert ini._advance(7) is False and drawn == []          # the contributor's turn
        assert ini._wake_block == 11 + INITIATOR_DRAW_DELAY_BLOCKS
    block["n"] = 11 + INITIATOR_DRAW_DELAY_BLOCKS
    assert ini._advance(7) is True and drawn == [7]
    assert 0 < INITIATOR_DRAW_DELAY_BLOCKS < DRAW_BACKSTOP_BLOCKS       # before the verifiers' backstop
    ini.state.close()


def test_a_buyer_waiting_for_audit_reports_is_idle_until_its_wait_ends(tmp_path):
    """A delivered model's check waits for the drawn verifiers' audit reports until a margin before
    the dispute deadline. Waiting is not acting: before, the round said it acted, so the buyer
    stepped back to back through the whole dispute window and the in-process dev chain never moved
    its clock on (the IVHE scenarios waited the window out in real time). Now the round is idle,
    the wait's end is registered, and the dev chain's clock stops there, before the deadline."""
    from types import SimpleNamespace

    from coopml.chain import ModelStatus
    from coopml.roles.initiator import Initiator, audit_wait_ends
    from coopml.sim.lifecycle import next_deadline
    from fakes import model_info

    delivered = model_info(status=ModelStatus.DELIVERED, dispute_deadline=1_000)
    terms = SimpleNamespace(dispute_window=300, verify_window=300, announce_deadline=0)
    ini = Initiator.__new__(Initiator)
    ini.client = SimpleNamespace(model=lambda mid: delivered)
    ini.chain = SimpleNamespace(head=lambda: (10, 100))
    ini.state = AgentState(tmp_path / "state.sqlite")
    ini.log = EventLog(Role.INITIATOR, "initiator", lambda rec: None)
    ini._wake_times = []
    ends = audit_wait_ends(delivered.dispute_deadline, terms.dispute_window)

    def waiting(mid, m):          # what `_receive` does while reports are missing: no decision yet
        ini.wake_after(ends - 1)

    ini._receive = waiting
    assert ini._advance(7) is False and ini._wake_times == [ends - 1]
    assert 100 < ends <= delivered.dispute_deadline - 15
    coop = SimpleNamespace(chain=SimpleNamespace(now=lambda: 100), model_count=lambda: 1, model=lambda mid: delivered,
                           task=lambda task_id: SimpleNamespace(terms=terms, closed=True))
    assert next_deadline(coop, 1) == ends          # the dev chain's next jump stops at the wait's end
    ini.state.close()


def test_the_initiator_closes_and_withdraws_while_its_last_refit_runs(tmp_path):
    """Refitting bought models needs nothing from the chain: once every model is settled the
    initiator closes the task (so verifiers can take their money) and withdraws its refund while
    the refit runs, and ends only when the refit is in (before: close waited for the refit)."""
    import threading
    from types import SimpleNamespace

    from coopml.chain import ModelStatus
    from coopml.roles.initiator import Bought
    from coopml.roles.state import Fact

    calls: list[str] = []
    closed = threading.Event()

    class Client:
        def task(self, task_id):
            return SimpleNamespace(closed=closed.is_set(),
                                   terms=SimpleNamespace(announce_deadline=10_000, verifiers_per_model=3))

        def model(self, mid):
            return SimpleNamespace(status=ModelStatus.RELEASED)

        def close_task(self, task_id):
            calls.append("close")
            closed.set()

        def owed(self, address):
            return 0 if "withdraw" in calls or not closed.is_set() else 5

        def withdraw(self):
            calls.append("withdraw")
            return 5

    records: list[LogRecord] = []
    ini = _bare_initiator(tmp_path, Client(), {"time": 100, "block": 10})
    ini.address, ini.workdir = "0x" + "22" * 20, tmp_path
    ini.cfg = SimpleNamespace(close_when_models=1)
    ini.log = EventLog(Role.INITIATOR, "initiator", records.append)
    ini._settle_abandoned_ballots = lambda: None
    ini.done = False
    ini.state.add("model", 1, Fact())
    ini.state.put("bought", 1, Bought(model_id=1, labels=[0], cid="x", envelope_hash="00"))
    refit = threading.Event()
    ini.jobs.submit("fuse", refit.wait)

    assert ini.step() and calls == ["close"]              # closes although the refit runs
    assert ini.step() and calls == ["close", "withdraw"]  # and takes its refund meanwhile
    assert not ini.step() and not ini.done                # nothing more until the refit is in
    refit.set()
    while ini.jobs.busy():
        time.sleep(0.01)
    assert not ini.step() and not ini.done                # a bought model not yet in the MetaModel
    ini.state.put("bought", 1, Bought(model_id=1, labels=[0], cid="x", envelope_hash="00", fused=True))
    assert ini.step() and ini.done
    assert [r.event for r in records].count(LogEvent.WITHDRAWN) == 1
    ini.jobs.shutdown()
    ini.state.close()


def test_an_idle_node_steps_only_for_what_wakes_it(tmp_path):
    """The loop's rounds (`run_once(only_if_due=True)`, what `Agent.run` calls) read every new
    block's events but step only for an event the role's `wakes` accepts, a message into its inbox,
    a block or chain time it registered, a job that ended, a retry that is due, or the safety net.
    Before, every event of the contract made every node step (5-10 chain reads each): a task's
    other nodes' traffic — or anyone's flood of transactions — cost every node O(events) rounds."""
    import threading

    from coopml.chain import TaskTerms

    class Watcher(Agent):
        role = Role.VERIFIER
        idle_step_s = 3600.0

        def __init__(self, **kw):
            super().__init__(**kw)
            self.steps = 0
            self.deadline: int | None = None
            self.block: int | None = None

        def wakes(self, ev):
            return ev.args.get("initiator") == self.address     # only tasks this node publishes

        def step(self):
            self.steps += 1
            if self.deadline is not None:
                self.wake_after(self.deadline)
            if self.block is not None:
                self.wake_at(self.block)
            return False

    chain = Chain.embedded()
    coop = deploy(chain, chain.dev_accounts()[0])
    me, other = chain.dev_accounts()[1], chain.dev_accounts()[2]
    client = TaskClient(chain, coop.address, me, deploy_block=coop.deploy_block)
    w = Watcher(client=client, store=open_store(str(tmp_path / "store")), state=AgentState(tmp_path / "s.sqlite"),
                workdir=tmp_path, log=EventLog(Role.VERIFIER, "watcher", lambda rec: None),
                from_block=coop.deploy_block)

    def publish(account: str) -> None:
        terms = TaskTerms(reward_per_model=10**18, verifier_fee=10**16, contributor_deposit=10**17,
                          verifier_deposit=5 * 10**16, max_models=1, verifiers_per_model=3,
                          announce_deadline=chain.now() + 3600, verify_window=600, reveal_window=600,
                          delivery_window=600, dispute_window=600)
        TaskClient(chain, coop.address, account).publish_task(b"\x01" * 32, "bafy-x", b"\x02" * 32, terms)

    def rnd() -> int:
        before = w.steps
        w.run_once(only_if_due=True)
        return w.steps - before

    assert rnd() == 1                       # the first round steps
    assert rnd() == 0                       # nothing new
    for _ in range(3):
        publish(other)                      # another party's traffic: read, not stepped on
    assert rnd() == 0 and w.cursor.next_block == chain.block_number() + 1
    publish(me)                             # an event the role follows
    assert rnd() == 1 and rnd() == 0
    assert w.run_once() is False and w.steps == 3   # a forced round (tests, drivers) always steps

    w.deadline = chain.now() + 100           # a deadline registered by the step ...
    w.run_once()
    assert rnd() == 0
    chain.increase_time(50)
    assert rnd() == 0                       # ... is not yet past
    chain.increase_time(60)
    assert rnd() == 1                       # ... now it is
    w.deadline = None
    assert rnd() == 0

    w.block = chain.block_number() + 2       # a block registered by the step (a draw's target)
    w.run_once()
    publish(other)
    assert rnd() == 0
    publish(other)
    assert rnd() == 1
    w.block = None
    assert rnd() == 0

    done = threading.Event()
    w.jobs.submit("work", done.set)          # a job ending
    done.wait(5)
    time.sleep(0.1)
    assert rnd() == 1 and rnd() == 0

    calls = []

    def flaky() -> Decision:                 # a retry's back-off ending
        calls.append(1)
        raise StorageUnavailable("not yet")
    w.handle("inbox:1", flaky, deadline=chain.now() + 3600)
    w.state.attempts("inbox:1").next_at = time.monotonic() + 0.2
    w.handle("inbox:1", flaky)               # still backing off: registers when to come back
    w._step_due = False
    assert rnd() == 0
    time.sleep(0.25)
    assert rnd() == 1

    w.idle_step_s = 0.2                      # the safety net
    assert rnd() == 0
    time.sleep(0.25)
    assert rnd() == 1
    w.close()


def test_contributors_and_verifiers_wake_for_their_own_models_only():
    """What a contributor (model 5) and a verifier (drawn for model 5) step for: their model's
    ballot and status, the task's end, what names them; not another model's events, not messages
    between other nodes (a node's own messages wake it through its inbox). The initiator: every
    event of its task but others' messages."""
    from types import SimpleNamespace

    from coopml.chain import ChainEvent
    from coopml.roles.contributor import Contributor
    from coopml.roles.verifier import Assignment, Verifier

    me, them = "0x" + "11" * 20, "0x" + "22" * 20

    def ev(name: str, **args) -> ChainEvent:
        return ChainEvent(name, args, 1, 0, "0x")

    c = Contributor.__new__(Contributor)
    c.address, c.task_id = me, 1
    c.state = SimpleNamespace(get=lambda key, default=None: None)        # not announced yet
    assert c.wakes(ev("VerifierRegistered", taskId=1, verifier=them))     # an announcement may now pass
    assert not c.wakes(ev("ModelAnnounced", taskId=1, modelId=4, contributor=them))
    assert c.wakes(ev("ModelAnnounced", taskId=1, modelId=5, contributor=me))
    c.state = SimpleNamespace(get=lambda key, default=None: 5 if key == "model_id" else None)
    for wake in (ev("VoteCommitted", modelId=5, verifier=them), ev("ModelFinalized", taskId=1, modelId=5),
                 ev("TaskClosedEvent", taskId=1, returned=0), ev("Credited", account=me, amount=1)):
        assert c.wakes(wake), wake
    for quiet in (ev("VoteCommitted", modelId=6, verifier=them), ev("ModelAnnounced", taskId=1, modelId=6, contributor=them),
                  ev("VerifierRegistered", taskId=1, verifier=them), ev("Message", taskId=1, modelId=5, to=them),
                  ev("TaskClosedEvent", taskId=2, returned=0), ev("Credited", account=them, amount=1)):
        assert not c.wakes(quiet), quiet

    v = Verifier.__new__(Verifier)
    v.address, v.task_id = me, 1
    drawn = {"5": Assignment(model_id=5, contributor=them)}
    v.state = SimpleNamespace(fact=lambda kind, key, cls: drawn.get(str(key)))
    for wake in (ev("VerifierSelected", taskId=1, modelId=7, verifier=me), ev("VoteCommitted", modelId=5, verifier=them),
                 ev("KeyRevealed", modelId=5, key=b""), ev("ModelAnnounced", taskId=1, modelId=8, contributor=them),
                 ev("TaskClosedEvent", taskId=1, returned=0)):
        assert v.wakes(wake), wake
    for quiet in (ev("VerifierSelected", taskId=1, modelId=7, verifier=them), ev("VoteCommitted", modelId=6, verifier=them),
                  ev("Message", taskId=1, modelId=5, to=them), ev("ModelFinalized", taskId=1, modelId=6),
                  ev("ModelAnnounced", taskId=2, modelId=9, contributor=them)):
        assert not v.wakes(quiet), quiet

    from coopml.roles.initiator import Initiator
    ini = Initiator.__new__(Initiator)
    ini.state = SimpleNamespace(get=lambda key, default=None: 1 if key == "task_id" else default)
    assert ini.wakes(ev("VoteRevealed", modelId=6, verifier=them, vote=1))
    assert ini.wakes(ev("ModelAnnounced", taskId=1, modelId=8, contributor=them))
    assert not ini.wakes(ev("Message", taskId=1, modelId=5, to=them))
    assert not ini.wakes(ev("ModelAnnounced", taskId=2, modelId=9, contributor=them))


def test_the_buyer_leaves_finalize_delivery_to_the_contributor_and_is_only_the_backstop(tmp_path):
    """After a delivered model's dispute window both the contributor (owed the payment) and the
    initiator may call `finalizeDelivery`; sent together, one of them paid for a revert (15 of 22
    bought models at N = 50). The initiator now waits `finalize_backstop_delay` of chain time (a
    twentieth of the dispute window), registers that wake, and finalizes only if nobody has; the
    dev-chain clock knows the time."""
    from types import SimpleNamespace

    from coopml.chain import ModelStatus
    from coopml.roles.initiator import finalize_backstop_delay
    from coopml.roles.state import Outcome
    from coopml.sim.lifecycle import next_deadline

    records = {1: _record(ModelStatus.DELIVERED, reveal_deadline=500, dispute_deadline=1_000)}
    reads: list[int] = []
    finalized: list[int] = []
    client = _counting_client(records, reads)
    client.finalize_delivery = finalized.append
    clock = {"time": 1_001, "block": 50}
    ini = _bare_initiator(tmp_path, client, clock)
    ini.handle = lambda key, fn, **kw: SimpleNamespace(outcome=Outcome.DONE)    # the buyer checked it
    ini._view.info.terms.dispute_window = 300
    delay = finalize_backstop_delay(300)
    assert delay == 15 and finalize_backstop_delay(60) == 3 and finalize_backstop_delay(86_400) == 60
    assert ini._advance(1) is False and finalized == []                          # the contributor's turn
    assert ini._wake_times == [1_000 + delay]
    clock["time"] = 1_000 + delay
    assert ini._advance(1) is False and finalized == []
    clock["time"] += 1                                                            # nobody did: backstop
    assert ini._advance(1) is True and finalized == [1]
    coop = SimpleNamespace(chain=SimpleNamespace(now=lambda: 1_001), model_count=lambda: 1,
                           model=lambda mid: records[1] if mid == 1 else None,
                           task=lambda _: SimpleNamespace(closed=True, terms=SimpleNamespace(
                               verify_window=300, dispute_window=300, announce_deadline=0)))
    # the dev-chain runner moves the clock to the backstop when nothing else is due before it
    assert next_deadline(coop, 1) == 1_000 + delay + 1
    ini.jobs.shutdown()
    ini.state.close()


def test_a_stop_does_not_wait_for_a_long_training(tmp_path):
    """SIGTERM / Ctrl-C end the loop between rounds, and then the node waited for its running jobs:
    a contributor's training (minutes on real data), the initiator's own model and refits. Now the
    loop's end sets `stopping`, which training asks before every batch: the node stops within a
    batch; a restart trains afresh (nothing half-done was kept)."""
    import threading

    import numpy as np

    from coopml.data import MNIST_INPUT, Dataset
    from coopml.models import TrainConfig, TrainingCancelled, build_model, train_model
    from coopml.roles.contributor import Contributor

    rng = np.random.default_rng(0)
    data = Dataset(rng.integers(0, 255, (400, 28, 28), dtype=np.uint8), rng.integers(0, 10, 400), MNIST_INPUT)
    endless = TrainConfig(max_epochs=100_000, patience=100_000, batch_size=50)
    started = threading.Event()
    batches = {"n": 0}

    class Trainer(Probe):
        def step(self):
            if not self.jobs.running("train") and self.jobs.pop("train") is None:
                def train():
                    started.set()
                    train_model(build_model("table4", seed=0), data, data, endless, should_stop=self._counted)
                self.jobs.submit("train", train)
            return False

        def _counted(self):
            batches["n"] += 1
            return self.stopping.is_set()

    trainer = _agent(tmp_path, Chain.embedded(), [], Trainer)
    trainer.waiter.poll = 0.05
    done = threading.Event()
    thread = threading.Thread(target=lambda: (trainer.run(stop=started.is_set), done.set()), daemon=True)
    thread.start()
    assert started.wait(60)
    assert done.wait(30), "the node waited for its training job"    # 100,000 epochs would take hours
    assert batches["n"] > 0
    with pytest.raises(TrainingCancelled):
        trainer.jobs.pop("train").result()
    trainer.state.close()

    # the contributor's training asks the same flag
    c = Contributor.__new__(Contributor)
    c.stopping = threading.Event()
    c.stopping.set()
    with pytest.raises(TrainingCancelled):
        c.train(build_model("table4", seed=0), data, data, endless, list(range(10)))


def test_a_contributor_answers_one_request_per_verifier_and_model(tmp_path):
    """The first valid request of a drawn verifier binds, durably: the same inbox item again (a
    restart mid-evaluation) goes on, a re-post of the same request CID (an honest verifier's
    restart) is ignored, another request is refused; other verifiers and models bind their own.
    The scenario with a verifier that asks again: test_roles_adversarial_copies.py."""
    from coopml.roles.agent import InboxMessage
    from coopml.roles.contributor import Contributor
    from coopml.roles.messages import MessageKind
    v1, v2 = "0x" + "11" * 20, "0x" + "22" * 20

    def bind(c: Contributor, mid: int, sender: str, item: str, cid: str) -> Decision | None:
        return c._bind_request(mid, InboxMessage(model_id=mid, sender=sender, kind=int(MessageKind.EVAL_REQUEST), cid=cid), item)

    c = Contributor.__new__(Contributor)
    c.state = AgentState(tmp_path / "state.sqlite")
    assert bind(c, 1, v1, "inbox:5:0", "cid-a") is None
    assert bind(c, 1, v2, "inbox:5:1", "cid-b") is None and bind(c, 2, v1, "inbox:6:0", "cid-c") is None
    c.state.close()
    c.state = AgentState(tmp_path / "state.sqlite")          # a restart: the bindings are on disk
    assert bind(c, 1, v1, "inbox:5:0", "cid-a") is None
    repeat = bind(c, 1, v1, "inbox:7:0", "cid-a")
    assert repeat is not None and repeat.outcome == Outcome.IGNORED
    other = bind(c, 1, v1, "inbox:8:0", "cid-d")
    assert other is not None and other.outcome == Outcome.REJECTED and "one request per verifier" in other.reason

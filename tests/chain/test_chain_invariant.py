"""Hypothesis stateful test: random sequences of v2 contract operations (valid or not, by any
account) never break
  contract balance == sum over tasks of locked + sum of what accounts can withdraw + total burnt,
burnt wei never decrease, and the initiator never receives more than it paid in (escrow + bonds).
At the end every model is driven to a terminal state, every task wound down, and the contract
holds exactly its burnt wei (nothing stuck, nothing missing)."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from conftest import (
    BOX_KEY,
    DELIVERY_KEY,
    MANIFEST_CID,
    MANIFEST_HASH,
    make_world,
    mine_blocks,
    wait_for_draw,
)
from coopml.chain import Chain, ContractRevert, ModelStatus, key_commitment

EXAMPLES = {"embedded": 4, "anvil": 4, "slow": 60}
STEPS = {"embedded": 14, "anvil": 14, "slow": 30}
WINDOW = 300


def test_contract_balance_equals_what_it_owes_plus_what_it_burnt(chain, request):
    run_machine(chain, request.node.callspec.params["chain"])


@pytest.mark.slow
def test_contract_balance_invariant_long_run():
    run_machine(Chain.embedded(), "slow")


def run_machine(chain: Chain, kind: str) -> None:
    class Machine(RuleBasedStateMachine):
        tasks = Bundle("tasks")
        models = Bundle("models")

        @initialize()
        def fresh_contract(self):
            self.w = make_world(chain, n_contributors=3, n_verifiers=4)
            self.keys: dict[int, bytes] = {}
            self.votes: dict[tuple[int, str], tuple[int, bytes]] = {}
            self.accounts = self.w.accounts()
            self.initiator_paid = 0
            self.initiator_withdrawn = 0
            self.burnt = 0

        def attempt(self, fn, *args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except ContractRevert:
                return None

        def client(self, account):
            return self.w.as_(account)

        @rule(target=tasks, max_models=st.integers(1, 3), v=st.sampled_from([1, 3]))
        def publish(self, max_models, v):
            terms = self.w.terms(max_models=max_models, verifiers_per_model=v, announce_deadline=chain.now() + 1_000,
                                 verify_window=WINDOW, reveal_window=WINDOW, delivery_window=WINDOW,
                                 dispute_window=WINDOW)
            task_id = self.client(self.w.initiator).publish_task(MANIFEST_HASH, MANIFEST_CID, DELIVERY_KEY, terms)
            self.initiator_paid += terms.escrow
            return task_id

        @rule(task=tasks, i=st.integers(0, 2))
        def register_contributor(self, task, i):
            self.attempt(self.client(self.w.contributors[i]).register_contributor, task)

        @rule(task=tasks, j=st.integers(0, 3))
        def register_verifier(self, task, j):
            self.attempt(self.client(self.w.verifiers[j]).register_verifier, task, BOX_KEY)

        @rule(target=models, task=tasks, i=st.integers(0, 2))
        def announce(self, task, i):
            key = os.urandom(32)
            mid = self.attempt(self.client(self.w.contributors[i]).announce_model, task, os.urandom(32),
                               key_commitment(key), "bafy")
            if mid is None:
                return 0  # an unknown model id: later rules on it must revert harmlessly
            self.keys[mid] = key
            return mid

        @rule(model=models, expire=st.booleans())
        def draw(self, model, expire):
            if model and expire:
                mine_blocks(chain, 258)
            elif model:
                self.attempt(wait_for_draw, self.w.coop, model)
            self.attempt(self.w.coop.draw_verifiers, model)

        @rule(model=models, j=st.integers(0, 3), vote=st.sampled_from([1, 2, 3, 4]))
        def commit(self, model, j, vote):
            voter = self.w.verifiers[j]
            salt = os.urandom(32)
            if self.attempt(self.client(voter).commit_vote, model, vote, salt) is not None:
                self.votes[(model, voter)] = (vote, salt)

        @rule(model=models, j=st.integers(0, 3))
        def reveal(self, model, j):
            voter = self.w.verifiers[j]
            vote, salt = self.votes.get((model, voter), (1, bytes(32)))
            self.attempt(self.client(voter).reveal_vote, model, vote, salt)

        @rule(model=models)
        def finalize(self, model):
            self.attempt(self.w.coop.finalize_model, model)

        @rule(model=models, j=st.integers(0, 3))
        def settle(self, model, j):
            self.attempt(self.w.coop.settle_vote, model, self.w.verifiers[j])

        @rule(model=models)
        def deliver(self, model):
            for c in self.w.contributors:
                self.attempt(self.client(c).deliver_key, model, b"sealed")

        @rule(model=models)
        def expire_or_finalize_delivery(self, model):
            self.attempt(self.w.coop.expire_delivery, model)
            self.attempt(self.w.coop.finalize_delivery, model)

        @rule(model=models, kind_b=st.booleans())
        def dispute(self, model, kind_b):
            initiator = self.client(self.w.initiator)
            if not model:
                return
            fn = initiator.dispute_model if kind_b else initiator.dispute_delivery
            args = (model, self.keys.get(model, bytes(32))) if kind_b else (model,)
            if self.attempt(fn, *args) is not None:
                self.initiator_paid += self.w.coop._bond(model)

        @rule(model=models, correct=st.booleans())
        def answer(self, model, correct):
            key = self.keys.get(model, bytes(32)) if correct else os.urandom(32)
            for c in self.w.contributors:
                self.attempt(self.client(c).answer_dispute, model, key)

        @rule(model=models, j=st.integers(0, 3), mismatch=st.booleans())
        def vote_dispute(self, model, j, mismatch):
            self.attempt(self.client(self.w.verifiers[j]).vote_dispute, model, mismatch)

        @rule(model=models)
        def resolve(self, model):
            self.attempt(self.w.coop.resolve_dispute, model)
            self.attempt(self.w.coop.resolve_model_dispute, model)

        @rule(seconds=st.sampled_from([WINDOW // 2, WINDOW + 1, 1_100]))
        def advance(self, seconds):
            chain.increase_time(seconds)

        @rule(task=tasks, by_initiator=st.booleans())
        def close(self, task, by_initiator):
            self.attempt(self.client(self.w.initiator if by_initiator else self.w.outsider).close_task, task)

        @rule(task=tasks, a=st.integers(0, 8))
        def leave(self, task, a):
            self.attempt(self.client(self.accounts[a]).leave_task, task)

        @rule(a=st.integers(0, 8))
        def withdraw(self, a):
            amount = self.attempt(self.client(self.accounts[a]).withdraw)
            if amount and self.accounts[a] == self.w.initiator:
                self.initiator_withdrawn += amount

        @invariant()
        def solvent_and_initiator_never_profits(self):
            if not hasattr(self, "w"):
                return
            self.w.assert_solvent()
            burnt = self.w.coop.total_burnt()
            assert burnt >= self.burnt
            self.burnt = burnt
            assert self.initiator_withdrawn + self.w.coop.owed(self.w.initiator) <= self.initiator_paid

        def teardown(self):
            if not hasattr(self, "w"):
                return
            coop = self.w.coop
            for _ in range(4):  # each pass moves every model one step nearer a terminal state
                chain.increase_time(2 * WINDOW + 1)
                for mid in range(1, coop.model_count() + 1):
                    status = coop.model(mid).status
                    if status == ModelStatus.AWAITING_DRAW:
                        wait_for_draw(coop, mid)
                        coop.draw_verifiers(mid)
                    for step in (coop.finalize_model, coop.expire_delivery, coop.finalize_delivery,
                                 coop.resolve_dispute, coop.resolve_model_dispute):
                        self.attempt(step, mid)
            for mid in range(1, coop.model_count() + 1):
                assert coop.model(mid).status.terminal, coop.model(mid)
                self.w.settle_all(mid)
            for tid in range(1, coop.task_count() + 1):
                self.attempt(coop.close_task, tid)
                for a in self.accounts:
                    self.attempt(self.client(a).leave_task, tid)
                assert coop.task(tid).locked == 0
            for a in self.accounts:
                self.attempt(self.client(a).withdraw)
            assert coop.total_owed() == 0
            assert coop.contract_balance() == coop.total_burnt()

    run_state_machine_as_test(Machine, settings=settings(
        max_examples=EXAMPLES[kind], stateful_step_count=STEPS[kind], deadline=None, derandomize=True,
        suppress_health_check=list(HealthCheck), database=None))

"""Hypothesis stateful test: random sequences of contract operations (valid or not) never break
  contract balance == sum over tasks of locked escrow/deposits + sum of what accounts can withdraw,
and at the end every task can be wound down to a zero balance (nothing stuck, nothing missing)."""

from __future__ import annotations

import os

import pytest

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from coopml.chain import Chain, ContractRevert, ModelStatus, key_commitment
from conftest import SPEC, make_world

EXAMPLES = {"embedded": 4, "anvil": 4, "slow": 60}
STEPS = {"embedded": 12, "anvil": 12, "slow": 25}


def test_contract_balance_equals_what_it_owes(chain, request):
    run_machine(chain, request.node.callspec.params["chain"])


@pytest.mark.slow
def test_contract_balance_equals_what_it_owes_long_run():
    run_machine(Chain.embedded(), "slow")


def run_machine(chain: Chain, kind: str) -> None:
    world = make_world(chain, n_contributors=3, n_verifiers=4)

    class Machine(RuleBasedStateMachine):
        tasks = Bundle("tasks")
        models = Bundle("models")

        @initialize()
        def fresh_contract(self):
            fresh = make_world(chain, n_contributors=3, n_verifiers=4)
            self.w = fresh
            self.keys: dict[int, bytes] = {}
            self.salts: dict[tuple[int, str], tuple[bool, bytes]] = {}
            self.accounts = [fresh.initiator, *fresh.contributors, *fresh.verifiers, fresh.outsider]

        def attempt(self, fn, *args):
            try:
                return fn(*args)
            except ContractRevert:
                return None

        @rule(target=tasks, max_models=st.integers(1, 3), v=st.sampled_from([1, 3]))
        def publish(self, max_models, v):
            terms = self.w.terms(max_models=max_models, verifiers_per_model=v, announce_deadline=chain.now() + 1_000,
                                 commit_window=300, reveal_window=300, release_window=300)
            return self.w.as_(self.w.initiator).publish_task(SPEC, terms)

        @rule(task=tasks, i=st.integers(0, 2))
        def register_contributor(self, task, i):
            self.attempt(self.w.as_(self.w.contributors[i]).register_contributor, task)

        @rule(task=tasks, i=st.integers(0, 3))
        def register_verifier(self, task, i):
            self.attempt(self.w.as_(self.w.verifiers[i]).register_verifier, task)

        @rule(target=models, task=tasks, i=st.integers(0, 2))
        def announce(self, task, i):
            key = os.urandom(32)
            mid = self.attempt(self.w.as_(self.w.contributors[i]).announce_model, task, "bafy", b"\x01" * 32,
                               key_commitment(key))
            if mid is None:
                return 0  # an unknown model id: later rules on it must revert harmlessly
            self.keys[mid] = key
            return mid

        @rule(model=models, j=st.integers(0, 3), approve=st.booleans())
        def commit(self, model, j, approve):
            voter = self.w.verifiers[j]
            salt = os.urandom(32)
            if self.attempt(self.w.as_(voter).commit_vote, model, approve, salt) is not None:
                self.salts[(model, voter)] = (approve, salt)

        @rule(model=models, j=st.integers(0, 3))
        def reveal(self, model, j):
            voter = self.w.verifiers[j]
            approve, salt = self.salts.get((model, voter), (True, bytes(32)))
            self.attempt(self.w.as_(voter).reveal_vote, model, approve, salt)

        @rule(model=models)
        def finalize(self, model):
            self.attempt(self.w.coop.finalize_model, model)

        @rule(model=models, j=st.integers(0, 3))
        def settle(self, model, j):
            self.attempt(self.w.coop.settle_vote, model, self.w.verifiers[j])

        @rule(model=models, correct=st.booleans())
        def release(self, model, correct):
            key = self.keys.get(model, b"") if correct else b"guess"
            for c in self.w.contributors:
                self.attempt(self.w.as_(c).release_key, model, key)

        @rule(model=models)
        def expire(self, model):
            self.attempt(self.w.coop.expire_release, model)

        @rule(seconds=st.sampled_from([200, 400, 1_100]))
        def advance(self, seconds):
            chain.increase_time(seconds)

        @rule(task=tasks)
        def close(self, task):
            self.attempt(self.w.coop.close_task, task)

        @rule(task=tasks, a=st.integers(0, 8))
        def claim(self, task, a):
            self.attempt(self.w.as_(self.accounts[a]).claim_deposits, task)

        @rule(a=st.integers(0, 8))
        def withdraw(self, a):
            self.attempt(self.w.as_(self.accounts[a]).withdraw)

        @invariant()
        def solvent(self):
            if hasattr(self, "w"):
                self.w.assert_solvent()

        def teardown(self):
            if not hasattr(self, "w"):
                return
            coop = self.w.coop
            chain.increase_time(5_000)
            for mid in range(1, coop.model_count() + 1):
                self.attempt(coop.finalize_model, mid)
                self.attempt(coop.expire_release, mid)
                self.w.settle_all(mid)
                assert coop.model(mid).status in (ModelStatus.REJECTED, ModelStatus.RELEASED, ModelStatus.FORFEITED)
            for tid in range(1, coop.task_count() + 1):
                self.attempt(coop.close_task, tid)
                for a in self.accounts:
                    self.attempt(self.w.as_(a).claim_deposits, tid)
                assert coop.task(tid).locked == 0
            for a in self.accounts:
                self.attempt(self.w.as_(a).withdraw)
            assert coop.total_owed() == 0
            assert coop.contract_balance() == 0

    run_state_machine_as_test(Machine, settings=settings(
        max_examples=EXAMPLES[kind], stateful_step_count=STEPS[kind], deadline=None, derandomize=True,
        suppress_health_check=list(HealthCheck), database=None))
    assert world.coop.contract_balance() == 0

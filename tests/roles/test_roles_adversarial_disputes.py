"""Hostile participants against the real agents on a real EVM, with real models and real CKKS
verification (docs/threat-model.md). Each scenario is one small task with several attackers at
once; the assertions are the properties, read from the chain. This file: a false dispute and a
silent verifier."""

from __future__ import annotations

import pytest
from adversarial_plans import ALL, B, _c, _v

from coopml.chain import ETHER
from coopml.sim.lifecycle import InitiatorPlan, run_in_process, tiny_plan


@pytest.mark.timeout(1800)
def test_false_dispute_costs_the_buyer_and_a_silent_verifier_is_burnt(tmp_path):
    plan = tiny_plan([_c(ALL)], [_v(), _v(), _v("SilentVerifier")],
                     InitiatorPlan(n_train=300, n_audit=32, fusion_epochs=3, fusion_augment=0, n_test=1000,
                                   agent=f"{B}FalseDisputeInitiator"), criterion={"min_gain": -1.0})
    r = run_in_process(plan, tmp_path, node="anvil")
    m = r.models[0]
    assert m.status == "RELEASED" and m.approve == 2, m
    # the contributor gets reward + deposit + the buyer's bond (= its deposit)
    assert r.withdrawn_eth["contributor1"] == pytest.approx(1.2)
    assert set(r.burnt) == {"verifier3"}
    assert r.withdrawn_eth.get("verifier3", 0.0) == 0.0
    assert r.total_burnt_eth * ETHER == pytest.approx((0.1 + 0.1) * ETHER)   # its deposit and its unearned fee

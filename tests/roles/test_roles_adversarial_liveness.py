"""Hostile participants against the real agents on a real EVM, with real models and real CKKS
verification (docs/threat-model.md). Each scenario is one small task with several attackers at
once; the assertions are the properties, read from the chain. This file: the initiator goes silent."""

from __future__ import annotations

import pytest
from adversarial_plans import ALL, B, _c, _v

from coopml.sim.lifecycle import InitiatorPlan, run_in_process, tiny_plan


@pytest.mark.timeout(1800)
def test_liveness_without_the_initiator_and_poison_messages(tmp_path):
    """The initiator publishes and goes silent; a verifier floods everyone with malformed messages;
    one contributor withholds its offer from one verifier, another answers nobody. Verification,
    votes, payment and settlement still complete; the verifier that got nothing is paid, not slashed."""
    plan = tiny_plan([_c(ALL, "SelectiveContributor"), _c(ALL, "SilentContributor")],
                     [_v(), _v(), _v("SpammingVerifier")],
                     InitiatorPlan(n_train=300, n_audit=32, fusion_epochs=3, fusion_augment=0, n_test=1000,
                                   agent=f"{B}SilentInitiator"), criterion={"min_gain": -1.0})
    r = run_in_process(plan, tmp_path)
    first, second = r.by_contributor("contributor1"), r.by_contributor("contributor2")
    assert first.status == "RELEASED" and first.approve == 2 and first.reject == 1, first
    assert second.status == "REJECTED" and second.reject == 3, second
    assert r.withdrawn_eth["contributor1"] == pytest.approx(1.1)
    shunned = next(v for v, vote in first.votes.items() if vote == "REJECT")
    assert shunned not in r.burnt and r.withdrawn_eth[shunned] == pytest.approx(r.withdrawn_eth["verifier1"])
    assert set(r.burnt) == {"contributor2"}

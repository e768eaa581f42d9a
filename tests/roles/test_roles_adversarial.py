"""Hostile participants against the real agents on a real EVM, with real models and real CKKS
verification (docs/threat-model.md). Each scenario is one small task with several attackers at
once; the assertions are the properties, read from the chain. This file: cheating sellers; the other
scenarios are in test_roles_adversarial_*.py (one per file, see adversarial_plans.py)."""

from __future__ import annotations

import pytest
from adversarial_plans import ALL, _c, _v

from coopml.sim.lifecycle import run_in_process, tiny_plan


def _escrow(result) -> float:
    n = len(result.models)
    return n * (1.0 + 3 * 0.1)


@pytest.mark.timeout(1800)
def test_cheating_sellers_gain_nothing(tmp_path):
    """A model evaluated but swapped at delivery, a key that opens nothing, untrained weights, a
    withheld key, a model sold with more classes than it was judged on: none is paid, every deposit at stake is burnt (never paid to the buyer), the buyer
    gets its reward back, the honest seller is paid; a verifier voting against its finding is
    outvoted and still paid (no 'against the majority' slashing anybody could steer)."""
    plan = tiny_plan([_c([0, 1, 2, 3, 4]), _c([5, 6, 7, 8, 9], "LyingContributor"), _c(ALL, "KeySwapContributor"),
                      _c(ALL, "RandomWeightsContributor"), _c(ALL, "WithholdingContributor"),
                      _c([5, 6, 7, 8, 9], "LabelInflatingContributor", seed=6)],
                     [_v(), _v(), _v("FlippingVerifier")], criterion={"min_gain": -1.0})
    r = run_in_process(plan, tmp_path, node="anvil")
    status = {m.contributor: m.status for m in r.models}
    assert status == {"contributor1": "RELEASED", "contributor2": "REFUNDED", "contributor3": "REFUNDED",
                      "contributor4": "REJECTED", "contributor5": "FORFEITED", "contributor6": "REFUNDED"}, status
    assert r.withdrawn_eth.get("contributor1") == pytest.approx(1.1)
    for cheat in ("contributor2", "contributor3", "contributor4", "contributor5", "contributor6"):
        assert r.withdrawn_eth.get(cheat, 0.0) == 0.0
        assert r.burnt.get(cheat), cheat
    # the buyer paid for exactly one model and the fees, and got back the bonds of the three disputes
    # it won (its own money): never a wei of anybody's slashed deposit
    fees = sum(m.approve + m.reject + m.abstain for m in r.models) * 0.1
    assert r.withdrawn_eth["initiator"] == pytest.approx(_escrow(r) - 1.0 - fees + 3 * 0.1)
    assert r.total_burnt_eth == pytest.approx(5 * 0.1)
    # the flipping verifier revealed every vote: paid like the others, never slashed
    assert r.withdrawn_eth["verifier3"] == pytest.approx(r.withdrawn_eth["verifier1"])
    assert "verifier3" not in r.burnt

"""Hostile participants against the real agents on a real EVM, with real models and real CKKS
verification (docs/threat-model.md). Each scenario is one small task with several attackers at
once; the assertions are the properties, read from the chain."""

from __future__ import annotations

import pytest

from coopml.chain import ETHER
from coopml.sim.lifecycle import ContributorPlan, InitiatorPlan, VerifierPlan, run_in_process, tiny_plan

B = "coopml.sim.behaviours:"
ALL = list(range(10))


def _c(labels: list[int], agent: str | None = None, **kw: object) -> ContributorPlan:
    return ContributorPlan(labels=labels, n_train=300, epochs=3, agent=f"{B}{agent}" if agent else
                           "coopml.roles.contributor:Contributor", **kw)


def _v(agent: str | None = None) -> VerifierPlan:
    return VerifierPlan(n_verify=300, agent=f"{B}{agent}" if agent else "coopml.roles.verifier:Verifier")


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
    r = run_in_process(plan, tmp_path)
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


@pytest.mark.timeout(1800)
def test_value_test_rejects_a_permuted_copy_and_buys_new_classes(tmp_path):
    """A re-seller announces another contributor's model with its hidden channels permuted (same
    outputs, new hash): only one of the two is bought; a model that adds classes is bought. A
    verifier floods every node with malformed messages meanwhile: all record decisions and go on."""
    plan = tiny_plan([_c([0, 1, 2, 3, 4], seed=7), _c([0, 1, 2, 3, 4], "CopyingContributor", same_data_as=0),
                      _c([5, 6, 7, 8, 9], seed=3)], [_v(), _v(), _v("SpammingVerifier")])
    r = run_in_process(plan, tmp_path)
    status = {m.contributor: m.status for m in r.models}
    assert sorted([status["contributor1"], status["contributor2"]]) == ["REJECTED", "RELEASED"], status
    assert status["contributor3"] == "RELEASED", status
    assert_poison_recorded(tmp_path, ["initiator", "contributor1", "contributor3", "verifier1", "verifier2"])


def assert_poison_recorded(workdir, nodes: list[str]) -> None:
    """Every message each node received ended with a recorded decision."""
    from coopml.roles.agent import InboxMessage
    from coopml.roles.messages import MessageKind
    from coopml.roles.state import AgentState
    for node in nodes:
        st = AgentState(workdir / node / "state.sqlite")
        inbox = st.facts("inbox", InboxMessage)
        undecided = [i for i in inbox if st.decision(f"inbox:{i}") is None]
        ignored = [d for d in st.decisions("inbox:").values() if d.outcome.value in ("ignored", "rejected")]
        st.close()
        assert inbox and not undecided, (node, len(inbox), undecided[:3])
        # SpammingVerifier sends every message kind at least once to each node (and more per model)
        assert len(ignored) >= len(MessageKind), (node, len(ignored))


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
    _assert_broadcasts_reach_only_their_verifiers(r)


def _assert_broadcasts_reach_only_their_verifiers(r) -> None:
    """One broadcast transaction must not fill every inbox (P6): a node takes a broadcast only when
    it is a drawn verifier of that model and the sender is that model's contributor. The spammer
    broadcast garbage of every kind; none of it may be in anybody's inbox."""
    from coopml.roles.agent import InboxMessage
    from coopml.roles.state import AgentState

    address = {name: a.lower() for a, name in r.names.items()}
    spammer = address["verifier3"]          # the plan's SpammingVerifier
    sellers = {m.model_id: address[m.contributor] for m in r.models}
    garbage_seen = 0
    for name in address:
        inbox = AgentState(r.workdir / name / "state.sqlite").facts("inbox", InboxMessage).values()
        for msg in inbox:
            if msg.broadcast:
                assert name.startswith("verifier") and msg.sender.lower() == sellers.get(msg.model_id), (name, msg)
            garbage_seen += msg.sender.lower() == spammer
    assert garbage_seen > 0, "nobody got the spammer's addressed garbage: the check above proves nothing"


@pytest.mark.timeout(1800)
def test_false_dispute_costs_the_buyer_and_a_silent_verifier_is_burnt(tmp_path):
    plan = tiny_plan([_c(ALL)], [_v(), _v(), _v("SilentVerifier")],
                     InitiatorPlan(n_train=300, n_audit=32, fusion_epochs=3, fusion_augment=0, n_test=1000,
                                   agent=f"{B}FalseDisputeInitiator"), criterion={"min_gain": -1.0})
    r = run_in_process(plan, tmp_path)
    m = r.models[0]
    assert m.status == "RELEASED" and m.approve == 2, m
    # the contributor gets reward + deposit + the buyer's bond (= its deposit)
    assert r.withdrawn_eth["contributor1"] == pytest.approx(1.2)
    assert set(r.burnt) == {"verifier3"}
    assert r.withdrawn_eth.get("verifier3", 0.0) == 0.0
    assert r.total_burnt_eth * ETHER == pytest.approx((0.1 + 0.1) * ETHER)   # its deposit and its unearned fee

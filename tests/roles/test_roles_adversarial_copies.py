"""Hostile participants against the real agents on a real EVM, with real models and real CKKS
verification (docs/threat-model.md). Each scenario is one small task with several attackers at
once; the assertions are the properties, read from the chain. This file: a re-seller's permuted copy
a verifier flooding every node with malformed messages, and one asking each contributor again and
again for evaluations."""

from __future__ import annotations

import pytest
from adversarial_plans import _c, _v

from coopml.sim.lifecycle import run_in_process, tiny_plan


@pytest.mark.timeout(1800)
def test_value_test_rejects_a_permuted_copy_and_buys_new_classes(tmp_path):
    """A re-seller announces another contributor's model with its hidden channels permuted (same
    outputs, new hash): only one of the two is bought; a model that adds classes is bought. A
    verifier floods every node with malformed messages meanwhile: all record decisions and go on.
    Another sends each contributor two more valid requests after its own: each contributor
    evaluates one request per drawn verifier and model (without that rule: three answers each)."""
    plan = tiny_plan([_c([0, 1, 2, 3, 4], seed=7), _c([0, 1, 2, 3, 4], "CopyingContributor", same_data_as=0),
                      _c([5, 6, 7, 8, 9], seed=3)], [_v(), _v("RepeatingRequestVerifier"), _v("SpammingVerifier")])
    r = run_in_process(plan, tmp_path, node="anvil")
    status = {m.contributor: m.status for m in r.models}
    assert sorted([status["contributor1"], status["contributor2"]]) == ["REJECTED", "RELEASED"], status
    assert status["contributor3"] == "RELEASED", status
    assert_poison_recorded(tmp_path, ["initiator", "contributor1", "contributor3", "verifier1", "verifier2"])
    assert_one_answer_per_verifier(tmp_path, ["contributor1", "contributor2", "contributor3"],
                                   next(a for a, name in r.names.items() if name == "verifier2"))


def assert_one_answer_per_verifier(workdir, contributors: list[str], repeater: str) -> None:
    """Each contributor answered the repeating verifier once per model and refused its repeats."""
    from coopml.roles.agent import InboxMessage
    from coopml.roles.messages import MessageKind
    from coopml.roles.state import AgentState
    from coopml.sim.behaviours import RepeatingRequestVerifier
    for node in contributors:
        st = AgentState(workdir / node / "state.sqlite")
        requests = {i: m for i, m in st.facts("inbox", InboxMessage).items()
                    if m.kind == MessageKind.EVAL_REQUEST and m.sender.lower() == repeater.lower()}
        outcomes = {i: st.decision(f"inbox:{i}") for i in requests}
        st.close()
        assert len(requests) == 1 + RepeatingRequestVerifier.EXTRA_REQUESTS, (node, len(requests))
        done = [d for d in outcomes.values() if d is not None and d.outcome.value == "done"]
        refused = [d for d in outcomes.values() if d is not None and d.outcome.value == "rejected"
                   and "one request per verifier and model" in d.reason]
        assert len(done) == 1 and len(refused) == RepeatingRequestVerifier.EXTRA_REQUESTS, (node, outcomes)


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

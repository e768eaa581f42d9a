"""Hostile participants against the real agents on a real EVM, with real models and real CKKS
verification (docs/threat-model.md). Each scenario is one small task with several attackers at
once; the assertions are the properties, read from the chain. This file: a re-seller's permuted copy
a verifier flooding every node with malformed messages, and one asking each contributor for more
evaluations than its share."""

from __future__ import annotations

import pytest
from adversarial_plans import _c, _v

from coopml.sim.lifecycle import run_in_process, tiny_plan


@pytest.mark.timeout(1800)
def test_value_test_rejects_a_permuted_copy_and_buys_new_classes(tmp_path):
    """A re-seller announces another contributor's model with its hidden channels permuted (same
    outputs, new hash): only one of the two is bought; a model that adds classes is bought. A
    verifier floods every node with malformed messages meanwhile: all record decisions and go on.
    Another asks each contributor under a ring 8x larger than offered, then twice more under the
    offered one: each contributor refuses all three (one request per drawn verifier and model, only
    under its offer; without the rules it answers all three, or the first)."""
    plan = tiny_plan([_c([0, 1, 2, 3, 4], seed=7), _c([0, 1, 2, 3, 4], "CopyingContributor", same_data_as=0),
                      _c([5, 6, 7, 8, 9], seed=3)], [_v(), _v("GreedyVerifier"), _v("SpammingVerifier")])
    r = run_in_process(plan, tmp_path, node="anvil")
    status = {m.contributor: m.status for m in r.models}
    assert sorted([status["contributor1"], status["contributor2"]]) == ["REJECTED", "RELEASED"], status
    assert status["contributor3"] == "RELEASED", status
    assert_poison_recorded(tmp_path, ["initiator", "contributor1", "contributor3", "verifier1", "verifier2"])
    assert_one_answer_per_verifier(tmp_path, ["contributor1", "contributor2", "contributor3"],
                                   next(a for a, name in r.names.items() if name == "verifier2"))


def assert_one_answer_per_verifier(workdir, contributors: list[str], greedy: str) -> None:
    """Each contributor refused the greedy verifier's request under a larger ring, then its
    repeats under the offered one."""
    from coopml.roles.agent import InboxMessage
    from coopml.roles.messages import MessageKind
    from coopml.roles.state import AgentState
    from coopml.sim.behaviours import GreedyVerifier
    for node in contributors:
        st = AgentState(workdir / node / "state.sqlite")
        requests = {i: m for i, m in st.facts("inbox", InboxMessage).items()
                    if m.kind == MessageKind.EVAL_REQUEST and m.sender.lower() == greedy.lower()}
        decisions = [st.decision(f"inbox:{i}") for i in requests]
        st.close()
        why = sorted("ring" if "parameters other than offered" in d.reason else
                     "repeat" if "one request per verifier and model" in d.reason else d.reason
                     for d in decisions if d is not None and d.outcome.value == "rejected")
        assert len(requests) == 1 + GreedyVerifier.EXTRA_REQUESTS, (node, len(requests))
        assert why == ["repeat"] * GreedyVerifier.EXTRA_REQUESTS + ["ring"], (node, decisions)


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

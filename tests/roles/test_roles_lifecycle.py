"""End-to-end lifecycle with real training, real IVHE, a real EVM and real content addressing.

In-process runs (all agents on one embedded chain, stepped in turn) check protocol outcomes;
tests/roles/test_roles_processes.py runs the agents as separate processes and kills them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from coopml.roles.state import AgentState
from coopml.sim.lifecycle import table3_plan, run_in_process


def _reduced(**initiator):
    return table3_plan(reduced=True, commit_window=120, reveal_window=20, release_window=120, **initiator)


@pytest.fixture(scope="module")
def random_and_flip(tmp_path_factory):
    """Contributor 3 uploads random weights, contributor 4 a malformed package; verifier 3 always
    votes the opposite of its finding."""
    plan = _reduced(max_models=4)
    plan.contributors[2].behaviour = "random"
    plan.contributors.append(plan.contributors[0].model_copy(update={"behaviour": "garbage", "slot": 7}))
    plan.verifiers = ["honest", "honest", "flip"]
    return run_in_process(plan, tmp_path_factory.mktemp("lifecycle-a"))


def test_honest_models_bought_random_model_rejected(random_and_flip):
    r = random_and_flip
    by_name = {m.contributor: m for m in r.models}
    assert by_name["contributor1"].status == "RELEASED" and by_name["contributor2"].status == "RELEASED"
    assert by_name["contributor3"].status == "REJECTED"
    assert by_name["contributor4"].status == "REJECTED"       # malformed upload: no verifier crashed on it
    # the dishonest verifier voted against every honest finding and changed no outcome
    for m in r.models:
        assert m.votes["verifier3"] != m.votes["verifier1"] == m.votes["verifier2"]
    assert r.slashed.get("contributor3") == "model rejected"


def test_payments(random_and_flip):
    r = random_and_flip
    # reward 1 ETH + deposit 0.1 back, once each; the rejected contributor gets nothing back
    assert r.withdrawn_eth["contributor1"] == pytest.approx(1.1)
    assert r.withdrawn_eth["contributor2"] == pytest.approx(1.1)
    assert "contributor3" not in r.withdrawn_eth
    # each verifier: deposit 0.1 + fee 0.1 per model it judged (all 3 selected for every model)
    for v in ("verifier1", "verifier2", "verifier3"):
        assert r.withdrawn_eth[v] == pytest.approx(0.5)


def test_metamodel_improves_with_bought_models(random_and_flip):
    hist = random_and_flip.fusion_history
    assert [h["models"] for h in hist] == [1, 2]
    assert hist[-1]["test_accuracy"] > hist[0]["test_accuracy"]
    assert hist[-1]["test_accuracy"] > 0.6   # reduced run: 400 images, 6 epochs, 7 of 10 labels each


def _all_files(root: Path):
    return [p for p in root.rglob("*") if p.is_file()]


def test_secret_key_never_leaves_the_initiator(random_and_flip):
    r = random_and_flip
    from coopml.he import from_bytes
    sk = (r.workdir / "initiator" / "secret" / "he_secret_key").read_bytes()
    t_bytes = from_bytes(sk, expect="secret-key").t.tobytes()
    for path in _all_files(r.workdir):
        if path.is_relative_to(r.workdir / "initiator"):
            continue
        data = path.read_bytes()
        assert sk not in data and t_bytes not in data, f"secret key material found in {path}"


def test_only_the_initiator_holds_plaintext_models_and_only_after_payment(random_and_flip):
    r = random_and_flip
    from coopml.models import load_model
    # Verifiers and other contributors hold no model file of anyone else.
    for name in ("verifier1", "verifier2", "verifier3"):
        assert not list((r.workdir / name).rglob("*.safetensors"))
    # The initiator decrypted exactly the models the contract released (paid), nothing else.
    state = AgentState(r.workdir / "initiator" / "state.sqlite")
    try:
        released = {int(m) for m in state.facts("released")}
        decrypted = {int(p.stem.removeprefix("model")) for p in (r.workdir / "initiator" / "models").glob("*.safetensors")}
    finally:
        state.close()
    assert decrypted == released == {m.model_id for m in r.approved()}
    for mid in decrypted:
        load_model(r.workdir / "initiator" / "models" / f"model{mid}.safetensors")


def test_copied_model_rejected_withheld_key_forfeited_silent_verifier_slashed(tmp_path):
    plan = _reduced(max_models=3)
    plan.contributors = plan.contributors[:2]
    plan.contributors[1].behaviour = "withhold"    # approved, then never releases its key
    plan.contributors.append(plan.contributors[0].model_copy(update={"behaviour": "copy", "slot": 7}))
    # 4 registered, 3 drawn per model: the pool must stay >= 3 after the silent one is slashed
    plan.verifiers = ["honest", "honest", "silent", "honest"]
    r = run_in_process(plan, tmp_path)
    by_name = {m.contributor: m for m in r.models}
    assert by_name["contributor1"].status == "RELEASED"
    assert by_name["contributor2"].status == "FORFEITED"           # release window ran out
    assert r.slashed.get("contributor2") == "key not released"
    assert "contributor2" not in r.withdrawn_eth                   # deposit and reward went back
    assert by_name["contributor3"].status == "REJECTED"            # re-sold, lightly perturbed copy
    assert r.slashed.get("verifier3") == "vote not revealed"   # drawn for some model, never revealed
    assert "verifier3" not in r.withdrawn_eth
    # the initiator never got model 2's key, so the MetaModel holds contributor 1's model only
    assert [h["models"] for h in r.fusion_history] == [1]
    assert not (r.workdir / "initiator" / "models" / f"model{by_name['contributor2'].model_id}.safetensors").exists()

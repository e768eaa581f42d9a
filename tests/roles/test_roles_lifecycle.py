"""An honest task end to end, in one process: real training, real CKKS verification, the real
contract on the embedded EVM, real content addressing. Checks outcomes, payments, the MetaModel,
and what each node ends up holding (confidentiality is a property of the files on disk and in the
shared store, so it is checked there, byte for byte)."""

from __future__ import annotations

import stat
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

from coopml.sim.lifecycle import ContributorPlan, run_in_process, tiny_plan

HONEST = "coopml.roles.contributor:Contributor"


@pytest.fixture(scope="module")
def honest_run(tmp_path_factory):
    # three contributors with disjoint classes: each one adds value, so each one is bought
    plan = tiny_plan([ContributorPlan(labels=labels, n_train=300, epochs=3, seed=i, agent=HONEST)
                      for i, labels in enumerate([[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]])])
    return run_in_process(plan, tmp_path_factory.mktemp("lifecycle"))   # the default: the in-process py-evm chain


def test_every_honest_model_is_bought_and_paid_once(honest_run):
    r = honest_run
    assert sorted(m.status for m in r.models) == ["RELEASED"] * 3
    for m in r.models:
        # each verifier judges on its own images (300 each, models trained 3 epochs): a majority decides
        assert m.approve >= 2 and m.approve + m.reject + m.abstain == 3, m
    for c in ("contributor1", "contributor2", "contributor3"):
        assert r.withdrawn_eth[c] == pytest.approx(1.1)          # reward + deposit back
    for v in ("verifier1", "verifier2", "verifier3"):
        assert r.withdrawn_eth[v] == pytest.approx(0.1 + 3 * 0.1)   # deposit back + a fee per judged model
    assert r.total_burnt_eth == 0 and not r.burnt
    # the initiator escrowed 3 x (reward + 3 fees) and spent all of it: nothing back
    assert r.withdrawn_eth.get("initiator", 0.0) == pytest.approx(0.0)


def test_metamodel_grows_with_each_bought_model(honest_run):
    hist = honest_run.fusion_history
    assert [len(h["members"]) for h in hist][-1] == 3
    accs = [h["test_accuracy"] for h in hist]
    assert accs[-1] > 0.6 and accs[-1] >= accs[0]       # 3 disjoint label sets, 300 images each
    assert Path(hist[-1]["path"]).is_file()


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def _holders(r, needle: bytes) -> set[str]:
    """Which node directories (or the shared store) hold `needle` anywhere in their files."""
    found = set()
    for p in _files(r.workdir):
        if needle in p.read_bytes():
            found.add(p.relative_to(r.workdir).parts[0])
    return found


def test_model_weights_stay_with_their_owner_until_bought(honest_run):
    """The verifiers judged every model without its weights: no verifier's files and nothing in the
    shared store hold a single weight tensor of any contributor (the store holds the sealed envelope)."""
    r = honest_run
    for c in ("contributor1", "contributor2", "contributor3"):
        assert stat.S_IMODE((r.workdir / c).stat().st_mode) == 0o700      # each node's workdir: owner only
        path = next((r.workdir / c / "model").rglob("*.safetensors"))
        with safe_open(str(path), "pt") as f:
            for name in f.keys():  # noqa: SIM118 - a safetensors file handle, not a dict
                t = f.get_tensor(name)
                if t.numel() < 16:
                    continue
                needle = t.flatten()[:16].numpy().tobytes()
                holders = _holders(r, needle)
                assert not {h for h in holders if h.startswith("verifier")}, (c, name, holders)
                assert "store" not in holders, (c, name)
                assert not {h for h in holders if h.startswith("contributor") and h != c}, (c, name, holders)


def test_verifier_secret_keys_stay_with_the_verifier(honest_run):
    """Each verifier's CKKS secret keys (one per judged model) and its sealing key are on its own
    disk only, 0600: no contributor, no initiator and nothing in the store holds their bytes."""
    from coopml.he.ckks import QueryKey
    from coopml.he.ckks._seal import save_bytes
    r = honest_run
    for v in ("verifier1", "verifier2", "verifier3"):
        secret_dir = r.workdir / v / "secret"
        keys = sorted(secret_dir.glob("ckks_key_*"))
        assert len(keys) == 3, keys
        for p in _files(secret_dir):
            assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
        for p in keys:
            sk = save_bytes(QueryKey.from_bytes(p.read_bytes()).secret_key)
            assert _holders(r, sk[len(sk) // 2: len(sk) // 2 + 64]) == {v}, p
        box = (secret_dir / "box_key").read_bytes()
        assert _holders(r, box) == {v}


def test_plaintext_mode_trusts_the_verifiers_and_says_so(tmp_path):
    """A task may choose plaintext verification (models CKKS cannot evaluate, e.g. ONNX graphs): the
    key is sealed to each drawn verifier, who checks it against the on-chain commitment and runs the
    model in the clear. It works end to end, and the verifiers do hold the weights: the mode's
    documented cost (docs/threat-model.md)."""
    plan = tiny_plan([ContributorPlan(labels=labels, n_train=300, epochs=3, seed=i, agent=HONEST)
                      for i, labels in enumerate([[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]])],
                     verification={"mode": "plaintext"})
    r = run_in_process(plan, tmp_path, node="anvil")
    assert sorted(m.status for m in r.models) == ["RELEASED", "RELEASED"], r.models
    assert len(r.fusion_history[-1]["members"]) == 2
    path = next((r.workdir / "contributor1" / "model").rglob("*.safetensors"))
    with safe_open(str(path), "pt") as f:
        t = f.get_tensor(next(n for n in f.keys() if f.get_tensor(n).numel() >= 16))  # noqa: SIM118
    # the verifiers decrypted the model in memory; they never write another node's weights to disk
    assert not {h for h in _holders(r, t.flatten()[:16].numpy().tobytes()) if h.startswith("verifier")}


def _first_layer_weight(r, contributor: str):
    import torch
    path = next((r.workdir / contributor / "model").rglob("*.safetensors"))
    with safe_open(str(path), "pt") as f:
        name = next(n for n in f.keys() if n.endswith("weight") and f.get_tensor(n).dim() >= 2)  # noqa: SIM118
        return f.get_tensor(name).to(torch.float64)


def test_ivhe_insecure_mode_runs_the_papers_flow(tmp_path):
    """The paper's IVHE as an explicit task option: contributors encrypt their first layer under the
    initiator's IVHE key, verifiers evaluate and the initiator decrypts their outputs. It buys honest
    models end to end; the initiator's IVHE secret key is on its disk only, 0600."""
    plan = tiny_plan([ContributorPlan(labels=labels, n_train=300, epochs=3, seed=i, agent=HONEST)
                      for i, labels in enumerate([[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]])],
                     verification={"mode": "ivhe-insecure"})
    r = run_in_process(plan, tmp_path, node="anvil")
    assert sorted(m.status for m in r.models) == ["RELEASED", "RELEASED"], r.models
    for m in r.models:
        assert m.approve >= 2, m
    assert len(r.fusion_history[-1]["members"]) == 2
    sk = r.workdir / "initiator" / "secret" / "ivhe_secret_key"
    assert stat.S_IMODE(sk.stat().st_mode) == 0o600
    raw = sk.read_bytes()
    assert _holders(r, raw[-64:]) == {"initiator"}
    # every verifier evaluated the encrypted model it was sent (kept as evidence), none the plaintext
    for v in ("verifier1", "verifier2", "verifier3"):
        assert len(list((r.workdir / v / "secret").glob("ivhe_model_*"))) == 2


def test_ivhe_insecure_mode_lets_a_verifier_decrypt_the_weights(tmp_path):
    """Why the mode is called insecure: a drawn verifier sends the initiator the model's encrypted
    first-layer weights instead of its outputs, and the initiator's decryption oracle returns them —
    exactly the contributor's scaled weights, before any payment. (CKKS mode has no such oracle.)"""
    from coopml.sim.lifecycle import VerifierPlan
    plan = tiny_plan([ContributorPlan(labels=[0, 1, 2, 3, 4], n_train=300, epochs=2, seed=0, agent=HONEST)],
                     verifiers=[VerifierPlan(n_verify=300, agent="coopml.sim.behaviours:OracleAttackingVerifier"),
                                VerifierPlan(n_verify=300), VerifierPlan(n_verify=300)],
                     verification={"mode": "ivhe-insecure"})
    r = run_in_process(plan, tmp_path, node="anvil")
    stolen = list((r.workdir / "verifier1").glob("stolen_weights_*.npy"))
    assert len(stolen) == 1, stolen
    got = np.load(stolen[0])
    w = _first_layer_weight(r, "contributor1")
    p = 128                                   # the manifest's default ivhe_p
    assert got.shape == tuple(w.shape)
    assert np.array_equal(got, np.round(w.numpy() * p).astype(np.int64))


def test_ivhe_insecure_mode_a_withholding_key_holder_cannot_burn_an_honest_deposit(tmp_path):
    """The initiator holds the IVHE key and never decrypts: verifiers abstain (the contributor did its
    part), the vote is inconclusive and the contributor's deposit comes back; nothing is burnt."""
    from coopml.sim.lifecycle import InitiatorPlan
    plan = tiny_plan([ContributorPlan(labels=[0, 1, 2, 3, 4], n_train=300, epochs=2, seed=0, agent=HONEST)],
                     initiator=InitiatorPlan(n_train=300, n_audit=32, fusion_epochs=3, fusion_augment=0, n_test=1000,
                                             agent="coopml.sim.behaviours:SilentInitiator"),
                     verification={"mode": "ivhe-insecure"})
    r = run_in_process(plan, tmp_path, node="anvil")
    assert [m.status for m in r.models] == ["INCONCLUSIVE"], r.models
    assert r.models[0].abstain == 3, r.models
    assert r.withdrawn_eth["contributor1"] == pytest.approx(0.1)       # its deposit, back
    assert r.total_burnt_eth == 0

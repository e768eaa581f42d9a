"""MetaModel fusion on real MNIST with really trained (small) contributor models."""

import numpy as np
import pytest
import torch

from coopml.fusion import FusionConfig, FusionError, LateFusion, MetaModel, fuse
from coopml.fusion.metamodel import _train_stage
from coopml.models import evaluate
from coopml.models.training import predict

FAST = FusionConfig(max_epochs=40, patience=8)


@pytest.fixture(scope="module")
def setup(fusion_members):
    return fusion_members


def _labels(shards, *names):
    return [shards[n].spec.labels for n in names]


def test_strategy_ii_initial_structure_is_eqs_9_and_10(setup):
    shards, models, _ = setup
    meta = MetaModel([models["low"], models["mixed"]], _labels(shards, "low", "mixed"), "II")
    assert meta.feature_dim == 784 + 500 and meta.hidden_dim == 5 + 6
    A, B = meta.A.detach(), meta.B.detach()
    assert A.shape == (1284, 11) and B.shape == (11, 10)
    assert torch.all(A[:784, 5:] == 0) and torch.all(A[784:, :5] == 0)       # off-diagonal blocks
    assert torch.all(A[:784, :5] != 0) and torch.all(A[784:, 5:] != 0)       # random diagonal blocks W_i
    expected_B = torch.zeros(11, 10)
    for k, c in enumerate((0, 1, 2, 3, 4, 0, 2, 4, 6, 8, 9)):                  # 'identity' per model
        expected_B[k, c] = 1
    assert torch.equal(B, expected_B)


def test_strategy_ii_full_label_b_is_stacked_identities(setup):
    _, models, _ = setup
    meta = MetaModel([models["low"], models["high"]], [None, None], "II")
    assert torch.equal(meta.B.detach(), torch.cat([torch.eye(10), torch.eye(10)]))


def test_stage_one_trains_only_diagonal_blocks(setup):
    shards, models, _ = setup
    meta = MetaModel([models["low"], models["high"]], _labels(shards, "low", "high"), "II", FAST)
    B0 = meta.B.detach().clone()
    A0 = meta.A.detach().clone()
    report = meta.fit(shards["initiator"].train, shards["initiator"].verify)
    assert [s["gamma"] for s in report.stages] == [0.0, 1.0]
    assert not torch.equal(meta.B.detach(), B0)                          # stage 2 trains B too
    # Re-run stage 1 alone from the initial weights: off-diagonal A and all of B must not move.
    meta2 = MetaModel([models["low"], models["high"]], _labels(shards, "low", "high"), "II", FAST)
    meta2.gamma = 0.0
    x, y = shards["initiator"].train.tensors()
    f = meta2.member_features(x)
    _train_stage(meta2.heads[0], [meta2.A, meta2.a_bias], f, y, f, y, FAST, 0, FAST.max_epochs)
    assert torch.all(meta2.A[:784, 5:] == 0) and torch.all(meta2.A[784:, :5] == 0)
    assert torch.equal(meta2.B.detach(), B0)
    assert not torch.equal(meta2.A.detach()[:784, :5], A0[:784, :5])


def test_gamma_zero_output_is_sum_of_per_model_blocks(setup):
    """Eqs. 11-12 with gamma = 0: class c's logit is the sum over the models that know c."""
    shards, models, _ = setup
    meta = MetaModel([models["low"], models["mixed"]], _labels(shards, "low", "mixed"), "II")
    with torch.no_grad():
        meta.A[:784, 5:] = 1.0   # off-diagonal weights that gamma = 0 must ignore
        meta.B[0, 7] = 5.0
        meta.a_bias.uniform_(-1, 1)
    meta.gamma = 0.0
    x, _ = shards["initiator"].verify.tensors()
    f = meta.member_features(x[:64])
    out = meta.head(f)
    h_low = f[:, :784] @ meta.A[:784, :5] + meta.a_bias[:5]
    h_mix = f[:, 784:] @ meta.A[784:, 5:] + meta.a_bias[5:]
    manual = torch.zeros(64, 10) + meta.b_bias
    manual[:, [0, 1, 2, 3, 4]] += h_low
    manual[:, [0, 2, 4, 6, 8, 9]] += h_mix
    assert torch.allclose(out, manual, atol=1e-5)


def test_init_from_heads_reproduces_member_before_training(setup):
    shards, models, _ = setup
    cfg = FusionConfig(init_from_heads=True, max_epochs=1)
    meta = MetaModel([models["low"]], [None], "II", cfg)
    x, _ = shards["initiator"].train.tensors()
    f = meta.raw_features(x)
    meta.feat_mean, meta.feat_std = f.mean(0), f.std(0).clamp_min(1e-3)
    head = models["low"].head
    meta.heads[0].init_from_heads([(head.weight, head.bias)], meta.feat_mean, meta.feat_std)
    meta.gamma = 0.0
    with torch.no_grad():
        assert torch.allclose(meta(x[:100]), models["low"](x[:100]), atol=1e-3)


@pytest.mark.parametrize("strategy", ["I", "II"])
def test_fusion_beats_every_member_and_late_fusion(setup, strategy):
    shards, models, test = setup
    names = ("low", "high", "mixed")
    members = [models[n] for n in names]
    meta = fuse(members, shards["initiator"].train, shards["initiator"].verify, strategy, FAST,
                labels=_labels(shards, *names))
    acc = evaluate(meta, test)
    assert acc > 0.75
    assert all(acc > evaluate(m, test) + 0.2 for m in members)       # members only know part of the labels
    assert acc > evaluate(LateFusion(members, _labels(shards, *names)), test)
    assert meta.fit_report.stages[-1]["gamma"] == 1.0
    assert len(meta.fit_report.stages) == (2 if strategy == "II" else 1)
    assert all(not p.requires_grad for m in members for p in m.parameters())   # members stay frozen


def test_refit_on_all_retrains_on_train_and_val_for_the_chosen_epochs(setup):
    shards, models, test = setup
    init = shards["initiator"]
    names = ("low", "high", "mixed")
    members = [models[n] for n in names]
    plain = fuse(members, init.train, init.verify, "II", FAST, labels=_labels(shards, *names))
    refit = fuse(members, init.train, init.verify, "II", FAST.model_copy(update={"refit_on_all": True}),
                 labels=_labels(shards, *names))
    # the selection pass is identical (same seed), so the reports agree...
    assert refit.fit_report.stages == plain.fit_report.stages
    # ...but the final weights come from a second pass that also saw `val`
    assert not torch.equal(refit.A.detach(), plain.A.detach())
    assert evaluate(refit, init.verify) > evaluate(plain, init.verify)
    assert evaluate(refit, test) > evaluate(plain, test) - 0.02 and evaluate(refit, test) > 0.75


def test_add_model_extends_and_keeps_trained_blocks(setup):
    shards, models, test = setup
    init = shards["initiator"]
    meta = fuse([models["low"]], init.train, init.verify, "II", FAST, labels=_labels(shards, "low"))
    acc1 = evaluate(meta, test)
    block = meta.A.detach()[:, :5].clone()
    meta._append(models["high"], shards["high"].spec.labels)
    assert meta.hidden_dim == 10 and meta.feature_dim == 784 * 2
    assert torch.equal(meta.A.detach()[:784, :5], block)                 # existing block kept
    assert torch.all(meta.A.detach()[784:, :5] == 0) and torch.all(meta.A.detach()[:784, 5:] == 0)
    meta.fit(init.train, init.verify)
    acc2 = evaluate(meta, test)
    meta.add_model(models["mixed"], shards["mixed"].spec.labels)          # refits on the remembered data
    assert len(meta.members) == 3 and meta.hidden_dim == 16
    acc3 = evaluate(meta, test)
    assert acc2 > acc1 + 0.05 and acc3 > 0.75


def test_late_fusion_single_member_is_member_restricted_argmax(setup):
    shards, models, test = setup
    labs = shards["mixed"].spec.labels
    x, _ = test.tensors()
    late = LateFusion([models["mixed"]], [labs])
    assert torch.equal(predict(late, x), predict(models["mixed"], x, labs))


def test_fusion_errors_are_clear(setup):
    shards, models, _ = setup
    init = shards["initiator"]
    with pytest.raises(FusionError, match="at least one"):
        fuse([], init.train, init.verify)
    with pytest.raises(FusionError, match="label set"):
        MetaModel([models["low"]], [(3, 3)])
    with pytest.raises(FusionError, match="strategy"):
        MetaModel([models["low"]], None, "III")
    with pytest.raises(FusionError, match="label sets"):
        MetaModel([models["low"]], [None, None])
    with pytest.raises(FusionError, match="non-empty"):
        fuse([models["low"]], init.train.subset(np.arange(0)), init.verify)

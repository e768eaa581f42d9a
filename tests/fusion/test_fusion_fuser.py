"""The incremental fuser (cached features, warm starts, cancellation, a background worker)
and the optional block branch, on the shared small real members."""

import pytest
import torch

from coopml.fusion import (
    FeatureCache,
    FusionCancelled,
    FusionConfig,
    FusionWorker,
    IncrementalFuser,
    MetaModel,
    TorchMember,
    load_metamodel,
    save_metamodel,
)
from coopml.models import evaluate

FAST = FusionConfig(max_epochs=12, patience=3, batch_size=200, feature_activation="relu", augment_copies=1,
                    refit_on_all=True, warm_max_epochs=6)


class Counting(TorchMember):
    """A torch member that counts how many inputs it was asked to featurise."""

    seen = 0

    def features(self, x):
        self.seen += len(x)
        return super().features(x)


class Broken:
    feature_dim, labels = 7, (0, 1)

    def features(self, x):
        return torch.zeros(len(x), 3)   # not the declared width


def _members(fusion_members):
    shards, models, test = fusion_members
    return ([Counting(models[n], shards[n].spec.labels) for n in ("low", "high", "mixed")],
            shards["initiator"], test)


def test_incremental_fuser_caches_features_warm_starts_and_survives_cancellation(fusion_members, tmp_path):
    (low, high, mixed), init, test = _members(fusion_members)
    fuser = IncrementalFuser(init.train, init.verify, "II", FAST)
    fuser.add(low)
    meta1 = fuser.fit()
    n_inputs = 2 * len(init.train) + 2 * len(init.verify)      # clean + 1 augmented copy of each
    assert low.seen == n_inputs and not fuser.history[0].warm_start
    acc1 = evaluate(meta1, test)
    block = meta1.A.detach()[:, :5].clone()

    fuser.add(high)
    with pytest.raises(FusionCancelled):
        fuser.fit(should_stop=lambda: high.seen > 0)              # cancelled after its first feature batch
    high.seen = 0
    assert fuser.current is meta1 and len(fuser.pending) == 1     # nothing lost but that fit
    assert torch.equal(meta1.A.detach()[:, :5], block)           # the kept MetaModel was not touched

    seen = low.seen
    meta2 = fuser.fit()
    assert meta2 is not meta1 and len(meta2.members) == 2 and not fuser.pending
    assert low.seen == seen                                       # old member's features came from the cache
    assert high.seen == n_inputs
    assert fuser.history[-1].warm_start and fuser.history[-1].new_members == 1
    assert evaluate(meta2, test) > acc1 + 0.05

    # a restart: the saved MetaModel is the warm start of a new fuser
    path = save_metamodel(meta2, tmp_path / "meta.safetensors")
    again = IncrementalFuser(init.train, init.verify, "II", FAST)
    again.resume(load_metamodel(path))
    again.add(mixed, key="model9")
    meta3 = again.fit()
    assert len(meta3.members) == 3 and again.history[-1].warm_start and meta3.hidden_dim == 16
    assert load_metamodel(save_metamodel(meta3, path)).member_keys == ["m0", "m1", "model9"]


def test_worker_refits_once_per_batch_and_rejects_a_broken_member(fusion_members):
    (low, high, _), init, test = _members(fusion_members)
    fits = []
    fuser = IncrementalFuser(init.train, init.verify, "II", FAST)
    worker = FusionWorker(fuser, on_fit=lambda meta, timing: fits.append(len(meta.members)))
    try:
        worker.submit(Broken())
        worker.submit(low)
        worker.submit(high)
        meta = worker.wait(timeout=600)
        assert meta is not None and len(meta.members) == 2
        assert fits[-1] == 2 and len(fits) <= 2                   # arrivals during a fit share one refit
        assert [m for m, _ in fuser.rejected] and "shape" in fuser.rejected[0][1]
        assert evaluate(meta, test) > 0.5
        assert worker.idle()
    finally:
        worker.close()


def test_block_branch_starts_at_zero_and_is_stored(fusion_members, tmp_path):
    shards, models, test = fusion_members
    init = shards["initiator"]
    cfg = FAST.model_copy(update={"block_branch": "auto", "augment_copies": 0})
    members = [TorchMember(models["low"], shards["low"].spec.labels),
               TorchMember(models["mixed"], shards["mixed"].spec.labels)]
    meta = MetaModel(members, None, "II", cfg)
    plain = MetaModel(members, None, "II", cfg.model_copy(update={"block_branch": "none"}))
    x, _ = init.verify.tensors()
    f = meta.member_features(x[:64])
    meta.build_branches()
    head, ref = meta.fusion_heads[0], plain.fusion_heads[0]
    assert head.feature_shapes == [(16, 7, 7), None]              # Table IV maps -> conv; Table I fc -> MLP
    assert isinstance(head.branches[0][1], torch.nn.Conv2d) and isinstance(head.branches[1][0], torch.nn.Linear)
    with torch.no_grad():
        assert torch.allclose(head(f), ref(f))                     # eqs. 9-10 exactly, before training
    meta.fit(init.train, init.verify)
    assert evaluate(meta, test) > 0.75
    again = load_metamodel(save_metamodel(meta, tmp_path / "b.safetensors"))
    xt, _ = test.tensors()
    assert torch.equal(again.predict(xt[:500]), meta.predict(xt[:500]))


def test_affine_members_features_as_one_matmul(fusion_members):
    """A Table IV member (conv, avgpool only) is one affine map: the cache computes its features
    with a matmul (equal up to rounding) and runs the member on the unit inputs and a probe only;
    a member with a nonlinearity (Table I CNN) runs over every input as before."""
    (low, _, mixed), init, _ = _members(fusion_members)
    assert low.affine_map((1, 28, 28)) is not None and mixed.affine_map((1, 28, 28)) is None
    cfg = FAST.model_copy(update={"affine_features": True})
    fast, slow = IncrementalFuser(init.train, init.verify, "II", cfg).cache, FeatureCache(init.train, init.verify, FAST)
    n_inputs = 2 * len(init.train) + 2 * len(init.verify)
    for m in (low, mixed):
        m.seen = 0
        fast.add(m)
    assert low.seen == 785 + 64                                   # unit inputs + the agreement probe
    assert mixed.seen == n_inputs
    slow.add(low)
    for got, want in ((fast._entries[0].train, slow._entries[0].train), (fast._entries[0].val, slow._entries[0].val)):
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))


def test_epoch_buffers_match_the_plain_loop():
    """`_epoch` gathers into reused buffers: the same weights as gathering fresh tensors."""
    from coopml.fusion.metamodel import DROPOUT_BANK, FusionHead, _dropout_bank, _epoch

    def plain(head, opt, gen, ftr, ytr, cfg):
        head.train()
        bank = _dropout_bank(ftr.shape[1], cfg.feature_dropout, gen)
        perm = torch.randperm(len(ftr), generator=gen)
        for i in range(0, len(ftr), cfg.batch_size):
            idx = perm[i:i + cfg.batch_size]
            mask = bank[torch.randint(0, DROPOUT_BANK, (len(idx),), generator=gen)]
            loss = torch.nn.functional.cross_entropy(head(ftr[idx], mask), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    cfg = FusionConfig(batch_size=64, feature_dropout=0.3)
    ftr, ytr = torch.randn(300, 40), torch.randint(0, 4, (300,))
    heads = []
    for run in (_epoch, plain):
        head = FusionHead("II", 4, cfg, seed=0)
        head.append(20, (0, 1, 2, 3))
        head.append(20, (0, 1))
        opt = torch.optim.Adam(head.parameters(), lr=1e-2)
        gen = torch.Generator().manual_seed(1)
        for _ in range(3):
            run(head, opt, gen, ftr, ytr, cfg)
        heads.append(head)
    assert all(torch.equal(a, b) for a, b in zip(heads[0].state_dict().values(), heads[1].state_dict().values()))


def test_joint_branch_starts_at_zero_grows_with_members_and_is_stored(fusion_members, tmp_path):
    """The joint branch convolves all members' maps stacked (two Table IV members: 32 channels
    of 7x7), adds nothing before training, keeps its function when a member joins (new input
    channels and hidden units start at zero), survives the MetaModel file, and falls back to an
    MLP over f_c when a member has no maps (Table I)."""
    shards, models, test = fusion_members
    init = shards["initiator"]
    cfg = FAST.model_copy(update={"joint_branch": "auto", "joint_width": 8, "augment_copies": 0})
    low, high = (TorchMember(models[k], shards[k].spec.labels) for k in ("low", "high"))
    meta = MetaModel([low], None, "II", cfg)
    meta.fit(init.train, init.verify)
    head = meta.fusion_heads[0]
    assert head.joint is not None and head.joint.maps == (16, 7, 7)
    assert head.joint.last.weight.abs().sum() > 0                 # trained in stage 2
    x, _ = init.verify.tensors()
    f1 = meta.member_features(x[:64])
    with torch.no_grad():
        before = head.joint(f1)
    meta._append(high)
    high.features(x[:1])                                          # its map shape is known once it ran
    meta.build_branches()
    grown = meta.fusion_heads[0].joint
    assert grown is not None and grown.maps == (32, 7, 7) and grown.last.out_features == head.hidden_dim
    with torch.no_grad():
        after = grown(torch.cat([f1, torch.randn(64, 784)], 1) * torch.cat([torch.ones(784), torch.zeros(784)]))
    assert torch.allclose(after[:, :before.shape[1]], before, atol=1e-5)
    assert torch.equal(after[:, before.shape[1]:], torch.zeros(64, after.shape[1] - before.shape[1]))
    meta.fit(init.train, init.verify)
    assert evaluate(meta, test) > 0.75
    again = load_metamodel(save_metamodel(meta, tmp_path / "j.safetensors"))
    xt, _ = test.tensors()
    assert torch.equal(again.predict(xt[:500]), meta.predict(xt[:500]))
    mixed = MetaModel([low, TorchMember(models["mixed"], shards["mixed"].spec.labels)], None, "II", cfg)
    mixed.member_features(x[:8])
    mixed.build_branches()
    joint = mixed.fusion_heads[0].joint
    assert joint is not None and joint.maps is None and isinstance(joint.inner, torch.nn.Linear)
    # FusionConfig.spatial(): convs where members have maps, nothing for flat members
    maps_only = MetaModel([low, TorchMember(models["mixed"], shards["mixed"].spec.labels)], None, "II",
                          FusionConfig.spatial(augment_copies=0, max_epochs=2, patience=1))
    maps_only.build_branches()
    spatial = maps_only.fusion_heads[0]
    assert spatial.joint is None and isinstance(spatial.branches[0][1], torch.nn.Conv2d)
    assert not list(spatial.branches[1].parameters())
    f = maps_only.member_features(x[:16])
    with torch.no_grad():
        assert torch.equal(spatial.branches[1](f[:, 784:]), torch.zeros(16, len(shards["mixed"].spec.labels)))

import pytest
import torch

from coopml.data import TABLE_II, ShardSpec, make_shards
from coopml.errors import ModelFileError
from coopml.models import ARCHITECTURES, TrainConfig, build_model, evaluate, train_model


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_shapes_and_features(arch):
    m = build_model(arch, seed=0)
    x = torch.rand(3, *ARCHITECTURES[arch].input_shape)
    f = m.features(x)
    assert f.shape == (3, m.feature_dim)
    assert torch.allclose(m(x), m.head(f))


def test_table1_feature_sizes_match_paper():
    # Table I: conv3 output flattened to 392 / 784 / 784, hidden layer 500.
    for arch, flat in (("table1-c1", 392), ("table1-c2", 784), ("table1-c3", 784)):
        lin = next(mod for mod in build_model(arch).body if isinstance(mod, torch.nn.Linear))
        assert (lin.in_features, lin.out_features) == (flat, 500)


def test_unknown_arch():
    with pytest.raises(ModelFileError, match="unknown architecture"):
        build_model("resnet")


def test_real_short_training_beats_chance(mnist_train, mnist_test):
    shard = make_shards(mnist_train, [TABLE_II[1]], seed=0, scale=0.5)["contributor1"]
    model = build_model("table1-c1", seed=0)
    res = train_model(model, shard.train, shard.verify, TrainConfig(max_epochs=4, patience=4),
                      labels=shard.spec.labels)
    own = evaluate(model, mnist_test, shard.spec.labels)
    assert res.epochs == 4 and len(res.history) == 4
    assert own > 0.85, own                 # chance among 5 labels is 20%
    assert res.history[-1][0] < res.history[0][0]  # loss went down


def test_stop_at_target(mnist_train):
    shard = make_shards(mnist_train, [ShardSpec("a", (0, 1), 200, 200)], seed=0)["a"]
    model = build_model("table4", seed=0)
    res = train_model(model, shard.train, shard.verify,
                      TrainConfig(max_epochs=50, target_accuracy=0.9, stop_at_target=True), labels=(0, 1))
    assert res.met_target and res.epochs < 50 and res.best_val_accuracy >= 0.9


def test_restores_best_weights(mnist_train):
    shard = make_shards(mnist_train, [ShardSpec("a", (3, 5, 8), 150, 150)], seed=2)["a"]
    model = build_model("table4", seed=1)
    res = train_model(model, shard.train, shard.verify, TrainConfig(max_epochs=6, patience=6), labels=(3, 5, 8))
    assert evaluate(model, shard.verify, (3, 5, 8)) == pytest.approx(res.best_val_accuracy)


def test_refit_on_all_retrains_from_the_start_for_the_best_epoch_count(mnist_train):
    shard = make_shards(mnist_train, [ShardSpec("a", (3, 5, 8), 150, 150)], seed=2)["a"]
    cfg = TrainConfig(max_epochs=6, patience=6, seed=3)
    plain, refit = build_model("table4", seed=1), build_model("table4", seed=1)
    res = train_model(plain, shard.train, shard.verify, cfg, labels=(3, 5, 8))
    res2 = train_model(refit, shard.train, shard.verify, cfg.model_copy(update={"refit_on_all": True}),
                       labels=(3, 5, 8))
    assert res2.best_epoch == res.best_epoch and res2.history == res.history   # same selection pass
    assert not torch.equal(plain.head.weight, refit.head.weight)
    # the refit model has now trained on the verification images too
    assert evaluate(refit, shard.verify, (3, 5, 8)) > evaluate(plain, shard.verify, (3, 5, 8))


def test_augment_distorts_each_image_but_keeps_the_digit(mnist_train):
    from coopml.data import random_affine
    x, _ = mnist_train.subset(torch.arange(64).numpy()).tensors()
    out = random_affine(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and not torch.equal(out, x)
    moved = (out - x).abs().flatten(1).sum(1)
    assert moved.min() > 0 and len(set(moved.round(decimals=2).tolist())) > 32   # a different distortion per image
    assert (out.flatten(1).sum(1) / x.flatten(1).sum(1)).sub(1).abs().max() < 0.35   # ink roughly preserved


class ViewingCNN(torch.nn.Module):
    """A user model that `.view`s an activation: cannot run channels-last, must still train."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4 * 28 * 28, 10)

    def forward(self, x):
        h = self.conv(x)
        return self.fc(h.view(h.size(0), -1))


def test_training_gives_contiguous_weights_back_and_keeps_models_that_cannot_run_channels_last(mnist_train, tmp_path):
    from coopml.models import save_model
    from coopml.models.training import fast_layout

    shard = make_shards(mnist_train, [ShardSpec("a", (0, 1), 100, 100)], seed=0)["a"]
    x = shard.train.tensors()[0][:2]
    cnn = build_model("table4", seed=0)
    with fast_layout(cnn, x):
        assert cnn.body[2].weight.is_contiguous(memory_format=torch.channels_last)
        assert not cnn.body[2].weight.is_contiguous()
    assert all(p.is_contiguous() for p in cnn.parameters())
    res = train_model(cnn, shard.train, shard.verify, TrainConfig(max_epochs=2, patience=2), labels=(0, 1))
    assert res.best_val_accuracy > 0.9 and all(p.is_contiguous() for p in cnn.parameters())
    save_model(cnn, tmp_path / "m.safetensors", [0, 1])   # safetensors refuses non-contiguous tensors

    viewing = ViewingCNN()
    with fast_layout(viewing, x):
        assert viewing.conv.weight.is_contiguous()          # left in the default layout
    train_model(viewing, shard.train, shard.verify, TrainConfig(max_epochs=1, patience=1), labels=(0, 1))


def test_fast_layout_probes_a_model_once():
    """Fusion members call `fast_layout` per chunk of images: the probe pass that decides the layout
    runs once per model, and a model that failed it is not probed (nor converted) again."""
    from coopml.models.training import fast_layout

    x = torch.rand(2, 1, 28, 28)
    for model, expect_cl in ((build_model("table4", seed=0), True), (ViewingCNN(), False)):
        calls = []
        model.register_forward_pre_hook(lambda *_, c=calls: c.append(1))
        for _ in range(3):
            with fast_layout(model, x):
                weight = [p for p in model.parameters() if p.dim() == 4][-1]
                assert weight.is_contiguous() != expect_cl, weight.shape   # channels-last, or left alone
        assert len(calls) == 1, type(model).__name__

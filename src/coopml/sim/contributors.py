"""Case Study I contributors: the three Table I CNNs trained on the Table II label shards."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from coopml.data import TABLE_II, load_dataset, make_shards
from coopml.models import FeatureModel, TrainConfig, build_model, evaluate, train_model

TABLE1_ARCHS = {"contributor1": "table1-c1", "contributor2": "table1-c2", "contributor3": "table1-c3"}
EpochCallback = Callable[[int, float, float], None]


@dataclass
class ContributorResult:
    name: str
    arch: str
    labels: tuple[int, ...]
    epochs: int
    val_accuracy: float     # held-out local data, own labels
    own_accuracy: float     # MNIST test set restricted to own labels
    all_accuracy: float     # MNIST test set, all 10 classes
    model: FeatureModel


def train_table1_contributors(epochs: int = 30, seed: int = 0, scale: float = 1.0, patience: int = 5,
                              track: Callable[[str, int], EpochCallback] | None = None,
                              dataset: str = "mnist") -> list[ContributorResult]:
    shards = make_shards(load_dataset(dataset, "train"), TABLE_II, seed=seed, scale=scale)
    test = load_dataset(dataset, "test")
    results = []
    for i, (name, arch) in enumerate(TABLE1_ARCHS.items()):
        shard = shards[name]
        labels = shard.spec.labels
        model = build_model(arch, seed + i)
        cfg = TrainConfig(max_epochs=epochs, patience=patience, seed=seed + i)
        res = train_model(model, shard.train, shard.verify, cfg, labels=labels,
                          on_epoch=track(name, epochs) if track else None)
        results.append(ContributorResult(name, arch, labels, res.epochs, res.best_val_accuracy,
                                         evaluate(model, test, labels), evaluate(model, test), model))
    return results

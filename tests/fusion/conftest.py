"""Small real members shared by the fusion tests: two Table IV models and one Table I CNN
trained for a few epochs on label-subset MNIST shards, and the initiator's all-label shard."""

import numpy as np
import pytest

from coopml.data import ShardSpec, make_shards
from coopml.models import TrainConfig, build_model, train_model

SPECS = (
    ShardSpec("initiator", tuple(range(10)), 1000, 1000),
    ShardSpec("low", (0, 1, 2, 3, 4), 1000, 500),
    ShardSpec("high", (5, 6, 7, 8, 9), 1000, 500),
    ShardSpec("mixed", (0, 2, 4, 6, 8, 9), 1000, 500),
)


@pytest.fixture(scope="session")
def fusion_members(mnist_train, mnist_test):
    shards = make_shards(mnist_train, SPECS, seed=1, scale=0.4)
    models = {}
    for i, (name, arch) in enumerate((("low", "table4"), ("high", "table4"), ("mixed", "table1-c1"))):
        m = build_model(arch, i)
        train_model(m, shards[name].train, shards[name].verify, TrainConfig(max_epochs=3, seed=i),
                    labels=shards[name].spec.labels)
        models[name] = m
    test = mnist_test.subset(np.arange(2000))
    return shards, models, test

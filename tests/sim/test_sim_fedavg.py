"""FedAvg: aggregation against the weighted-average formula, byte accounting, a real tiny run."""

import numpy as np
import pytest
import torch
from torch.nn.utils import parameters_to_vector

from coopml.data import ShardSpec, make_shards
from coopml.errors import CoopmlError
from coopml.models import build_model
from coopml.sim.fedavg import fedavg_aggregate, run_fedavg, state_bytes


def test_aggregate_is_sample_weighted_average():
    models = [build_model("table4", s) for s in range(3)]
    counts = [100.0, 300.0, 600.0]
    avg = fedavg_aggregate([m.state_dict() for m in models], counts)
    expected = sum((n / sum(counts)) * parameters_to_vector(m.parameters()).double() for m, n in zip(models, counts))
    out = build_model("table4")
    out.load_state_dict(avg)
    assert torch.allclose(parameters_to_vector(out.parameters()).double(), expected, atol=1e-6)
    # and it differs from the unweighted mean, so the weights really matter
    plain = sum(parameters_to_vector(m.parameters()).double() for m in models) / 3
    assert not torch.allclose(expected, plain, atol=1e-4)


def test_aggregate_of_identical_states_is_that_state_and_scale_free():
    m = build_model("table1-c1", 0)
    s = m.state_dict()
    avg = fedavg_aggregate([s, s], [1, 5])
    assert all(torch.allclose(avg[k], s[k]) for k in s)
    a = fedavg_aggregate([s, build_model("table1-c1", 1).state_dict()], [1, 3])
    b = fedavg_aggregate([s, build_model("table1-c1", 1).state_dict()], [10, 30])
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_aggregate_rejects_mismatches():
    a, b = build_model("table4", 0).state_dict(), build_model("table1-c1", 0).state_dict()
    with pytest.raises(CoopmlError, match="different parameter names"):
        fedavg_aggregate([a, b], [1, 1])
    with pytest.raises(CoopmlError, match="one weight per client"):
        fedavg_aggregate([a], [1, 1])
    with pytest.raises(CoopmlError, match="positive"):
        fedavg_aggregate([a], [0])


def test_state_bytes_is_float32_payload_plus_small_header():
    m = build_model("table1-c1", 0)
    payload = 4 * sum(p.numel() for p in m.state_dict().values())
    assert payload < state_bytes(m.state_dict()) < payload + 4096


def test_fedavg_run_learns_and_counts_bytes_each_way(mnist_train, mnist_test):
    specs = [ShardSpec(f"c{i}", tuple(range(10)), 300, 10) for i in range(2)]
    shards = make_shards(mnist_train, specs, seed=3)
    test = mnist_test.subset(np.arange(1000))
    model, res = run_fedavg("table4", [shards["c0"].train, shards["c1"].train], rounds=2, local_epochs=1,
                            test=test, seed=0)
    size = state_bytes(model.state_dict())
    assert res.bytes_down == res.bytes_up == 2 * 2 * size
    assert res.bytes_total == 8 * size
    assert len(res.round_accuracy) == 2 and res.accuracy == res.round_accuracy[-1]
    assert res.accuracy > 0.5 and res.round_accuracy[1] > res.round_accuracy[0]   # random: ~10 %


def test_fedavg_int8_ships_a_quarter_and_still_learns(mnist_train, mnist_test):
    """The like-for-like baseline for Case Study III: FedAvg with the same int8 encoding both ways."""
    shards = make_shards(mnist_train, [ShardSpec(f"c{i}", tuple(range(10)), 300, 10) for i in range(2)], seed=3)
    test = mnist_test.subset(np.arange(1000))
    clients = [shards["c0"].train, shards["c1"].train]
    _, fp32 = run_fedavg("table4", clients, rounds=1, local_epochs=1, test=test, seed=0)
    _, int8 = run_fedavg("table4", clients, rounds=1, local_epochs=1, test=test, seed=0, precision="int8")
    assert int8.precision == "int8" and int8.bytes_down == int8.bytes_up
    assert 0.2 * fp32.bytes_total < int8.bytes_total < 0.3 * fp32.bytes_total
    assert int8.accuracy > 0.5


def test_fedavg_clients_can_augment_like_contributors(mnist_train, mnist_test):
    """`augment=True` trains every client on distorted images (the recipe a contributor may use,
    offered to FedAvg's clients for a like-for-like Case Study III): same seeds, other weights,
    and it still learns."""
    shards = make_shards(mnist_train, [ShardSpec(f"c{i}", tuple(range(10)), 300, 10) for i in range(2)], seed=3)
    test = mnist_test.subset(np.arange(1000))
    clients = [shards["c0"].train, shards["c1"].train]
    plain, _ = run_fedavg("table4", clients, rounds=1, local_epochs=1, test=test, seed=0)
    again, _ = run_fedavg("table4", clients, rounds=1, local_epochs=1, test=test, seed=0)
    aug, res = run_fedavg("table4", clients, rounds=1, local_epochs=1, test=test, seed=0, augment=True)
    vec = lambda m: parameters_to_vector(m.parameters())
    assert torch.equal(vec(plain), vec(again))          # deterministic, so the difference is the augmentation
    assert not torch.allclose(vec(plain), vec(aug), atol=1e-4)
    assert res.accuracy > 0.3          # chance is 10 %; distorted images learn slower in one epoch (~45 %)

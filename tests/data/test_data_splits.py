import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coopml.data import TABLE_II, TABLE_III, ShardSpec, make_shards
from coopml.data.datasets import Dataset
from coopml.errors import DataError


def _ids(ds: Dataset) -> set[bytes]:
    return {img.tobytes() for img in ds.images}


@pytest.mark.parametrize("table", [TABLE_II, TABLE_III])
def test_paper_tables(mnist_train, table):
    shards = make_shards(mnist_train, table, seed=1)
    seen: set[bytes] = set()
    total = 0
    for spec in table:
        sh = shards[spec.name]
        for part, n in ((sh.train, spec.n_train), (sh.verify, spec.n_verify)):
            assert len(part) == n
            counts = np.bincount(part.labels, minlength=10)
            assert set(np.flatnonzero(counts)) == set(spec.labels)
            assert counts[list(spec.labels)].max() - counts[list(spec.labels)].min() <= 1  # stratified
            seen |= _ids(part)
            total += n
    # MNIST has a few duplicate images, so allow a handful of byte-equal collisions across shards.
    assert total - len(seen) <= 5


def test_seeded(mnist_train):
    a = make_shards(mnist_train, TABLE_II, seed=3)["contributor1"].train.labels
    b = make_shards(mnist_train, TABLE_II, seed=3)["contributor1"].train.labels
    c = make_shards(mnist_train, TABLE_II, seed=4)["contributor1"].train.labels
    assert np.array_equal(a, b) and not np.array_equal(a, c)


@settings(max_examples=25, deadline=None)
# at most 5 shards x 2 parts x 20 images <= the 200 images of each class in the pool
@given(st.lists(st.tuples(st.sets(st.integers(0, 9), min_size=1, max_size=10), st.integers(1, 20), st.integers(1, 20)),
                min_size=1, max_size=5), st.integers(0, 2**16))
def test_disjoint_by_index(specs, seed):
    labels = np.repeat(np.arange(10), 200)
    pool = Dataset(np.arange(len(labels), dtype=np.int64).reshape(-1, 1, 1).repeat(28, 1).repeat(28, 2), labels)
    specs = [ShardSpec(f"s{i}", tuple(sorted(ls)), a, b) for i, (ls, a, b) in enumerate(specs)]
    shards = make_shards(pool, specs, seed=seed)
    used: list[int] = []
    for spec in specs:
        for part in (shards[spec.name].train, shards[spec.name].verify):
            ids = part.images[:, 0, 0].tolist()
            assert set(part.labels.tolist()) <= set(spec.labels)
            assert all(labels[i] == lab for i, lab in zip(ids, part.labels))
            used.extend(ids)
    assert len(used) == len(set(used))


def test_errors(mnist_train):
    with pytest.raises(DataError, match="duplicate shard"):
        make_shards(mnist_train, [ShardSpec("a", (1,), 5, 5), ShardSpec("a", (2,), 5, 5)])
    with pytest.raises(DataError, match="bad label set"):
        make_shards(mnist_train, [ShardSpec("a", (11,), 5, 5)])
    with pytest.raises(DataError, match="has only"):
        make_shards(mnist_train, [ShardSpec("a", (1,), 7000, 5)])


def test_concat_keeps_order_and_refuses_other_kinds(mnist_train):
    a, b = mnist_train.subset(np.arange(5)), mnist_train.subset(np.arange(5, 12))
    both = a.concat(b)
    assert len(both) == 12 and np.array_equal(both.labels, mnist_train.labels[:12])
    assert np.array_equal(both.images, mnist_train.images[:12]) and both.spec == a.spec
    from coopml.data.fading import generate
    with pytest.raises(DataError, match="different input specs"):
        a.concat(generate(4, seed=0))

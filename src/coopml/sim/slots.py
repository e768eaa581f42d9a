"""Each simulated node's private data, drawn so that nodes never share a sample, written to files.

A simulation gives every node its data the way a real deployment would: as a pinned dataset file
(`DatasetRef`, npz with the raw samples) that the node's config names. The pool (e.g. MNIST's
training set) is shuffled once with a fixed seed and cut into as many equal slots as there are
nodes (slicing by index would not do: MNIST's even and odd indices come from visibly different
writer populations). Within a slot, label subsets are stratified and seeded (coopml.data.make_shards).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from coopml.data import Dataset, DatasetRef, ShardSpec, load_dataset, make_shards
from coopml.errors import DataError
from coopml.paths import write_private

SLOT_SEED = 20_200_517


def slot(dataset: str, index: int, total: int, split: str = "train") -> Dataset:
    pool = load_dataset(dataset, split)
    if not 0 <= index < total:
        raise DataError(f"slot {index} outside 0..{total - 1}")
    order = np.random.default_rng(SLOT_SEED).permutation(len(pool))
    return pool.subset(np.sort(np.array_split(order, total)[index]))


def node_data(dataset: str, index: int, total: int, labels: list[int] | None, n: int, seed: int) -> Dataset:
    """`n` samples of slot `index` (of `total`), stratified over `labels` (default: every class)."""
    data = slot(dataset, index, total)
    classes = tuple(sorted(labels)) if labels else tuple(range(data.num_classes))
    shard = make_shards(data, [ShardSpec("node", classes, n, 1)], seed)["node"]
    return shard.train


def write_npz(data: Dataset, path: Path) -> DatasetRef:
    buf = io.BytesIO()
    np.savez(buf, x=data.images, y=data.labels.astype(np.int64))
    write_private(path, buf.getvalue())
    return DatasetRef.pin("npz", path)


def test_images(dataset: str, n: int | None = None, start: int = 0) -> Dataset:
    test = load_dataset(dataset, "test")
    end = len(test) if n is None else start + n
    return test.subset(np.arange(start, min(end, len(test))))

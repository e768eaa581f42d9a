"""Each node's private data in a simulated deployment, drawn so that nodes never share images.

The MNIST training set is shuffled once with a fixed seed and cut into 8 equal slots (slicing by
index would not do: MNIST's even and odd indices come from visibly different writer
populations, ~10 points apart in accuracy for the same model). Slot 0 belongs to the initiator
(its own training data and the verification set it seals to verifiers), slots 1..7 to
contributors. Within a slot, shards are stratified and seeded (coopml.data.make_shards).
"""

from __future__ import annotations

import numpy as np

from coopml.data import Dataset, LabelShard, ShardSpec, load_dataset, make_shards
from coopml.errors import DataError

SLOTS = 8


SLOT_SEED = 20_200_517


def _slot(dataset: str, slot: int) -> Dataset:
    pool = load_dataset(dataset, "train")
    order = np.random.default_rng(SLOT_SEED).permutation(len(pool))
    return pool.subset(np.sort(np.array_split(order, SLOTS)[slot]))


def initiator_data(dataset: str, seed: int, n_train: int, n_val: int, n_verify: int
                   ) -> tuple[Dataset, Dataset, Dataset]:
    """(MetaModel training data, its held-out validation data, verification set for verifiers)."""
    everything = tuple(range(10))
    shards = make_shards(_slot(dataset, 0), [ShardSpec("initiator", everything, n_train, n_val),
                                             ShardSpec("verification", everything, n_verify, 10)], seed)
    return shards["initiator"].train, shards["initiator"].verify, shards["verification"].train


def contributor_data(dataset: str, seed: int, slot: int, labels: list[int], n_train: int, n_val: int) -> LabelShard:
    if not 1 <= slot < SLOTS:
        raise DataError(f"contributor slot must be 1..{SLOTS - 1}, got {slot}")
    spec = ShardSpec(f"slot{slot}", tuple(sorted(labels)), n_train, n_val)
    return make_shards(_slot(dataset, slot), [spec], seed)[spec.name]

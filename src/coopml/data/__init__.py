"""Datasets (MNIST, Fashion-MNIST) and the label-subset splits of the paper's case studies."""

from coopml.data.augment import random_affine
from coopml.data.idx import read_idx
from coopml.data.datasets import Dataset, load_dataset, data_dir
from coopml.data.splits import LabelShard, ShardSpec, make_shards, TABLE_II, TABLE_III

__all__ = [
    "random_affine", "read_idx", "Dataset", "load_dataset", "data_dir",
    "LabelShard", "ShardSpec", "make_shards", "TABLE_II", "TABLE_III",
]

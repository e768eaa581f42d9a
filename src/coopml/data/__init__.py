"""Datasets (MNIST, Fashion-MNIST, the synthetic link-power "fading" set of Case Study IV) and the
splits of the paper's case studies."""

from coopml.data.augment import random_affine
from coopml.data.idx import read_idx
from coopml.data.datasets import Dataset, load_dataset, data_dir, register_dataset
from coopml.data.fading import FadingSet, fading_sets, load_split as _load_fading
from coopml.data.splits import LabelShard, ShardSpec, make_shards, TABLE_II, TABLE_III

register_dataset("fading", _load_fading)

__all__ = [
    "random_affine", "read_idx", "Dataset", "load_dataset", "data_dir", "register_dataset",
    "FadingSet", "fading_sets",
    "LabelShard", "ShardSpec", "make_shards", "TABLE_II", "TABLE_III",
]

"""Datasets (MNIST, Fashion-MNIST, the synthetic link-power "fading" set of Case Study IV) and the
splits of the paper's case studies; the task's InputSpec, the public dataset registry and pinned
dataset files (image folder, npz, CSV, Parquet) for any other task."""

from coopml.data.augment import random_affine
from coopml.data.idx import read_idx
from coopml.data.datasets import Dataset, data_dir
from coopml.data.splits import LabelShard, ShardSpec, make_shards, TABLE_II, TABLE_III
from coopml.data.spec import FASHION_MNIST_INPUT, MNIST_INPUT, InputSpec, Normalize, Scale
from coopml.data.registry import (
    DatasetLoader, dataset_info, dataset_names, load_dataset, register_dataset, unregister_dataset,
)
from coopml.data.files import DatasetFormat, DatasetRef, content_digest, folder_listing
from coopml.data.fading import FADING_INPUT, FadingSet, fading_sets

__all__ = [
    "random_affine", "read_idx", "Dataset", "load_dataset", "data_dir",
    "LabelShard", "ShardSpec", "make_shards", "TABLE_II", "TABLE_III",
    "InputSpec", "Scale", "Normalize", "MNIST_INPUT", "FASHION_MNIST_INPUT",
    "DatasetLoader", "register_dataset", "unregister_dataset", "dataset_names", "dataset_info",
    "DatasetFormat", "DatasetRef", "content_digest", "folder_listing",
    "FADING_INPUT", "FadingSet", "fading_sets",
]

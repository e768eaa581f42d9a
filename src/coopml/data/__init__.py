"""Datasets (MNIST, Fashion-MNIST, the synthetic link-power "fading" set of Case Study IV) and the
splits of the paper's case studies; the task's InputSpec, the public dataset registry and pinned
dataset files (image folder, npz, CSV, Parquet) for any other task."""

from coopml.data.augment import random_affine
from coopml.data.datasets import Dataset, data_dir
from coopml.data.fading import FADING_INPUT, FadingSet, fading_sets
from coopml.data.files import DatasetFormat, DatasetRef, content_digest, folder_listing
from coopml.data.idx import read_idx
from coopml.data.registry import (
    DatasetLoader,
    dataset_info,
    dataset_names,
    load_dataset,
    register_dataset,
    unregister_dataset,
)
from coopml.data.spec import FASHION_MNIST_INPUT, MNIST_INPUT, InputSpec, Normalize, Scale
from coopml.data.splits import TABLE_II, TABLE_III, LabelShard, ShardSpec, make_shards

__all__ = [
    "FADING_INPUT",
    "FASHION_MNIST_INPUT",
    "MNIST_INPUT",
    "TABLE_II",
    "TABLE_III",
    "Dataset",
    "DatasetFormat",
    "DatasetLoader",
    "DatasetRef",
    "FadingSet",
    "InputSpec",
    "LabelShard",
    "Normalize",
    "Scale",
    "ShardSpec",
    "content_digest",
    "data_dir",
    "dataset_info",
    "dataset_names",
    "fading_sets",
    "folder_listing",
    "load_dataset",
    "make_shards",
    "random_affine",
    "read_idx",
    "register_dataset",
    "unregister_dataset",
]

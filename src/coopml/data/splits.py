"""Label-subset shards as in the paper's Tables II and III: each party sees only some classes.

Shards are drawn without replacement from one pool, so no image is in two shards, and each
shard is stratified: its classes are (as near as possible) equally represented.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from coopml.data.datasets import Dataset
from coopml.errors import DataError


@dataclass(frozen=True)
class ShardSpec:
    name: str
    labels: tuple[int, ...]
    n_train: int
    n_verify: int


@dataclass(frozen=True)
class LabelShard:
    spec: ShardSpec
    train: Dataset
    verify: Dataset


TABLE_II = (
    ShardSpec("verifiers", tuple(range(10)), 1000, 1000),
    ShardSpec("contributor1", (0, 1, 2, 3, 4), 1000, 1000),
    ShardSpec("contributor2", (0, 6, 7, 8, 9), 1000, 1000),
    ShardSpec("contributor3", (5, 6, 7, 8, 9), 1000, 1000),
)
TABLE_III = (
    ShardSpec("contributor1", (0, 1, 2, 3, 4, 5, 6), 1000, 1000),
    ShardSpec("contributor2", (0, 1, 2, 3, 4, 8, 9), 1000, 1000),
    ShardSpec("contributor3", (0, 1, 2, 6, 7, 8, 9), 1000, 1000),
)


def _per_label(total: int, labels: tuple[int, ...]) -> dict[int, int]:
    base, extra = divmod(total, len(labels))
    return {lab: base + (i < extra) for i, lab in enumerate(labels)}


def make_shards(pool: Dataset, specs: tuple[ShardSpec, ...] | list[ShardSpec], seed: int = 0,
                scale: float = 1.0) -> dict[str, LabelShard]:
    """Draw disjoint, stratified shards from `pool`; `scale` shrinks every count (for quick runs)."""
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise DataError(f"duplicate shard names in {names}")
    rng = np.random.default_rng(seed)
    # One shuffled queue of indices per class; shards take from the front, so they never overlap.
    num_classes = pool.num_classes
    queues = {c: list(rng.permutation(np.flatnonzero(pool.labels == c))) for c in range(num_classes)}
    out: dict[str, LabelShard] = {}
    for spec in specs:
        if not spec.labels or any(not 0 <= c < num_classes for c in spec.labels) or len(set(spec.labels)) != len(spec.labels):
            raise DataError(f"shard {spec.name}: bad label set {spec.labels}")
        parts = []
        for n in (spec.n_train, spec.n_verify):
            n = max(len(spec.labels), round(n * scale))
            picked = []
            for c, k in _per_label(n, spec.labels).items():
                if len(queues[c]) < k:
                    raise DataError(f"shard {spec.name}: class {c} has only {len(queues[c])} images left, need {k}")
                picked.extend(queues[c][:k])
                del queues[c][:k]
            idx = np.array(picked)
            parts.append(pool.subset(idx[rng.permutation(len(idx))]))
        out[spec.name] = LabelShard(spec, parts[0], parts[1])
    return out

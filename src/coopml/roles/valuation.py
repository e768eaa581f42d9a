"""The verifier's judgement of one model, from the outputs it decrypted on its own images.

Three tests, all required (the task manifest's Criterion):
1. accuracy: the model's own predictions on the verifier's images of the classes it declares;
2. coverage: it declares at least `min_labels` classes;
3. value (the paper's test, section III and IV-C step 5): fusing the model with the models this
   verifier already evaluated in the task raises the fused accuracy on the verifier's held-out
   images by at least `min_gain`.

The fused accuracy is measured with a fusion head trained on the verifier's own images: a linear
classifier (ridge regression onto one-hot classes) over the standardised, concatenated class scores of the members (each member's logits
for the classes it declares), scored by k-fold cross-validation so that every image is held out
once and nothing is chosen on the images it is scored on.

Why class scores and not the 784-d penultimate features the MetaModel fuses: the paper's Table IV
members are linear, and their penultimate features are a nearly invertible linear map of the
pixels, so a head on one member's features already reaches the pixel-level linear classifier and
no second member can add anything — a features-level value test rejects every model after the
first (docs/threat-model.md, P9). A member's class scores carry what it *learned*: a copy of
an evaluated model, or a model trained on the same classes, adds scores that are (near-)linear
functions of ones already there and gains nothing, while a model that adds classes gains tens of
points. It also means a verifier needs, and learns, only the scores — not the features.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Judgement:
    approve: bool
    accuracy: float          # on the declared classes
    fused_before: float      # cross-validated fused accuracy without the model
    fused_after: float       # ... with it
    reasons: tuple[str, ...]

    @property
    def gain(self) -> float:
        return self.fused_after - self.fused_before


def own_accuracy(logits: np.ndarray, labels: np.ndarray, declared: list[int]) -> float:
    keep = np.isin(labels, declared)
    if not keep.any():
        return 0.0
    masked = np.full_like(logits[keep], -np.inf)
    masked[:, declared] = logits[keep][:, declared]
    return float((masked.argmax(1) == labels[keep]).mean())


def fused_accuracy(features: list[np.ndarray], labels: np.ndarray, num_classes: int, folds: int = 5,
                   ridge: float = 1e-2, seed: int = 0) -> float:
    """k-fold accuracy of a linear fusion head (ridge regression onto one-hot classes, closed form)
    over the concatenated, standardised member scores. Deterministic and a few milliseconds: no
    optimiser, so no seed or learning rate can tip a vote."""
    n = len(labels)
    if not features:
        return float(np.bincount(labels, minlength=num_classes).max() / max(n, 1))  # majority class
    x = np.concatenate([np.asarray(f, dtype=np.float64).reshape(n, -1) for f in features], axis=1)
    y = np.eye(num_classes)[labels]
    order = np.random.default_rng(seed).permutation(n)
    correct = 0
    for k in range(folds):
        test = order[k::folds]
        train = np.setdiff1d(order, test)
        mu, sd = x[train].mean(0), x[train].std(0) + 1e-6
        xt = np.hstack([(x[train] - mu) / sd, np.ones((len(train), 1))])
        w = np.linalg.solve(xt.T @ xt + ridge * len(train) * np.eye(xt.shape[1]), xt.T @ y[train])
        xs = np.hstack([(x[test] - mu) / sd, np.ones((len(test), 1))])
        correct += int(((xs @ w).argmax(1) == labels[test]).sum())
    return correct / n


def class_scores(logits: np.ndarray, declared: list[int]) -> np.ndarray:
    """What a member contributes to the value test: its logits for the classes it declares."""
    return np.asarray(logits, dtype=np.float64)[:, sorted(declared)]


def judge(logits: np.ndarray, labels: np.ndarray, declared: list[int], baseline: list[np.ndarray],
          num_classes: int, min_accuracy: float, min_labels: int, min_gain: float) -> Judgement:
    """`baseline`: class_scores of the models already evaluated, on the same images."""
    acc = own_accuracy(logits, labels, declared)
    before = fused_accuracy(baseline, labels, num_classes)
    after = fused_accuracy(baseline + [class_scores(logits, declared)], labels, num_classes)
    reasons = []
    if acc < min_accuracy:
        reasons.append(f"accuracy {acc:.3f} on its declared classes is below {min_accuracy}")
    if len(declared) < min_labels:
        reasons.append(f"declares {len(declared)} classes, fewer than {min_labels}")
    if after - before < min_gain:
        reasons.append(f"fusion gain {after - before:+.3f} is below {min_gain} "
                       f"({before:.3f} -> {after:.3f} with {len(baseline)} evaluated models)")
    return Judgement(not reasons, acc, before, after, tuple(reasons))

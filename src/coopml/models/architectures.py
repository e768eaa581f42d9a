"""The paper's contributor CNNs. Every model exposes `features(x)` (the penultimate vector that
feature-level fusion concatenates) and `head` (the classifier over it).

Table I layers use 'same' padding so that two 2x2 poolings give the 7x7 maps the table states;
conv layer 3 keeps 7x7 likewise. ReLU follows each conv and the hidden layer (the table names
no activation; ReLU is the standard reading). Table IV is kept linear up to the output, as the
paper's encrypted inference needs (conv and average pooling only), which is what lets the
IVHE layer evaluate it in cipherspace. Case Study IV's models (`fading-cnn`, `fading-fc`) take a
window of 64 link-power readings as a 1 x 64 image (coopml.data.fading.FADING_INPUT), 2 classes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from coopml.data.fading import FADING_INPUT
from coopml.data.spec import MNIST_INPUT, InputSpec
from coopml.models.activations import Square, TaylorSigmoid


class FeatureModel(nn.Module):
    """A classifier split into a feature extractor and a linear head.

    `labels` are the classes this model was trained on; the head still has 10 outputs so
    that its logits are comparable across contributors.
    """

    labels: tuple[int, ...] | None = None   # class ids it was trained on (FeatureExtractor); None: all

    def __init__(self, arch: str, body: nn.Sequential, feature_dim: int, head: nn.Module,
                 num_classes: int = 10) -> None:
        super().__init__()
        self.arch = arch
        self.body = body
        self.feature_dim = feature_dim
        self.head = head
        self.num_classes = num_classes

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _same_conv(cin: int, cout: int, k: int) -> nn.Sequential:
    """Conv keeping the spatial size; even kernels pad one more on the right/bottom (as TF 'same')."""
    lo, hi = (k - 1) // 2, k // 2
    return nn.Sequential(nn.ZeroPad2d((lo, hi, lo, hi)), nn.Conv2d(cin, cout, k))


def _table1(c1: int, c2: int, k2: int, c3: int, k3: int, hidden: int = 500) -> Callable[[], FeatureModel]:
    def build() -> FeatureModel:
        body = nn.Sequential(
            _same_conv(1, c1, 5), nn.ReLU(), nn.MaxPool2d(2),
            _same_conv(c1, c2, k2), nn.ReLU(), nn.MaxPool2d(2),
            _same_conv(c2, c3, k3), nn.ReLU(),
            nn.Flatten(),
            nn.Linear(7 * 7 * c3, hidden), nn.ReLU(),
        )
        return FeatureModel("", body, hidden, nn.Linear(hidden, 10))
    return build


def _table4() -> FeatureModel:
    body = nn.Sequential(
        nn.Conv2d(1, 32, 5, padding=2), nn.AvgPool2d(2),
        nn.Conv2d(32, 16, 5, padding=2), nn.AvgPool2d(2),
        nn.Flatten(),
    )
    return FeatureModel("", body, 7 * 7 * 16, nn.Linear(7 * 7 * 16, 10))


def _table4_square() -> FeatureModel:
    """Table IV with a Square activation after the second pooling: features = pooled maps
    squared. (After the first pooling it would square 6272 units and make the second conv act on
    degree-2 ciphertexts: ~50x the CKKS work for the same accuracy.)"""
    body = nn.Sequential(
        nn.Conv2d(1, 32, 5, padding=2), nn.AvgPool2d(2),
        nn.Conv2d(32, 16, 5, padding=2), nn.AvgPool2d(2),
        Square(), nn.Flatten(),
    )
    return FeatureModel("", body, 7 * 7 * 16, nn.Linear(7 * 7 * 16, 10))


def _fc_sigmoid(hidden: int = 64) -> Callable[[], FeatureModel]:
    """The paper's Fig. 5(b): input -> weights 1 -> Taylor sigmoid hidden layer -> weights 2
    (a BatchNorm, folded into weights 1 at inference, keeps pre-activations where the
    cubic approximates the sigmoid)."""
    def build() -> FeatureModel:
        body = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, hidden), nn.BatchNorm1d(hidden), TaylorSigmoid())
        return FeatureModel("", body, hidden, nn.Linear(hidden, 10))
    return build


def _fading_cnn() -> FeatureModel:
    """Case Study IV: 'a CNN with 2 convolution layers and ReLU' over a window of 64 link-power
    readings, given as a 1 x 64 image; 1-D kernels of 9 readings (Fig. 6's m x 1 x r and m x r x l
    filters); average pooling, which IVHE can take as sum pooling."""
    first = nn.Conv2d(1, 16, (1, 9), padding=(0, 4))
    _boost(first)
    body = nn.Sequential(
        first, nn.ReLU(), nn.AvgPool2d((1, 2)),
        nn.Conv2d(16, 16, (1, 9), padding=(0, 4)), nn.ReLU(), nn.AvgPool2d((1, 2)),
        nn.Flatten(),
    )
    return FeatureModel("", body, 16 * 16, nn.Linear(16 * 16, 2), num_classes=2)


def _boost(layer: nn.Module, gain: float = 10.0) -> None:
    """Start a first layer `gain` x the default scale: link-power inputs are readings / 255, a few
    hundredths per dB, and at the default scale both Case Study IV nets sit near chance for tens of
    epochs on small sets (measured: 49 % vs 80 % after 25 epochs on 900 windows)."""
    with torch.no_grad():
        for p in layer.parameters():
            p.mul_(gain)


def _fading_fc() -> FeatureModel:
    """Fig. 5(a)/(b): a fully connected network, input -> Weight Matrix 1 -> the cubic Taylor
    sigmoid -> Weight Matrix 2 -> output, over the same 64 readings."""
    first = nn.Linear(64, 32)
    _boost(first)          # also puts the cubic to work from the first step
    body = nn.Sequential(nn.Flatten(), first, TaylorSigmoid())
    return FeatureModel("", body, 32, nn.Linear(32, 2), num_classes=2)


@dataclass(frozen=True)
class Architecture:
    """A built-in architecture, defined for one task's inputs (`spec`): the registry refuses to
    build it for any other shape or class count, and builds it for `spec` when none is given."""

    name: str
    description: str
    build: Callable[[], FeatureModel]
    spec: InputSpec = MNIST_INPUT

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Per example, as Dataset.tensors() gives it (e.g. (1, 28, 28); (1, 1, 64) for Case Study IV)."""
        return self.spec.shape


ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in (
    Architecture("table1-c1", "Table I contributor 1: conv32@5 pool conv16@5 pool conv8@2 fc500",
                 _table1(32, 16, 5, 8, 2)),
    Architecture("table1-c2", "Table I contributor 2: conv64@5 pool conv32@5 pool conv16@2 fc500",
                 _table1(64, 32, 5, 16, 2)),
    Architecture("table1-c3", "Table I contributor 3: conv32@5 pool conv32@10 pool conv16@4 fc500",
                 _table1(32, 32, 10, 16, 4)),
    Architecture("table4", "Table IV: conv32@5 avgpool conv16@5 avgpool, linear output (HE-friendly)",
                 _table4),
    Architecture("table4-square", "Table IV with x^2 after the second avgpool (CKKS-friendly, non-linear)",
                 _table4_square),
    Architecture("fc-sigmoid", "Fig. 5(b): fc64 + BatchNorm + Taylor sigmoid 1/2 + x/4 - x^3/48, fc10",
                 _fc_sigmoid(64)),
    Architecture("fading-cnn", "Case Study IV: 1-D conv16@9 ReLU avgpool conv16@9 ReLU avgpool, 2 classes",
                 _fading_cnn, FADING_INPUT),
    Architecture("fading-fc", "Case Study IV / Fig. 5(b): fc32 + cubic Taylor sigmoid, 2 classes", _fading_fc,
                 FADING_INPUT),
)}


def build_model(arch: str, seed: int | None = None, spec: InputSpec | None = None) -> FeatureModel:
    """A fresh model of a registered architecture (see coopml.models.registry) for `spec`
    (default: the architecture's own task for a built-in, e.g. Case Study IV's windows for
    fading-cnn; the paper's MNIST task otherwise)."""
    # imported here: the registry imports this module
    from coopml.models.registry import build_architecture

    return build_architecture(arch, spec, seed)

"""What fusion needs of a member model, and a wrapper giving any nn.Module that interface.

A member is a classifier whose penultimate activations ("features") feature-level fusion
concatenates. coopml's own architectures expose them directly (`FeatureModel.features`); a model
the user brings declares the NAME of the layer whose output the features are, and
`HookedFeatureModel` reads that layer's output with a forward hook, so the user's code needs no
coopml-specific method.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from coopml.data.spec import InputSpec
from coopml.errors import ModelDefinitionError


@runtime_checkable
class FeatureExtractor(Protocol):
    """The member interface fusion uses (FeatureModel, HookedFeatureModel, OnnxFeatureModel).

    features(x): [N, feature_dim] penultimate activations for inputs x [N, *spec.shape] (float32,
        already preprocessed by InputSpec.apply).
    forward(x) / calling the model: [N, num_classes] logits over the task's classes.
    labels: the class ids the model was trained on (None: all classes of the task).
    """

    feature_dim: int
    labels: tuple[int, ...] | None

    def features(self, x: torch.Tensor) -> torch.Tensor: ...

    def forward(self, x: torch.Tensor) -> torch.Tensor: ...


def check_labels(labels: Sequence[int] | None, num_classes: int, where: str = "labels") -> tuple[int, ...] | None:
    """Distinct class ids in 0..num_classes-1, sorted; None stays None (= all classes)."""
    if labels is None:
        return None
    labs = tuple(sorted(int(c) for c in labels))
    if not labs or len(set(labs)) != len(labs) or labs[0] < 0 or labs[-1] >= num_classes:
        raise ModelDefinitionError(f"{where}: must be distinct class ids in 0..{num_classes - 1}, got {list(labels)}")
    return labs


def find_layer(module: nn.Module, name: str) -> nn.Module:
    """The submodule called `name` (as in module.named_modules()); the error lists the candidates."""
    layers = dict(module.named_modules())
    layers.pop("", None)
    if name in layers:
        return layers[name]
    close = difflib.get_close_matches(name, list(layers), n=5, cutoff=0.5)
    shown = ", ".join(list(layers)[:40]) + (", ..." if len(layers) > 40 else "")
    hint = f" (closest: {', '.join(close)})" if close else ""
    raise ModelDefinitionError(f"{type(module).__name__} has no layer {name!r}{hint}; its layers are: {shown or 'none'}")


class HookedFeatureModel(nn.Module):
    """Any classifier nn.Module + the declared name of its feature layer -> a FeatureExtractor.

    `features(x)` runs the model and returns the declared layer's output flattened to [N, D]; the
    logits are the module's own output. Checked at construction on a batch of the spec's shape:
    the layer exists and runs exactly once, and the logits are [N, num_classes].
    """

    def __init__(self, module: nn.Module, feature_layer: str, spec: InputSpec,
                 labels: Sequence[int] | None = None, arch: str = "") -> None:
        super().__init__()
        find_layer(module, feature_layer)
        self.module = module
        self.feature_layer = feature_layer
        self.arch = arch
        self.spec = spec
        self.num_classes = spec.num_classes
        self.labels: tuple[int, ...] | None = check_labels(labels, spec.num_classes)
        self.feature_dim = self._probe()

    def _probe(self) -> int:
        was_training = self.module.training
        self.module.eval()
        try:
            with torch.no_grad():
                logits, feats = self.logits_and_features(torch.zeros(2, *self.spec.shape))
        except ModelDefinitionError:
            raise
        except Exception as exc:
            raise ModelDefinitionError(f"{self._name()}: fails on a batch of the InputSpec's shape "
                                       f"[2, {', '.join(map(str, self.spec.shape))}]: {type(exc).__name__}: {exc}") from exc
        finally:
            self.module.train(was_training)
        if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != (2, self.num_classes):
            got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise ModelDefinitionError(f"{self._name()}: returns {got} for a batch of 2, expected logits "
                                       f"(2, {self.num_classes}) for the task's {self.num_classes} classes")
        return int(feats.shape[1])

    def _name(self) -> str:
        return f"model {self.arch or type(self.module).__name__}"

    def logits_and_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward pass giving both the logits and the declared layer's flattened output."""
        captured: list[object] = []
        handle = self.module.get_submodule(self.feature_layer).register_forward_hook(
            lambda _mod, _inp, out: captured.append(out))
        try:
            logits = self.module(x)
        finally:
            handle.remove()
        if len(captured) != 1:
            raise ModelDefinitionError(f"{self._name()}: feature layer {self.feature_layer!r} ran {len(captured)} "
                                       f"times in one forward pass; declare a layer that runs exactly once")
        out = captured[0]
        if not isinstance(out, torch.Tensor):
            raise ModelDefinitionError(f"{self._name()}: feature layer {self.feature_layer!r} outputs "
                                       f"{type(out).__name__}, not a tensor")
        return logits, out.flatten(1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits_and_features(x)[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.module(x)
        return out

"""The public architecture registry: a name -> a factory of FeatureModels for an InputSpec.

A registered architecture is code present at every node (coopml's own, or a plugin installed
everywhere), so a model of it crosses nodes as safetensors weights + the architecture name and
is rebuilt by the receiver from its own code -- never from code sent along. (A model whose code
only its owner has travels as ONNX instead: see coopml.models.onnx_model.)

The paper's models are registered through the same `register_architecture`, each with the one
task it is defined for (its `default_spec`), and refuse other specs: the CNNs of Tables I and IV
and the CKKS variants take 1x28x28 inputs and 10 classes, Case Study IV's `fading-cnn` and
`fading-fc` 1x1x64 link-power windows and 2 classes. `mlp` and `cnn-small` adapt to any tabular /
image spec.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from coopml.data.spec import MNIST_INPUT, InputSpec
from coopml.errors import ModelDefinitionError, ModelFileError
from coopml.models.architectures import ARCHITECTURES, Architecture, FeatureModel

ArchitectureFactory = Callable[[InputSpec], FeatureModel]
"""factory(spec) -> a FeatureModel taking [N, *spec.shape] inputs, giving spec.num_classes logits."""

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class ArchitectureInfo:
    name: str
    description: str
    factory: ArchitectureFactory
    default_spec: InputSpec | None = None   # what build_architecture uses when given none (None: MNIST's)


_ARCHITECTURES: dict[str, ArchitectureInfo] = {}


def register_architecture(name: str, description: str, factory: ArchitectureFactory, *,
                          default_spec: InputSpec | None = None, allow_overwrite: bool = False) -> None:
    """Make `build_architecture(name, spec)` return `factory(spec)`; `default_spec` is the spec
    used when none is given (an architecture defined for one task: that task's; else MNIST's)."""
    if not _NAME.match(name):
        raise ModelDefinitionError(f"architecture name {name!r} must be 1-64 of a-z 0-9 . _ - (starting alphanumeric)")
    if not callable(factory):
        raise ModelDefinitionError(f"architecture {name!r}: factory {factory!r} is not callable")
    if name in _ARCHITECTURES and not allow_overwrite:
        raise ModelDefinitionError(f"architecture {name!r} is already registered ({_ARCHITECTURES[name].description}); "
                                   f"pass allow_overwrite=True to replace it")
    _ARCHITECTURES[name] = ArchitectureInfo(name, description, factory, default_spec)


def unregister_architecture(name: str) -> None:
    architecture_info(name)
    del _ARCHITECTURES[name]


def architecture_names() -> list[str]:
    return list(_ARCHITECTURES)


def architecture_info(name: str) -> ArchitectureInfo:
    try:
        return _ARCHITECTURES[name]
    except KeyError:
        raise ModelFileError(f"unknown architecture {name!r}; known: {', '.join(_ARCHITECTURES)}") from None


def build_architecture(name: str, spec: InputSpec | None = None, seed: int | None = None) -> FeatureModel:
    """A freshly initialised model of architecture `name` for `spec` (default: the architecture's
    `default_spec`, else MNIST's)."""
    info = architecture_info(name)
    spec = spec if spec is not None else info.default_spec or MNIST_INPUT
    if seed is not None:
        torch.manual_seed(seed)
    try:
        model = info.factory(spec)
    except (ModelDefinitionError, ModelFileError):
        raise
    except Exception as exc:
        raise ModelDefinitionError(f"architecture {name!r} failed to build for {spec.describe()}: "
                                   f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(model, FeatureModel):
        raise ModelDefinitionError(f"architecture {name!r} built a {type(model).__name__}, not a FeatureModel")
    model.arch = name
    model.num_classes = spec.num_classes
    return model


# -- built-ins -----------------------------------------------------------------------------------

def _own_task_only(arch: Architecture) -> ArchitectureFactory:
    """The paper's models are defined for one task's input shape and class count."""
    def factory(spec: InputSpec) -> FeatureModel:
        own = arch.spec
        if spec.shape != own.shape or spec.num_classes != own.num_classes:
            raise ModelDefinitionError(f"architecture {arch.name!r} is the paper's, defined for "
                                       f"{'x'.join(map(str, own.shape))} inputs and {own.num_classes} classes; "
                                       f"this task's inputs are {spec.describe()} (try cnn-small or mlp)")
        return arch.build()
    return factory


def _mlp(spec: InputSpec) -> FeatureModel:
    inputs = math.prod(spec.shape)
    body = nn.Sequential(nn.Flatten(), nn.Linear(inputs, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU())
    return FeatureModel("mlp", body, 64, nn.Linear(64, spec.num_classes), spec.num_classes)


def _cnn_small(spec: InputSpec) -> FeatureModel:
    if not spec.is_image:
        raise ModelDefinitionError(f"architecture 'cnn-small' needs image inputs [C, H, W], not {list(spec.shape)}")
    c = spec.shape[0]
    # global average pooling makes it size-agnostic (and exports to ONNX for any size, which an
    # adaptive pool to a fixed grid does not)
    body = nn.Sequential(
        nn.Conv2d(c, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
        nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(64, 128), nn.ReLU(),
    )
    return FeatureModel("cnn-small", body, 128, nn.Linear(128, spec.num_classes), spec.num_classes)


for _arch in ARCHITECTURES.values():
    register_architecture(_arch.name, _arch.description, _own_task_only(_arch), default_spec=_arch.spec)
register_architecture("mlp", "MLP for any input: flatten, fc128, fc64 (features), linear head", _mlp)
register_architecture("cnn-small", "small CNN for any image size: conv32@3 pool conv64@3 pool conv64@3 "
                      "global-avgpool fc128 (features), linear head", _cnn_small)

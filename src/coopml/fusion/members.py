"""What fusion needs from a member, and how members of each kind are stored in a MetaModel file.

Fusion never looks inside a member: it calls `features(x)` on the initiator's data and needs to
know `feature_dim` (the width of that vector) and `labels` (the classes the member was trained
on, which shape Strategy II's blocks). Anything with those three is a member -- a torch
`FeatureModel` wrapped in `TorchMember`, or an ONNX file run by onnxruntime in another layer.

To be stored inside a MetaModel file a member's *kind* must be registered: a `MemberKind` turns a
member into (a JSON-able spec, named tensors) and back. The built-in kind "torch" stores the
architecture name (a registered `coopml.models` architecture, never code), the task's InputSpec
it was built for, and the state dict. The built-in kind "onnx" stores a
`coopml.models.OnnxFeatureModel` (what a contributor's own model is delivered as) as its
validated graph in a uint8 tensor (`bytes_to_tensor` / `tensor_to_bytes`) plus its InputSpec;
loading validates the graph again before onnxruntime runs it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast, runtime_checkable

import torch
from pydantic import ValidationError
from torch import nn

from coopml.data.spec import InputSpec
from coopml.errors import CoopmlError, ModelFileError
from coopml.models.architectures import FeatureModel
from coopml.models.registry import architecture_names, build_architecture
from coopml.models.training import fast_layout


class FusionError(CoopmlError):
    """Fusion was asked for something impossible: no models, bad label sets, empty data."""


@runtime_checkable
class FeatureExtractor(Protocol):
    """A verified member as fusion sees it.

    `features(x)` maps a batch of inputs (whatever shape the task's inputs have) to a
    [N, feature_dim] tensor; it must be deterministic (it is computed once and cached).
    `labels` are the global class indices the member was trained on."""

    @property
    def feature_dim(self) -> int: ...

    @property
    def labels(self) -> Sequence[int]: ...

    def features(self, x: torch.Tensor) -> torch.Tensor: ...


# layers that keep a body affine (eval mode): x -> x W + b overall
_AFFINE_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Linear, nn.AvgPool1d, nn.AvgPool2d, nn.Flatten, nn.Identity)
_AFFINE_MAX_INPUT = 4096     # inputs wider than this: the unit-input pass and W cost more than they save


class TorchMember:
    """A trained torch `FeatureModel` as a fusion member: frozen (no gradients, eval mode).

    `num_classes` is the width of the model's own head; `logits(x)` its head's output;
    `input_spec` the task inputs it was built for (stored in the MetaModel file so that the
    architecture is rebuilt for the same shape and classes; None: the architecture's default)."""

    kind = "torch"

    def __init__(self, model: FeatureModel, labels: Sequence[int] | None = None,
                 input_spec: InputSpec | None = None) -> None:
        model.eval()
        self.input_spec = input_spec
        for p in model.parameters():
            p.requires_grad_(False)
        self.model = model
        head_out = getattr(model.head, "out_features", None)
        self.num_classes = int(head_out if isinstance(head_out, int) else model.num_classes)
        self._labels = _label_set(labels if labels is not None else range(self.num_classes), self.num_classes)
        self._feature_shape: tuple[int, ...] | None = None

    @property
    def arch(self) -> str:
        return self.model.arch

    @property
    def feature_dim(self) -> int:
        return int(self.model.feature_dim)

    @property
    def labels(self) -> tuple[int, ...]:
        return self._labels

    @property
    def feature_shape(self) -> tuple[int, ...] | None:
        """(C, H, W) when the features are flattened maps (Table IV), known once features ran."""
        return self._feature_shape

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The body's output (channels-last inside when the model allows: `fast_layout`)."""
        body = self.model.body
        with fast_layout(self.model, x[:2]):
            if isinstance(body, nn.Sequential) and len(body) > 1 and isinstance(body[-1], nn.Flatten):
                maps = body[:-1](x)
                if maps.dim() == 4:
                    self._feature_shape = tuple(int(s) for s in maps.shape[1:])
                return maps.flatten(1)
            return self.model.features(x)

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    @torch.no_grad()
    def affine_map(self, input_shape: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(W, b) with `features(x) == x.flatten(1) @ W + b` up to float rounding, when the body is
        a chain of affine layers only (convolutions, average pooling, linear layers: Table IV);
        else None. Found by running the body on 0 and the unit inputs: one pass over
        prod(input_shape) + 1 inputs, after which features cost one matmul per batch."""
        body = self.model.body
        dim = math.prod(int(s) for s in input_shape)
        if not isinstance(body, nn.Sequential) or not 0 < dim <= _AFFINE_MAX_INPUT:
            return None
        for layer in body:
            if not isinstance(layer, _AFFINE_LAYERS) or getattr(layer, "padding_mode", "zeros") != "zeros":
                return None
        basis = torch.cat([torch.zeros(1, dim), torch.eye(dim)]).view(dim + 1, *input_shape)
        out = torch.cat([self.features(basis[i:i + 256]) for i in range(0, dim + 1, 256)]).float()
        bias = out[0].clone()
        return out[1:] - bias, bias

    def __repr__(self) -> str:
        return f"TorchMember({self.arch}, labels={list(self.labels)})"


def _label_set(labels: Sequence[int] | range, num_classes: int | None = None) -> tuple[int, ...]:
    labs = tuple(sorted(int(c) for c in labels))
    bad = not labs or len(set(labs)) != len(labs) or any(c < 0 for c in labs)
    if bad or (num_classes is not None and labs[-1] >= num_classes):
        top = f"0..{num_classes - 1}" if num_classes is not None else "non-negative"
        raise FusionError(f"label set must be distinct classes in {top}, got {list(labels)}")
    return labs


def as_member(model: object, labels: Sequence[int] | None = None) -> FeatureExtractor:
    """A fusion member from a torch `FeatureModel` (wrapped, `labels` default: all its classes)
    or from anything already satisfying `FeatureExtractor` (whose own `labels` must agree)."""
    if isinstance(model, FeatureModel):
        if labels is None:
            labels = getattr(model, "labels", None)
        return TorchMember(model, labels)
    if isinstance(model, FeatureExtractor):
        if model.labels is None:   # e.g. an ONNX model without label metadata: all of the task's classes
            n = getattr(model, "num_classes", None)
            if labels is None and not isinstance(n, int):
                raise FusionError(f"member {model!r} declares no labels and none were given")
            model.labels = tuple(labels) if labels is not None else tuple(range(int(n)))
        if labels is not None and _label_set(labels) != _label_set(model.labels):
            raise FusionError(f"member {model!r} declares labels {list(model.labels)}, caller said {list(labels)}")
        _label_set(model.labels)
        return model
    raise FusionError(f"{type(model).__name__} is not a fusion member: it needs features(x), feature_dim and labels")


# ----------------------------------------------------------------------------- member kinds

Tensors = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class MemberKind:
    """How members of one kind are written into and rebuilt from a MetaModel file.

    `accepts(member)`: does this kind store this member? `encode(member)` -> (spec, tensors):
    a JSON-able dict describing it (never code) and its named tensors. `decode(spec, tensors,
    labels)` rebuilds the member; it raises ModelFileError naming what does not fit."""

    name: str
    accepts: Callable[[object], bool]
    encode: Callable[[Any], tuple[dict[str, Any], dict[str, torch.Tensor]]]
    decode: Callable[[dict[str, Any], Tensors, Sequence[int]], FeatureExtractor]


_KINDS: dict[str, MemberKind] = {}


def register_member_kind(kind: MemberKind, replace: bool = False) -> None:
    """Make members of `kind` storable in MetaModel files (e.g. an ONNX kind from another layer)."""
    if not kind.name or not kind.name.replace("-", "").replace("_", "").isalnum():
        raise FusionError(f"member kind name must be alphanumeric (with - or _), got {kind.name!r}")
    if kind.name in _KINDS and not replace:
        raise FusionError(f"member kind {kind.name!r} is already registered")
    _KINDS[kind.name] = kind


def member_kinds() -> tuple[str, ...]:
    return tuple(_KINDS)


def member_kind(name: str) -> MemberKind:
    if name not in _KINDS:
        raise ModelFileError(f"unknown member kind {name!r}; registered: {', '.join(_KINDS) or 'none'}")
    return _KINDS[name]


def kind_of(member: object) -> MemberKind:
    """The registered kind that stores `member` (the last registered one that accepts it)."""
    for kind in reversed(list(_KINDS.values())):
        if kind.accepts(member):
            return kind
    raise FusionError(f"no registered member kind can store {member!r}; register one with register_member_kind")


def bytes_to_tensor(data: bytes) -> torch.Tensor:
    """An opaque blob as a 1-D uint8 tensor (for member kinds that are not torch modules)."""
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).clone()


def tensor_to_bytes(t: torch.Tensor) -> bytes:
    if t.dtype != torch.uint8 or t.dim() != 1:
        raise ModelFileError(f"expected a 1-D uint8 blob tensor, got {t.dtype} of shape {tuple(t.shape)}")
    return t.contiguous().numpy().tobytes()


def _encode_torch(member: TorchMember) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    state = {k: v.detach().contiguous().cpu() for k, v in member.model.state_dict().items()}
    spec: dict[str, Any] = {"arch": member.arch, "num_classes": member.num_classes}
    if member.input_spec is not None:
        spec["input"] = member.input_spec.model_dump(mode="json")
    return spec, state


def _input_spec(spec: dict[str, Any], what: str) -> InputSpec | None:
    raw = spec.get("input")
    if raw is None:
        return None
    try:
        return InputSpec.model_validate(raw)
    except ValidationError as exc:
        raise ModelFileError(f"{what}: bad input spec: {exc.errors()[0]['msg']}") from None


def _decode_torch(spec: dict[str, Any], tensors: Tensors, labels: Sequence[int]) -> FeatureExtractor:
    arch = spec.get("arch")
    if not isinstance(arch, str) or arch not in architecture_names():
        raise ModelFileError(f"torch member: unknown architecture {arch!r}; known: {', '.join(architecture_names())}")
    input_spec = _input_spec(spec, f"torch member ({arch})")
    model = build_architecture(arch, input_spec)
    _load_state(model, tensors, f"torch member ({arch})")
    return TorchMember(model, labels, input_spec)


def _load_state(module: nn.Module, tensors: Tensors, what: str) -> None:
    expected = module.state_dict()
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ModelFileError(f"{what}: tensors do not match: missing {missing[:3]}, unexpected {unexpected[:3]}")
    for name, t in tensors.items():
        if tuple(t.shape) != tuple(expected[name].shape) or t.dtype != expected[name].dtype:
            raise ModelFileError(f"{what}: tensor {name} is {t.dtype} {tuple(t.shape)}, "
                                 f"expected {expected[name].dtype} {tuple(expected[name].shape)}")
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise ModelFileError(f"{what}: tensor {name} contains NaN or infinity")
    module.load_state_dict(dict(tensors))


def _is_onnx(member: object) -> bool:
    # onnx/onnxruntime only when needed
    from coopml.models.onnx_model import OnnxFeatureModel
    return isinstance(member, OnnxFeatureModel)


def _encode_onnx(member: Any) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    return ({"input": member.spec.model_dump(mode="json"), "sha256": member.sha256},
            {"graph": bytes_to_tensor(member.onnx_bytes)})


def _decode_onnx(spec: dict[str, Any], tensors: Tensors, labels: Sequence[int]) -> FeatureExtractor:
    from coopml.models.onnx_model import OnnxFeatureModel
    input_spec = _input_spec(spec, "onnx member")
    if input_spec is None or set(tensors) != {"graph"}:
        raise ModelFileError("onnx member needs its input spec and exactly one tensor, 'graph'")
    member = OnnxFeatureModel(tensor_to_bytes(tensors["graph"]), input_spec, labels=labels,
                              where="MetaModel onnx member")
    return cast(FeatureExtractor, member)       # labels given: never None


register_member_kind(MemberKind("torch", lambda m: isinstance(m, TorchMember), _encode_torch, _decode_torch))
register_member_kind(MemberKind("onnx", _is_onnx, _encode_onnx, _decode_onnx))

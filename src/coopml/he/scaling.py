"""Integer scaling (paper IV-C2): weights x p, inputs x q, biases at their layer's propagated scale.

A linear network (Conv2d / AvgPool2d / Flatten / Linear) becomes an `IntegerNet`: every weight
is round(p * w); average pooling becomes sum pooling (its 1/k^2 moves into the scale), and
each bias is round(b * s) with s the scale of the layer's output. The final output equals the
float network's logits times `output_scale` (up to rounding), e.g. p^3 * q * 16 for Table IV.

`integer_forward` evaluates the integer network exactly (float64 whose every partial sum is
proved below 2^53 by a parallel absolute-value pass); it is the reference that decrypted
encrypted-inference outputs must equal bit for bit.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from coopml.errors import HEError
from coopml.he.ring import FLOAT_EXACT


@dataclass
class IntLayer:
    kind: str                       # "conv" | "sumpool" | "flatten" | "linear"
    weight: np.ndarray | None = None  # int64
    bias: np.ndarray | None = None    # int64
    stride: int = 1
    padding: int = 0
    size: int = 0                     # pooling window


@dataclass
class IntegerNet:
    layers: list[IntLayer]
    p: int
    q: int
    scales: list[int] = field(default_factory=list)  # output scale after each layer

    @property
    def output_scale(self) -> int:
        return self.scales[-1]


def _as_int(v: int | tuple, what: str) -> int:
    if isinstance(v, tuple):
        if len(set(v)) != 1:
            raise HEError(f"{what} must be square, got {v}")
        v = v[0]
    return int(v)


def linear_modules(model: nn.Module) -> list[nn.Module]:
    """The layers of a FeatureModel (body then head) or a plain Sequential, flattened."""
    mods = list(model.body) + [model.head] if hasattr(model, "body") else list(model)
    out: list[nn.Module] = []
    for m in mods:
        out.extend(linear_modules(m) if isinstance(m, nn.Sequential) else [m])
    return out


def quantize(model: nn.Module, p: int, q: int) -> IntegerNet:
    """Scale a linear network to integers with weight factor p and input factor q."""
    if p < 1 or q < 1:
        raise HEError(f"scaling factors must be positive integers, got p={p}, q={q}")
    layers: list[IntLayer] = []
    scales: list[int] = []
    s = q
    for m in linear_modules(model):
        if isinstance(m, nn.Conv2d):
            if m.groups != 1 or _as_int(m.dilation, "dilation") != 1 or m.padding_mode != "zeros" \
                    or isinstance(m.padding, str):
                raise HEError(f"unsupported conv for cipherspace evaluation: {m}")
            s *= p
            w = torch.round(m.weight.detach().double() * p).long().numpy()
            b = torch.round(m.bias.detach().double() * s).long().numpy() if m.bias is not None \
                else np.zeros(m.out_channels, np.int64)
            layers.append(IntLayer("conv", w, b, _as_int(m.stride, "stride"), _as_int(m.padding, "padding")))
        elif isinstance(m, nn.Linear):
            s *= p
            w = torch.round(m.weight.detach().double() * p).long().numpy()
            b = torch.round(m.bias.detach().double() * s).long().numpy() if m.bias is not None \
                else np.zeros(m.out_features, np.int64)
            layers.append(IntLayer("linear", w, b))
        elif isinstance(m, nn.AvgPool2d):
            k = _as_int(m.kernel_size, "pool kernel")
            if _as_int(m.stride, "pool stride") != k or _as_int(m.padding, "pool padding") != 0 or m.ceil_mode:
                raise HEError(f"only non-overlapping average pooling is supported, got {m}")
            s *= k * k
            layers.append(IntLayer("sumpool", size=k))
        elif isinstance(m, nn.Flatten):
            layers.append(IntLayer("flatten"))
        else:
            raise HEError(f"layer {type(m).__name__} is not linear: only Conv2d, AvgPool2d, Flatten and "
                          "Linear can be evaluated in cipherspace")
        scales.append(s)
    kinds = [layer.kind for layer in layers]
    first = next((i for i, k in enumerate(kinds) if k in ("conv", "linear")), None)
    if first is None or any(k != "flatten" for k in kinds[:first]):
        raise HEError("the first layer (after an optional Flatten) must be a Conv2d or Linear: "
                      "it is the one that gets encrypted")
    return IntegerNet(layers, p, q, scales)


def scale_inputs(x: torch.Tensor | np.ndarray, q: int) -> np.ndarray:
    """round(q * x) as int64 (x: float images in [0, 1], any shape)."""
    x = torch.as_tensor(x).double()
    return torch.round(x * q).long().numpy()


def apply_layer(layer: IntLayer, h: torch.Tensor, weight: torch.Tensor | None = None,
                bias: bool = True, absolute: bool = False) -> torch.Tensor:
    """One integer layer in float64 (exact while values stay below 2^53)."""
    if layer.kind == "flatten":
        return h.flatten(1)
    if layer.kind == "sumpool":
        return F.avg_pool2d(h, layer.size, divisor_override=1)
    w = weight if weight is not None else torch.from_numpy(layer.weight).double()
    b = torch.from_numpy(layer.bias).double() if bias and layer.bias is not None else None
    if absolute:
        w = w.abs()
        b = b.abs() if b is not None else None
    if layer.kind == "conv":
        return F.conv2d(h, w, b, stride=layer.stride, padding=layer.padding)
    return F.linear(h, w, b)


def integer_forward(net: IntegerNet, x_int: np.ndarray) -> np.ndarray:
    """Exact integer outputs of the scaled network (N, outputs) as int64."""
    h = torch.from_numpy(np.asarray(x_int, dtype=np.int64)).double()
    ha = h.abs()
    for layer in net.layers:
        h = apply_layer(layer, h)
        ha = apply_layer(layer, ha, absolute=True)
        if ha.numel() and ha.max().item() >= FLOAT_EXACT:
            raise HEError("integer network values could exceed 2^53; lower p or q")
    return h.round().long().numpy()


def dequantize(net: IntegerNet, template: nn.Module) -> nn.Module:
    """The float model the integer network stands for: weights int/p, biases int/scale."""
    model = copy.deepcopy(template)
    layers = iter(zip(net.layers, net.scales))
    with torch.no_grad():
        for m in linear_modules(model):
            layer, s = next(layers)
            if layer.kind in ("conv", "linear"):
                if tuple(m.weight.shape) != layer.weight.shape:
                    raise HEError(f"weight shape {layer.weight.shape} does not match the architecture's "
                                  f"{tuple(m.weight.shape)}")
                m.weight.copy_(torch.from_numpy(layer.weight).double() / net.p)
                if m.bias is not None:
                    m.bias.copy_(torch.from_numpy(layer.bias).double() / s)
    model.eval()
    return model

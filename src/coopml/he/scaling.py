"""Integer scaling (paper IV-C2): weights x p, inputs x q, biases at their layer's propagated scale.

A network of Conv2d / AvgPool2d / Flatten / Linear layers, optionally with ReLU and polynomial
activations, becomes an `IntegerNet`: every weight is round(p * w); average pooling becomes sum
pooling (its 1/(kh*kw) moves into the scale); each bias is round(b * s) with s the scale of the
layer's output; ReLU commutes with positive scales; a polynomial activation sum_i a_i x^i with
rational a_i (the paper's Taylor sigmoid 1/2 + x/4 - x^3/48) becomes the integer polynomial
sum_i (D a_i s^(d-i)) h^i at the new scale D s^d (D the common denominator, d the degree). The
final output equals the float network's logits times `output_scale` (up to rounding), e.g.
p^3 * q * 16 for Table IV.

`integer_forward` evaluates the integer network exactly: in float64 while a parallel
absolute-value pass proves every partial sum below 2^53, and in Python integers beyond that
(slow, but only small networks get there, e.g. after the cubic Taylor sigmoid). It is the
reference that decrypted encrypted-inference outputs must equal bit for bit.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from fractions import Fraction
from math import lcm
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from coopml.errors import HEError
from coopml.he.ring import FLOAT_EXACT
from coopml.models.activations import PolyActivation

Pair = int | tuple[int, int]
LINEAR_KINDS = ("conv", "sumpool", "flatten", "linear")
ACTIVATION_KINDS = ("relu", "poly")


def pair(v: int | tuple[int, ...] | list[Any]) -> tuple[int, int]:
    """(h, w) from an int or a 2-sequence (torch and JSON give either)."""
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise HEError(f"expected an int or a pair, got {v!r}")
        return int(v[0]), int(v[1])
    return int(v), int(v)


@dataclass
class IntLayer:
    kind: str                       # "conv" | "sumpool" | "flatten" | "linear" | "relu" | "poly"
    weight: np.ndarray | None = None  # int64
    bias: np.ndarray | None = None    # int64
    stride: Pair = 1
    padding: Pair = 0
    size: Pair = 0                    # pooling window (kh, kw) or k
    poly: tuple[int, ...] = ()        # integer coefficients a_0..a_d of y = sum_i a_i h^i ("poly")

    @property
    def is_linear(self) -> bool:
        return self.kind in LINEAR_KINDS

    def params(self) -> tuple[np.ndarray, np.ndarray]:
        """(weight, bias) of a conv or linear layer."""
        if self.weight is None or self.bias is None:
            raise HEError(f"{self.kind} layer without weight and bias")
        return self.weight, self.bias


@dataclass
class IntegerNet:
    layers: list[IntLayer]
    p: int
    q: int
    scales: list[int] = field(default_factory=list)  # output scale after each layer

    @property
    def output_scale(self) -> int:
        return self.scales[-1]


def _norm_pair(v: int | tuple) -> Pair:
    """Square pairs stay ints (the serialised form of Case Study II models is unchanged)."""
    h, w = pair(v)
    return h if h == w else (h, w)


def polynomial_of(m: nn.Module) -> tuple[Fraction, ...] | None:
    """Exact coefficients a_0..a_d of a polynomial activation (coopml.models.activations:
    PolyActivation, Square, TaylorSigmoid; the classes the CKKS engine evaluates too), else None."""
    if not isinstance(m, PolyActivation):
        return None
    out = m.polynomial
    if not out:
        raise HEError(f"{type(m).__name__}: empty polynomial")
    return out


def _members(m: nn.Module | torch.Tensor) -> list[nn.Module]:
    if not isinstance(m, (nn.Sequential, nn.ModuleList)):
        raise HEError(f"expected a FeatureModel or an nn.Sequential, got {type(m).__name__}")
    return list(m)


def linear_modules(model: nn.Module) -> list[nn.Module]:
    """The layers of a FeatureModel (body then head) or a plain Sequential, flattened."""
    if hasattr(model, "body"):
        head = model.head
        if not isinstance(head, nn.Module):
            raise HEError(f"the head of a FeatureModel must be a module, got {type(head).__name__}")
        mods = [*_members(model.body), head]
    else:
        mods = _members(model)
    out: list[nn.Module] = []
    for m in mods:
        if isinstance(m, nn.Identity):          # e.g. a head left out to expose features: a no-op
            continue
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
            if m.groups != 1 or pair(m.dilation) != (1, 1) or m.padding_mode != "zeros" \
                    or isinstance(m.padding, str):
                raise HEError(f"unsupported conv for cipherspace evaluation: {m}")
            s *= p
            w = torch.round(m.weight.detach().double() * p).long().numpy()
            b = torch.round(m.bias.detach().double() * s).long().numpy() if m.bias is not None \
                else np.zeros(m.out_channels, np.int64)
            layers.append(IntLayer("conv", w, b, _norm_pair(m.stride), _norm_pair(m.padding)))
        elif isinstance(m, nn.Linear):
            s *= p
            w = torch.round(m.weight.detach().double() * p).long().numpy()
            b = torch.round(m.bias.detach().double() * s).long().numpy() if m.bias is not None \
                else np.zeros(m.out_features, np.int64)
            layers.append(IntLayer("linear", w, b))
        elif isinstance(m, nn.AvgPool2d):
            k = pair(m.kernel_size)
            if pair(m.stride if m.stride is not None else m.kernel_size) != k or pair(m.padding) != (0, 0) \
                    or m.ceil_mode or m.divisor_override is not None:
                raise HEError(f"only non-overlapping average pooling is supported, got {m}")
            s *= k[0] * k[1]
            layers.append(IntLayer("sumpool", size=_norm_pair(k)))
        elif isinstance(m, nn.Flatten):
            layers.append(IntLayer("flatten"))
        elif isinstance(m, nn.ReLU):
            layers.append(IntLayer("relu"))
        elif (coeffs := polynomial_of(m)) is not None:
            d = len(coeffs) - 1
            den = lcm(*(c.denominator for c in coeffs))
            ints = tuple(int(c * den) * s ** (d - i) for i, c in enumerate(coeffs))
            s = den * s ** d
            layers.append(IntLayer("poly", poly=ints))
        else:
            raise HEError(f"layer {type(m).__name__} cannot be scaled to integers: only Conv2d, AvgPool2d, "
                          "Flatten, Linear, ReLU and polynomial activations are supported")
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
        return F.avg_pool2d(h, pair(layer.size), divisor_override=1)
    if layer.kind == "relu":
        return h if absolute else torch.relu(h)
    if layer.kind == "poly":
        hp = h.abs() if absolute else h
        out = torch.zeros_like(h)
        for a in reversed(layer.poly):                 # Horner; every partial value is an integer
            out = out * hp + (abs(a) if absolute else a)
        return out
    w = weight if weight is not None else torch.from_numpy(layer.weight).double()
    b = torch.from_numpy(layer.bias).double() if bias and layer.bias is not None else None
    if absolute:
        w = w.abs()
        b = b.abs() if b is not None else None
    if layer.kind == "conv":
        return F.conv2d(h, w, b, stride=pair(layer.stride), padding=pair(layer.padding))
    return F.linear(h, w, b)


def _apply_exact(layer: IntLayer, h: np.ndarray) -> np.ndarray:
    """One layer in Python integers (object arrays): for values beyond 2^53 (slow; the networks
    that get there are small, e.g. after the cubic Taylor sigmoid)."""
    if layer.kind == "flatten":
        return h.reshape(len(h), -1)
    if layer.kind == "relu":
        return np.where(h > 0, h, 0).astype(object)
    if layer.kind == "poly":
        out = np.zeros(h.shape, dtype=object)
        for a in reversed(layer.poly):
            out = out * h + a
        return out
    if layer.kind == "linear":
        weight, bias = layer.params()
        return h @ weight.astype(object).T + bias.astype(object)
    if layer.kind == "sumpool":
        kh, kw = pair(layer.size)
        n, c, hh, ww = h.shape
        h = h[:, :, :hh // kh * kh, :ww // kw * kw]
        return h.reshape(n, c, hh // kh, kh, ww // kw, kw).sum(axis=(3, 5))
    if layer.kind == "conv":
        weight, bias = layer.params()
        (ph, pw), (sh, sw) = pair(layer.padding), pair(layer.stride)
        hp = np.pad(h, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=0)
        kh, kw = weight.shape[2:]
        win = np.lib.stride_tricks.sliding_window_view(hp, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]
        out = np.tensordot(win, weight.astype(object), axes=([1, 4, 5], [1, 2, 3]))   # (N, Ho, Wo, Cout)
        return np.moveaxis(out, -1, 1) + bias.astype(object)[None, :, None, None]
    raise HEError(f"cannot evaluate a {layer.kind} layer on integers")


def integer_forward(net: IntegerNet, x_int: np.ndarray) -> np.ndarray:
    """Exact integer outputs of the scaled network (N, outputs): int64 when they fit, else Python ints."""
    return forward_layers(net.layers, x_int)


def static_bound(layers: list[IntLayer], x_max: float) -> float:
    """A cheap upper bound on every |value| (and partial sum) of the layers for inputs |x| <= x_max:
    one scalar through the max row L1 norms. When it is below 2^53, the absolute-value pass of
    `forward_layers` is not needed."""
    m, worst = float(x_max), float(x_max)
    for layer in layers:
        if layer.kind in ("conv", "linear") and layer.weight is not None and layer.bias is not None:
            w = np.abs(layer.weight).reshape(layer.weight.shape[0], -1).sum(axis=1)
            m = float((m * w + np.abs(layer.bias)).max(initial=0.0))
        elif layer.kind == "sumpool":
            kh, kw = pair(layer.size)
            m *= kh * kw
        elif layer.kind == "poly":
            m = float(sum(abs(a) * m ** i for i, a in enumerate(layer.poly)))
        worst = max(worst, m)
    return worst


def forward_layers(layers: list[IntLayer], x_int: np.ndarray) -> np.ndarray:
    """`integer_forward` over a list of layers (e.g. what follows an encrypted prefix)."""
    x = np.asarray(x_int)
    if x.dtype != object and x.size and static_bound(layers, float(np.abs(x).max())) < FLOAT_EXACT:
        t = torch.from_numpy(x.astype(np.int64)).double()          # proved exact: no abs pass needed
        for layer in layers:
            t = apply_layer(layer, t)
        return t.round().long().numpy()
    h: torch.Tensor | None
    ha: torch.Tensor | None
    if x.dtype == object:
        h_obj: np.ndarray | None = x
        h = ha = None
    else:
        h_obj = None
        h = torch.from_numpy(x.astype(np.int64)).double()
        ha = h.abs()
    for layer in layers:
        if h_obj is None:
            assert h is not None and ha is not None
            ha_next = apply_layer(layer, ha, absolute=True)
            if ha_next.numel() and ha_next.max().item() >= FLOAT_EXACT:
                h_obj = np.vectorize(int, otypes=[object])(h.round().long().numpy()) if h.numel() \
                    else h.long().numpy().astype(object)
            else:
                h, ha = apply_layer(layer, h), ha_next
                continue
        h_obj = _apply_exact(layer, h_obj)
    if h_obj is None:
        assert h is not None
        return h.round().long().numpy()
    big = h_obj.size and max(abs(int(v)) for v in h_obj.ravel()) >= 1 << 62
    return h_obj if big else h_obj.astype(np.int64)


def dequantize(net: IntegerNet, template: nn.Module) -> nn.Module:
    """The float model the integer network stands for: weights int/p, biases int/scale."""
    model = copy.deepcopy(template)
    layers = iter(zip(net.layers, net.scales))
    with torch.no_grad():
        for m in linear_modules(model):
            layer, s = next(layers)
            if layer.kind in ("conv", "linear"):
                if not isinstance(m, (nn.Conv2d, nn.Linear)):
                    raise HEError(f"a {layer.kind} layer does not match the architecture's {type(m).__name__}")
                weight, bias = layer.params()
                if tuple(m.weight.shape) != weight.shape:
                    raise HEError(f"weight shape {weight.shape} does not match the architecture's "
                                  f"{tuple(m.weight.shape)}")
                m.weight.copy_(torch.from_numpy(weight).double() / net.p)
                if m.bias is not None:
                    m.bias.copy_(torch.from_numpy(bias).double() / s)
    model.eval()
    return model

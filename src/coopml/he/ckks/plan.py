"""Compile a torch model into what the CKKS engine evaluates (contributor side).

A supported model is a chain of affine layers (Conv2d, AvgPool2d, Linear, BatchNorm in eval
mode, Flatten, ZeroPad2d, Identity, Dropout in eval mode, ...) and element-wise polynomial
activations (`coopml.models.PolyActivation`: Square, TaylorSigmoid). Every run of affine layers
is folded into one matrix (cheaper: the whole Table IV network is one 794 x 785 product, where
layer by layer it would be ~3x more multiply-adds), and each polynomial activation's
coefficients are folded into the next matrix, so the engine only ever computes

    block 0:  y = A_0 x + b_0                      (x: the images)
    block i:  y = sum_d A_i,d y_{i-1}^d + b_i      (y^d: element-wise powers, ciphertext products)

and the last block outputs [features; logits] together (logits = head(features), folded).

Overflow is ruled out, not estimated: interval arithmetic over the declared input range gives
a bound on every value the circuit produces; `params_for` sizes the moduli from those bounds.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from coopml.he.ckks.errors import PlanError, UnsupportedLayerError
from coopml.he.ckks.params import MAX_MODULUS_BITS_128, MAX_PRIME_BITS, CkksParams, special_prime_bits
from coopml.models.activations import PolyActivation

# Layers that are affine in their input (in eval mode), hence foldable into a matrix.
AFFINE_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Conv1d, nn.Conv2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Linear, nn.Flatten,
    nn.Unflatten, nn.BatchNorm1d, nn.BatchNorm2d, nn.ZeroPad2d, nn.ConstantPad2d, nn.Identity,
    nn.Dropout, nn.Dropout2d,
)
HINT = "use Square/TaylorSigmoid or choose the task's plaintext-to-verifiers mode"
MAX_DEGREE = 8


def _leaves(module: nn.Module, prefix: str) -> list[tuple[str, nn.Module]]:
    if isinstance(module, nn.Sequential):
        out: list[tuple[str, nn.Module]] = []
        for name, child in module.named_children():
            out += _leaves(child, f"{prefix}.{name}" if prefix else name)
        return out
    return [(prefix or type(module).__name__, module)]


def _check(name: str, layer: nn.Module) -> None:
    if isinstance(layer, PolyActivation):
        if not 1 <= layer.degree <= MAX_DEGREE or not all(math.isfinite(c) for c in layer.coefficients):
            raise UnsupportedLayerError(f"layer {name} ({type(layer).__name__}) has a polynomial of degree "
                                        f"{layer.degree}; the engine evaluates degrees 1..{MAX_DEGREE}")
        return
    if not isinstance(layer, AFFINE_LAYERS):
        raise UnsupportedLayerError(f"layer {name} ({type(layer).__name__}) cannot be evaluated under CKKS; {HINT}")


@dataclass
class Block:
    """out = matrix @ [monomials of the previous block's outputs..., 1]; then (unless last)
    the element-wise powers `powers` of `out` feed the next block."""

    matrix: np.ndarray                 # (m, K + 1) float64, last column = bias
    powers: tuple[int, ...]            # degrees the next block consumes (empty for the last block)
    in_sizes: tuple[int, ...]          # ciphertext size (polynomials) of each monomial group feeding this block
    out_bound: np.ndarray              # (m,) rigorous max |out|
    monomial_bounds: dict[int, float] = field(default_factory=dict)   # max |out^d| over units, per power

    @property
    def out_dim(self) -> int:
        return int(self.matrix.shape[0])


@dataclass
class HePlan:
    """What the contributor evaluates; holds the model's (folded) weights: never sent anywhere."""

    arch: str
    input_shape: tuple[int, ...]
    input_range: tuple[float, float]
    feature_dim: int
    num_classes: int
    blocks: list[Block]

    @property
    def input_dim(self) -> int:
        return int(np.prod(self.input_shape))

    @property
    def depth(self) -> int:
        """Rescalings: one per non-final affine block and one per squaring level of each activation."""
        return sum(1 + _power_depth(max(b.powers)) for b in self.blocks[:-1])

    @property
    def output_size(self) -> int:
        """Polynomials per output ciphertext (no relinearization: a degree-d monomial has d+1)."""
        return max(self.blocks[-1].in_sizes)

    @property
    def output_bound(self) -> float:
        return float(self.blocks[-1].out_bound.max())

    def forward_plain(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The folded circuit in float64 (reference for tests and for accuracy checks)."""
        z = x.reshape(len(x), -1).astype(np.float64)
        for block in self.blocks:
            y = np.concatenate([z, np.ones((len(z), 1))], axis=1) @ block.matrix.T
            if block.powers:
                z = np.concatenate([y ** d for d in block.powers], axis=1)
        return y[:, :self.feature_dim], y[:, self.feature_dim:]

    def describe(self) -> str:
        parts = [f"{b.out_dim}x{b.matrix.shape[1]}" + (f" -> powers {list(b.powers)}" if b.powers else "")
                 for b in self.blocks]
        return (f"{self.arch}: blocks {' | '.join(parts)}; depth {self.depth}; output ciphertexts of "
                f"{self.output_size} polynomials; |outputs| <= {self.output_bound:.3g}")


def _power_depth(d: int) -> int:
    return max(0, math.ceil(math.log2(d))) if d > 1 else 0


def power_chain(degrees: tuple[int, ...]) -> dict[int, tuple[int, int]]:
    """How to build every needed power: d -> (a, b) with d = a + b, a >= b, depth ceil(log2 d)."""
    need: dict[int, tuple[int, int]] = {}
    todo = [d for d in degrees if d > 1]
    while todo:
        d = todo.pop()
        if d in need:
            continue
        a, b = (d + 1) // 2, d // 2
        need[d] = (a, b)
        todo += [p for p in (a, b) if p > 1 and p not in need]
    return dict(sorted(need.items()))


def _affine(layers: list[nn.Module], in_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """Matrix (out, in) and bias of a run of affine layers, by evaluating them on the unit basis."""
    k = int(np.prod(in_shape))
    seq = nn.Sequential(*layers).double().eval()
    with torch.no_grad():
        basis = torch.cat([torch.zeros(1, k, dtype=torch.float64), torch.eye(k, dtype=torch.float64)])
        out = seq(basis.reshape(k + 1, *in_shape))
    out_shape = tuple(out.shape[1:])
    flat = out.reshape(k + 1, -1).numpy()
    bias = flat[0].copy()
    return (flat[1:] - bias).T.copy(), bias, out_shape


def _interval_affine(a: np.ndarray, b: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    c, r = (lo + hi) / 2, (hi - lo) / 2
    mid, rad = a @ c + b, np.abs(a) @ r
    slack = 1e-9 * (np.abs(mid) + rad) + 1e-12
    return mid - rad - slack, mid + rad + slack


def _interval_power(lo: np.ndarray, hi: np.ndarray, d: int) -> tuple[np.ndarray, np.ndarray]:
    a, b = lo ** d, hi ** d
    top = np.maximum(a, b)
    bottom = np.minimum(a, b)
    if d % 2 == 0:
        bottom = np.where((lo <= 0) & (hi >= 0), 0.0, bottom)
    return bottom, top


def compile_model(model: nn.Module, input_shape: tuple[int, ...],
                  input_range: tuple[float, float] = (0.0, 1.0)) -> HePlan:
    """Check every layer, fold affine runs and activations, bound every value; raises
    UnsupportedLayerError naming the first layer CKKS cannot evaluate."""
    if hasattr(model, "body") and hasattr(model, "head"):
        body = _leaves(model.body, "body")
        head = _leaves(model.head, "head")
    elif isinstance(model, nn.Sequential) and len(model) >= 2:
        leaves = _leaves(model, "")
        body, head = leaves[:-1], leaves[-1:]
    else:
        raise PlanError("compile_model needs a FeatureModel (body + head) or an nn.Sequential whose last "
                        "layer is the classifier head")
    for name, layer in body + head:
        _check(name, layer)
    for name, layer in head:
        if isinstance(layer, PolyActivation):
            raise UnsupportedLayerError(f"layer {name} ({type(layer).__name__}): the head must be affine "
                                        f"(features are the last activation's output); move it into the body")
    net = copy.deepcopy(model).double().eval()
    names = dict(net.named_modules())
    body_layers = [(n, names[n] if n in names else layer) for n, layer in body]
    head_layers = [names[n] if n in names else layer for n, layer in head]

    lo_v, hi_v = float(input_range[0]), float(input_range[1])
    shape = tuple(int(s) for s in input_shape)
    k = int(np.prod(shape))
    lo, hi = np.full(k, lo_v), np.full(k, hi_v)
    blocks: list[Block] = []
    prev_poly: tuple[float, ...] | None = None      # activation applied to the previous block's outputs
    prev_powers: tuple[int, ...] = (1,)
    in_sizes: tuple[int, ...] = (2,)
    segment: list[nn.Module] = []

    def fold(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Matrix over [monomials..., 1] for affine (a, b) applied to poly(previous outputs)."""
        if prev_poly is None:
            return np.concatenate([a, b[:, None]], axis=1)
        cols = [prev_poly[d] * a for d in prev_powers]
        bias = b + prev_poly[0] * a.sum(axis=1)
        return np.concatenate(cols + [bias[:, None]], axis=1)

    def close(a: np.ndarray, b: np.ndarray, powers: tuple[int, ...]) -> Block:
        nonlocal lo, hi
        matrix = fold(a, b)
        zlo, zhi = lo, hi
        ylo, yhi = _interval_affine(matrix[:, :-1], matrix[:, -1], zlo, zhi)
        bound = np.maximum(np.abs(ylo), np.abs(yhi))
        block = Block(matrix, powers, in_sizes, bound)
        if powers:
            chain = set(power_chain(powers)) | set(powers) | {1}
            mono: dict[int, float] = {}
            los, his = [], []
            for d in sorted(chain):
                plo, phi = _interval_power(ylo, yhi, d)
                mono[d] = float(np.maximum(np.abs(plo), np.abs(phi)).max())
                if d in powers:
                    los.append(plo)
                    his.append(phi)
            block.monomial_bounds = mono
            lo, hi = np.concatenate(los), np.concatenate(his)
        return block

    for name, layer in body_layers:
        if isinstance(layer, PolyActivation):
            a, b, shape_out = _affine(segment, shape) if segment else (np.eye(int(np.prod(shape))),
                                                                      np.zeros(int(np.prod(shape))), shape)
            coeffs = tuple(float(c) for c in layer.coefficients)
            powers = tuple(d for d in range(1, len(coeffs)) if coeffs[d] != 0.0)
            if not powers:
                raise UnsupportedLayerError(f"layer {name} ({type(layer).__name__}) is a constant")
            blocks.append(close(a, b, powers))
            prev_poly, prev_powers = coeffs, powers
            in_sizes = tuple(d + 1 for d in powers)
            shape, segment = shape_out, []
        else:
            segment.append(layer)
    # features: the tail of the body; logits: head(features). One final block for both.
    if segment:
        fa, fb, fshape = _affine(segment, shape)
    else:
        n_in = int(np.prod(shape))
        fa, fb, fshape = np.eye(n_in), np.zeros(n_in), shape
    feature_dim = fa.shape[0]
    ha, hb, hshape = _affine(head_layers, (feature_dim,) if len(fshape) == 1 else fshape)
    if ha.shape[1] != feature_dim:
        raise PlanError(f"head expects {ha.shape[1]} inputs, the body produces {feature_dim}")
    num_classes = ha.shape[0]
    final_a = np.concatenate([fa, ha @ fa])
    final_b = np.concatenate([fb, ha @ fb + hb])
    blocks.append(close(final_a, final_b, ()))
    arch = getattr(model, "arch", "") or type(model).__name__
    return HePlan(arch, tuple(int(s) for s in input_shape), (lo_v, hi_v), feature_dim, num_classes, blocks)


def _log2(x: float) -> float:
    return math.log2(x) if x > 0 else -1e9


def _fits(plan: HePlan, scale_bits: int, weight_bits: int, n: int) -> tuple[int, ...] | None:
    """Prime sizes [q0, ..., q_top, special] for this plan under N, or None if it cannot fit.

    Evaluation consumes primes from the top: a non-final block's product (scale 2^scale x q_top)
    is rescaled by a weight_bits prime back to 2^scale; each squaring level of its activation by
    a scale_bits prime; the final block lands in q0 with scale ~2^(scale + weight). Every value
    v at scale s on a level with modulus Q must satisfy |v| s < Q / 4.
    """
    q0 = scale_bits + weight_bits + max(0, math.ceil(_log2(plan.output_bound))) + 3
    if q0 > MAX_PRIME_BITS:
        return None
    consumed: list[int] = []
    for block in plan.blocks[:-1]:
        consumed.append(weight_bits)
        consumed += [scale_bits] * _power_depth(max(block.powers))
    bits = [q0] + list(reversed(consumed))
    level = len(bits) - 1
    for block in plan.blocks[:-1]:
        if scale_bits + _log2(float(block.out_bound.max())) + 2 > sum(bits[:level]):
            return None
        level -= 1                               # rescaled by the weight prime
        for d, bound in block.monomial_bounds.items():
            lvl = level - _power_depth(d)
            if scale_bits + _log2(bound) + 2 > sum(bits[:lvl + 1]):
                return None
        level -= _power_depth(max(block.powers))
    if len(bits) > 1:
        bits.append(special_prime_bits(n))
    if sum(bits) > MAX_MODULUS_BITS_128[n]:
        return None
    return tuple(bits)


def params_for(plan: HePlan | int, input_range: tuple[float, float] | None = None) -> CkksParams:
    """The smallest (traffic ~ N x modulus bits) 128-bit-secure parameters that evaluate `plan`
    without overflow, with input scale >= 2^20 and weights quantized to >= 16 bits of their
    scale. An int is read as a bare depth for a model whose outputs stay below 2^10."""
    if isinstance(plan, int):
        depth = plan
        for n in sorted(MAX_MODULUS_BITS_128):
            for scale_bits, weight_bits in ((25, 20), (22, 18), (20, 16)):
                bits = [scale_bits + weight_bits + 13] + [scale_bits] * depth
                if len(bits) > 1:
                    bits.append(special_prime_bits(n))
                if max(bits) <= MAX_PRIME_BITS and sum(bits) <= MAX_MODULUS_BITS_128[n]:
                    return CkksParams.create(poly_modulus_degree=n, coeff_mod_bit_sizes=tuple(bits),
                                             scale_bits=scale_bits, input_range=input_range or (0.0, 1.0))
        raise PlanError(f"no 128-bit-secure parameters for depth {depth}")
    for n in sorted(MAX_MODULUS_BITS_128):
        if n < 2048:
            continue
        if not plan.blocks[:-1]:
            # affine model: one prime holds everything; share its bits between input scale and weights
            out_bits = max(0, math.ceil(math.log2(plan.output_bound + 1e-30)))
            q0 = min(MAX_PRIME_BITS, MAX_MODULUS_BITS_128[n])
            room = q0 - out_bits - 3
            if room < 36:
                continue
            scale_bits = min(30, room // 2)
            return CkksParams.create(poly_modulus_degree=n, coeff_mod_bit_sizes=(q0,), scale_bits=scale_bits,
                                     input_range=plan.input_range)
        for scale_bits, weight_bits in ((25, 20), (24, 20), (22, 18), (20, 16)):
            bits = _fits(plan, scale_bits, weight_bits, n)
            if bits is not None:
                return CkksParams.create(poly_modulus_degree=n, coeff_mod_bit_sizes=bits, scale_bits=scale_bits,
                                         input_range=plan.input_range)
    raise PlanError(f"{plan.arch}: no 128-bit-secure CKKS parameters up to N=32768 fit this circuit "
                    f"(depth {plan.depth}, |outputs| <= {plan.output_bound:.3g}); shrink the activations' range")

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
from coopml.he.ckks.params import (
    MAX_MODULUS_BITS_128,
    MAX_PRIME_BITS,
    CkksParams,
    distinct_primes,
    special_prime_bits,
)
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
        """Multiplicative depth: one per non-final affine block and one per squaring level of
        each activation (a final rescale, when the schedule needs one, comes on top)."""
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


def _affine(layers: list[nn.Module], in_shape: tuple[int, ...],
            exact: bool = True) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """Matrix (out, in) and bias of a run of affine layers, in float64 (`exact`) or in float32,
    ~1e-6 relative off: enough to size parameters, not to evaluate with.

    The bias is the run's output at zero. The matrix is read off whichever side is smaller:
    - fewer outputs than inputs (a model's class scores: 10 against 784 pixels): reverse mode, row
      i is the gradient of output i, all rows from one backward pass over a batch of zeros —
      Table IV's exact fold 1.3 CPU-s -> a few ms, and ~1 GB less peak memory;
    - else forward: the run evaluated on the unit basis (float32 in channels-last when not
      `exact`, ~9x cheaper: Table IV 0.18 instead of 1.67 CPU-s)."""
    k = int(np.prod(in_shape))
    dtype = torch.float64 if exact else torch.float32
    seq = nn.Sequential(*layers).to(dtype).eval()
    with torch.no_grad():
        at_zero = seq(torch.zeros(1, *in_shape, dtype=dtype))
    out_shape = tuple(at_zero.shape[1:])
    m = int(np.prod(out_shape))
    bias = at_zero.reshape(-1).double().numpy().copy()
    if m < k:
        with torch.enable_grad():
            x = torch.zeros(m, *in_shape, dtype=dtype, requires_grad=True)
            y = seq(x).reshape(m, m)                 # sample i contributes output i to the sum
            (grad,) = torch.autograd.grad(y.diagonal().sum(), x)
        return grad.reshape(m, k).double().numpy().copy(), bias, out_shape
    with torch.no_grad():
        basis = torch.eye(k, dtype=dtype).reshape(k, *in_shape)
        if not exact and basis.dim() == 4:
            seq = seq.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # documented keyword
            basis = basis.contiguous(memory_format=torch.channels_last)
        out = seq(basis)
    flat = out.reshape(k, -1).double().numpy()
    return (flat - bias).T.copy(), bias, out_shape


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
                  input_range: tuple[float, float] = (0.0, 1.0), exact: bool = True) -> HePlan:
    """Check every layer, fold affine runs and activations, bound every value; raises
    UnsupportedLayerError naming the first layer CKKS cannot evaluate. `exact=False` folds in
    float32 (see `_affine`): a plan to check a model and size its parameters, not to evaluate."""
    body_mod, head_mod = getattr(model, "body", None), getattr(model, "head", None)
    if isinstance(body_mod, nn.Module) and isinstance(head_mod, nn.Module):
        body = _leaves(body_mod, "body")
        head = _leaves(head_mod, "head")
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
    body_layers = [(n, names.get(n, layer)) for n, layer in body]
    head_layers = [names.get(n, layer) for n, layer in head]

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
            a, b, shape_out = _affine(segment, shape, exact) if segment else (np.eye(int(np.prod(shape))),
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
        fa, fb, fshape = _affine(segment, shape, exact)
    else:
        n_in = int(np.prod(shape))
        fa, fb, fshape = np.eye(n_in), np.zeros(n_in), shape
    feature_dim = fa.shape[0]
    ha, hb, _ = _affine(head_layers, (feature_dim,) if len(fshape) == 1 else fshape, exact)
    if ha.shape[1] != feature_dim:
        raise PlanError(f"head expects {ha.shape[1]} inputs, the body produces {feature_dim}")
    num_classes = ha.shape[0]
    final_a = np.concatenate([fa, ha @ fa])
    final_b = np.concatenate([fb, ha @ fb + hb])
    blocks.append(close(final_a, final_b, ()))
    arch = getattr(model, "arch", "") or type(model).__name__
    return HePlan(arch, tuple(int(s) for s in input_shape), (lo_v, hi_v), feature_dim, num_classes, blocks)


PRECISION_BITS = 18          # every value keeps ~2^-18 relative precision against CKKS noise
WEIGHT_BITS = 16             # integer weights keep >= 16 significant bits of their scale


def _log2(x: float) -> float:
    return math.log2(x) if x > 0 else -60.0


def noise_bits(n: int, size: int) -> float:
    """log2 of the slot-domain std of the rounding noise a rescale adds to a `size`-polynomial
    ciphertext: (d_0 + d_1 s + ... + d_(size-1) s^(size-1)), |d_i| <= 1/2, s ternary."""
    return math.log2(0.3) + 0.5 * math.log2(n) + 0.5 * (size - 1) * math.log2(2 * n / 3)


def floor_bits(n: int, size: int) -> int:
    """Smallest scale (bits) at which a rescaled `size`-polynomial ciphertext keeps PRECISION_BITS."""
    return math.ceil(noise_bits(n, size) + PRECISION_BITS)


@dataclass(frozen=True)
class Schedule:
    """The scales an evaluation uses under ring degree N (recomputed identically on both sides)."""

    n: int
    input_scale_bits: int
    block_scale_bits: tuple[int, ...]        # per non-final block: scale after its rescale
    final_rescale: bool                      # the final block is rescaled once more before output
    final_scale_bits: int                    # outputs' scale (after the final rescale, if any)
    prime_bits: tuple[int, ...]              # data primes [q0, ..., q_top]


def schedule(plan: HePlan, n: int) -> Schedule | None:
    """Choose scales and prime sizes for `plan` under N; None if some prime would exceed 60 bits.

    Evaluation consumes primes from the top. `reqs` collects (primes consumed so far, bits a
    value needs: |v| * scale * 4 < Q); q0 is then the smallest prime meeting all of them."""
    minp = special_prime_bits(n)
    sx = math.ceil(math.log2(3.2) + 0.5 * math.log2(n) + PRECISION_BITS)     # fresh-encryption noise floor
    top: list[int] = []
    reqs: list[tuple[int, float]] = []
    block_scales: list[int] = []
    in_scale, in_size = float(sx), 2
    for block in plan.blocks[:-1]:
        bound = float(block.out_bound.max())
        t = floor_bits(n, in_size)
        r = max(minp, math.ceil(WEIGHT_BITS + in_scale - t))
        reqs.append((len(top), t + r + _log2(bound) + 2))
        top.append(r)
        reqs.append((len(top), t + _log2(bound) + 2))
        block_scales.append(t)
        scales: dict[int, float] = {1: float(t)}
        sizes: dict[int, int] = {1: in_size}
        chain = power_chain(block.powers)
        for depth in range(1, _power_depth(max(block.powers)) + 1):
            prods = [d for d in chain if _power_depth(d) == depth]
            want = []
            for d in prods:
                a, b = chain[d]
                sizes[d] = sizes[a] + sizes[b] - 1
                want.append(scales[a] + scales[b] - floor_bits(n, sizes[d]))
                reqs.append((len(top), scales[a] + scales[b] + _log2(block.monomial_bounds[d]) + 2))
            r = max(minp, math.floor(min(want)))
            if r > MAX_PRIME_BITS:
                return None
            top.append(r)
            for d in prods:
                a, b = chain[d]
                scales[d] = scales[a] + scales[b] - r
                reqs.append((len(top), scales[d] + _log2(block.monomial_bounds[d]) + 2))
        for d in block.powers:
            reqs.append((len(top), scales[d] + _log2(block.monomial_bounds[d]) + 2))
        in_scale = max(scales[d] for d in block.powers)
        in_size = max(sizes[d] for d in block.powers)
    out_bits = _log2(plan.output_bound)
    s_out = in_scale + WEIGHT_BITS
    final_rescale = bool(plan.blocks[:-1]) and s_out + out_bits + 3 > MAX_PRIME_BITS
    if final_rescale:
        final = floor_bits(n, in_size)
        r = max(minp, math.ceil(s_out - final))
        reqs.append((len(top), final + r + out_bits + 2))
        top.append(r)
        final_bits = final
    else:
        final_bits = math.ceil(s_out)
    reqs.append((len(top), final_bits + out_bits + 3))
    q0 = max(math.ceil(v - sum(top[c:])) for c, v in reqs)
    if not plan.blocks[:-1]:
        q0 = max(q0, min(MAX_PRIME_BITS, MAX_MODULUS_BITS_128[n]))   # one prime: use all it may have
    if q0 > MAX_PRIME_BITS:
        return None
    q0 = max(q0, minp)
    return Schedule(n, sx, tuple(block_scales), final_rescale, final_bits, (q0,) + tuple(reversed(top)))


def params_for(plan: HePlan | int, input_range: tuple[float, float] | None = None) -> CkksParams:
    """The smallest (traffic ~ N x modulus bits) 128-bit-secure parameters that evaluate `plan`
    without overflow and with ~2^-18 relative precision. An int is read as a bare
    multiplicative depth (squarings) for a network whose values stay below 2^8."""
    if isinstance(plan, int):
        depth = plan
        for n in sorted(MAX_MODULUS_BITS_128):
            sx = math.ceil(math.log2(3.2) + 0.5 * math.log2(n) + PRECISION_BITS)
            wanted = [min(MAX_PRIME_BITS, sx + WEIGHT_BITS + 12)] + [floor_bits(n, 3)] * depth
            if len(wanted) > 1:
                wanted.append(special_prime_bits(n))
            bits = distinct_primes(n, tuple(wanted))
            if sum(bits) <= MAX_MODULUS_BITS_128[n] and n >= 2048:
                return CkksParams.create(poly_modulus_degree=n, coeff_mod_bit_sizes=bits, scale_bits=sx,
                                         input_range=input_range or (0.0, 1.0), complex_packing=depth == 0)
        raise PlanError(f"no 128-bit-secure parameters for depth {depth}")
    for n in sorted(MAX_MODULUS_BITS_128):
        if n < 2048:
            continue
        sched = schedule(plan, n)
        if sched is None:
            continue
        bits = sched.prime_bits + ((special_prime_bits(n),) if len(sched.prime_bits) > 1 else ())
        bits = distinct_primes(n, bits)
        if sum(bits) <= MAX_MODULUS_BITS_128[n]:
            return CkksParams.create(poly_modulus_degree=n, coeff_mod_bit_sizes=bits,
                                     scale_bits=sched.input_scale_bits, input_range=plan.input_range,
                                     complex_packing=not plan.blocks[:-1])
    raise PlanError(f"{plan.arch}: no 128-bit-secure CKKS parameters up to N=32768 fit this circuit "
                    f"(depth {plan.depth}, |outputs| <= {plan.output_bound:.3g}); shrink the activations' range")

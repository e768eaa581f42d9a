"""The contributor's side: evaluate a compiled model on an encrypted batch (no secret key).

Per group of N images:
1. expand the seeded input ciphertexts (SEAL regenerates their second polynomials);
2. each affine block is one exact modular matrix product over the ciphertexts' coefficient
   arrays (`modmath.modmatmul`), with integer weights round(w * out_scale / in_scale) and the
   bias as the weight of a public-key encryption of the constant 1 (+1i);
3. a non-final block is rescaled (SEAL), then SEAL multiplies ciphertexts to build the powers
   its activation needs, rescaling after each product. No relinearization: a degree-d power
   is a (d+1)-polynomial ciphertext, which SEAL decrypts directly;
4. the final block's outputs [features; logits] land in the last prime q0 and each gets a
   fresh public-key encryption of zero added (hides the linear relation between input and
   output ciphertexts, which otherwise gives the model's weights away); they leave NTT form
   so that their low-order bits, pure noise, can be rounded away on the wire.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import tenseal.sealapi as seal

from coopml.he.ckks import _seal
from coopml.he.ckks.batch import EncryptedBatch, EncryptedOutputs, PublicContext
from coopml.he.ckks.errors import PlanError
from coopml.he.ckks.modmath import modmatmul
from coopml.he.ckks.params import SealContext
from coopml.he.ckks.plan import Block, HePlan, power_chain, schedule

MIN_WEIGHT_BITS = 12        # final-block weights keep at least this much precision
OUTPUT_PRECISION_BITS = 20  # rounding of output ciphertexts stays below 2^-20 (value units)


@dataclass
class Cts:
    """Raw ciphertexts on one level: data (count, size, L, N) uint64 and one scale per ciphertext."""

    data: np.ndarray
    scales: np.ndarray
    level: int


class _Evaluator:
    def __init__(self, context: PublicContext) -> None:
        self.ctx = context
        self.sc: SealContext = context.seal
        self.n = context.params.poly_modulus_degree
        self.encryptor = seal.Encryptor(self.sc.context, context.public_key)
        self.ev = self.sc.evaluator

    # ------------------------------------------------------------ SEAL round trips
    def to_seal(self, data: np.ndarray, scale: float, level: int) -> seal.Ciphertext:
        raw = _seal.RawCiphertext(self.sc.level_ids[level], scale, data, int(data.shape[0]))
        ct = seal.Ciphertext()
        _seal.load_into(ct, self.sc.context, _seal.build_ciphertext(raw))
        return ct

    def from_seal(self, ct: seal.Ciphertext) -> tuple[np.ndarray, float, int]:
        level = self.sc.level_of(ct.parms_id())
        raw = _seal.parse_ciphertext(_seal.save_bytes(ct), self.n, level + 1, 16)
        return raw.data, raw.scale, level

    def trivial_const(self, value: complex, scale: float, level: int) -> np.ndarray:
        """Noiseless (c1 = 0) ciphertext of `value` in every slot: the plaintext itself. It only
        ever enters a sum with real ciphertexts, so the output stays a proper encryption."""
        pt = seal.Plaintext()
        self.sc.encoder.encode(complex(value), self.sc.level_ids[level], scale, pt)
        data = np.zeros((2, level + 1, self.n), dtype=np.uint64)
        data[0] = _seal.parse_plaintext(_seal.save_bytes(pt), self.n, level + 1)
        return data

    def finish(self, data: np.ndarray, scale: float, level: int) -> tuple[np.ndarray, float]:
        """Rescale down to q0 if above it, add a fresh public-key encryption of zero, leave NTT
        form (so the verifier receives coefficients that can be rounded): (size, N) and scale."""
        ct = self.to_seal(data, scale, level)
        if level:
            self.ev.rescale_to_next_inplace(ct)
        zero = seal.Ciphertext()
        self.encryptor.encrypt_zero(self.sc.level_ids[0], zero)
        zero.scale = ct.scale
        self.ev.add_inplace(ct, zero)
        self.ev.transform_from_ntt_inplace(ct)
        raw = _seal.parse_ciphertext(_seal.save_bytes(ct), self.n, 1, 16)
        return raw.data[:, 0, :], raw.scale

    # ------------------------------------------------------------ blocks
    def affine(self, block: Block, x: Cts, out_scale: float) -> Cts:
        """out_j = sum_k W_jk x_k + W_j,bias * Enc(1+1i): one modmatmul per prime."""
        level = x.level
        size = x.data.shape[1]
        one_scale = float(2 ** self.ctx.params.scale_bits)
        one = self.trivial_const(1 + 1j if self.ctx.params.complex_packing else 1.0, one_scale, level)
        pad = np.zeros((size,) + one.shape[1:], dtype=np.uint64)
        pad[:2] = one
        inputs = np.concatenate([x.data, pad[None]], axis=0)            # (K + 1, size, L, N)
        in_scales = np.concatenate([x.scales, [one_scale]])
        weights = np.rint(block.matrix * (out_scale / in_scales)[None, :])
        if not np.isfinite(weights).all() or np.abs(weights).max() >= 2.0 ** 62:
            raise PlanError("integer weights overflow 62 bits: a weight is too large for these parameters")
        w_int = weights.astype(np.int64)
        m = block.out_dim
        out = np.empty((m, size, level + 1, self.n), dtype=np.uint64)
        for limb in range(level + 1):
            xs = inputs[:, :, limb, :].reshape(len(inputs), size * self.n)
            out[:, :, limb, :] = modmatmul(w_int, xs, self.sc.primes[limb]).reshape(m, size, self.n)
        return Cts(out, np.full(m, out_scale), level)

    def activation(self, y: Cts, powers: tuple[int, ...]) -> Cts:
        """Rescale y, then the element-wise powers y^d (d in `powers`), all on one level."""
        chain = power_chain(powers)
        results: list[dict[int, seal.Ciphertext]] = []
        for j in range(len(y.data)):
            ct = self.to_seal(y.data[j], float(y.scales[j]), y.level)
            self.ev.rescale_to_next_inplace(ct)
            got: dict[int, seal.Ciphertext] = {1: ct}
            for d, (a, b) in chain.items():
                left, right = got[a], got[b]
                if left.coeff_modulus_size() != right.coeff_modulus_size():
                    high, low = (left, right) if left.coeff_modulus_size() > right.coeff_modulus_size() else (right, left)
                    switched = seal.Ciphertext()
                    self.ev.mod_switch_to(high, low.parms_id(), switched)
                    left, right = switched, low
                prod = seal.Ciphertext()
                self.ev.multiply(left, right, prod)
                self.ev.rescale_to_next_inplace(prod)
                got[d] = prod
            results.append(got)
        lowest = min(results[0][d].coeff_modulus_size() for d in powers) - 1
        size = max(powers) + 1
        m = len(y.data)
        data = np.zeros((len(powers) * m, size, lowest + 1, self.n), dtype=np.uint64)
        scales = np.empty(len(powers) * m)
        for i, d in enumerate(powers):
            for j, got in enumerate(results):
                ct = got[d]
                if ct.coeff_modulus_size() - 1 > lowest:
                    switched = seal.Ciphertext()
                    self.ev.mod_switch_to(ct, self.sc.level_ids[lowest], switched)
                    ct = switched
                raw, scale, _ = self.from_seal(ct)
                data[i * m + j, :raw.shape[0]] = raw
                scales[i * m + j] = scale
        return Cts(data, scales, lowest)

    def drop_to(self, x: Cts, level: int) -> Cts:
        """Mod-switch by dropping primes (values must already fit the smaller modulus)."""
        return Cts(np.ascontiguousarray(x.data[:, :, :level + 1]), x.scales, level)


def _output_shift(scale: float, size: int, n: int, q0: int) -> int:
    """Bits of each output coefficient below the precision target: rounding c_i to multiples of
    2^shift adds sum_i delta_i s^i, whose slots have std ~ 2^shift sqrt(N) (2N/3)^((size-1)/2)."""
    noise_bits = 0.5 * math.log2(n) + 0.5 * (size - 1) * math.log2(2 * n / 3)
    shift = math.floor(math.log2(scale) - OUTPUT_PRECISION_BITS - noise_bits)
    shift = max(0, min(shift, q0.bit_length() - 8))
    # round up to whole bytes of kept bits (keeps a little more precision, never less)
    kept = -(-(q0.bit_length() - shift) // 8) * 8
    return max(0, q0.bit_length() - kept)


def _fit(value_bound: float, scale: float, primes: tuple[int, ...], level: int, what: str) -> None:
    """Refuse any step whose values could wrap around the modulus (|v| scale * 4 < Q)."""
    q_bits = sum(math.log2(q) for q in primes[:level + 1])
    if math.log2(max(value_bound, 1e-30)) + math.log2(scale) + 2 > q_bits:
        raise PlanError(f"{what}: values up to {value_bound:.3g} at scale 2^{math.log2(scale):.1f} overflow the "
                        f"{q_bits:.0f}-bit modulus of level {level}; these parameters were not made for this "
                        "model (use params_for(plan))")


def evaluate(plan: HePlan, batch: EncryptedBatch) -> EncryptedOutputs:
    """Run `plan` on `batch`; returns ciphertexts under the verifier's key (contributor learns nothing)."""
    params = batch.params
    if tuple(batch.input_shape) != tuple(plan.input_shape):
        raise PlanError(f"the batch holds images of shape {batch.input_shape}, the model takes {plan.input_shape}")
    lo, hi = params.input_range
    if lo < plan.input_range[0] or hi > plan.input_range[1]:
        raise PlanError(f"the verifier's input range [{lo}, {hi}] exceeds the one the model was compiled "
                        f"for {list(plan.input_range)}")
    if plan.blocks[:-1] and params.complex_packing:
        raise PlanError(f"{plan.arch} has polynomial activations: it needs real packing "
                        "(CkksParams(complex_packing=False)); use params_for(plan)")
    sched = schedule(plan, params.poly_modulus_degree)
    if sched is None or len(sched.prime_bits) != params.data_primes:
        need = "?" if sched is None else len(sched.prime_bits)
        raise PlanError(f"{plan.arch} needs {need} data primes under N={params.poly_modulus_degree}, the verifier's "
                        f"parameters have {params.data_primes}; use params_for(plan)")
    ev = _Evaluator(batch.context)
    sc = ev.sc
    primes = sc.primes
    final = plan.blocks[-1]
    out_bound = max(float(final.out_bound.max()), 1e-30)
    groups: list[np.ndarray] = []
    out_scale_final = 0.0
    for g in range(batch.groups):
        data, scale = batch.expand(g)
        x = Cts(data, np.full(len(data), scale), sc.top)
        for i, block in enumerate(plan.blocks[:-1]):
            out_scale = float(2 ** sched.block_scale_bits[i]) * primes[x.level]
            _fit(float(block.out_bound.max()), out_scale, primes, x.level, f"block {i}")
            y = ev.affine(block, x, out_scale)
            x = ev.activation(y, block.powers)
            for d, bound in block.monomial_bounds.items():
                if d in block.powers:
                    _fit(bound, float(x.scales[block.powers.index(d) * block.out_dim]), primes, x.level,
                         f"block {i} power {d}")
        if sched.final_rescale:
            out_scale = float(2 ** sched.final_scale_bits) * primes[x.level]
        else:
            out_scale = 2.0 ** math.floor(math.log2(primes[x.level] / (4.0 * out_bound)))
        if out_scale / float(x.scales.max()) < 2 ** MIN_WEIGHT_BITS:
            raise PlanError(f"{plan.arch}: outputs up to {plan.output_bound:.3g} leave only "
                            f"{math.log2(out_scale / float(x.scales.max())):.1f} bits for the last layer's weights")
        _fit(out_bound, out_scale, primes, x.level, "final block")
        out = ev.affine(final, x, out_scale)
        finished = [ev.finish(out.data[j], out_scale, x.level) for j in range(len(out.data))]
        out_scale_final = finished[0][1]
        groups.append(np.stack([f[0] for f in finished]))
    data = np.stack(groups)
    size = int(data.shape[2])
    shift = _output_shift(out_scale_final, size, params.poly_modulus_degree, primes[0])
    return EncryptedOutputs(batch.context, batch.count, plan.feature_dim, plan.num_classes, out_scale_final, shift,
                            data)

"""CKKS parameters, their security check, and the SEAL objects they build.

Security: the HomomorphicEncryption.org standard (Albrecht et al., 2018), table for a ternary
secret and error sigma = 3.2, gives the largest total coefficient-modulus size (all primes,
special prime included) that keeps 128-bit classical security for each ring degree N. SEAL
enforces the same table (`CoeffModulus.MaxBitCount(N, tc128)`); we check it up front to fail
with a clear message, and SEAL checks again when the context is built.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import tenseal.sealapi as seal
from pydantic import (
    BaseModel,
    ConfigDict,
    ValidationError,
    field_validator,
    model_validator,
)

from coopml.he.ckks.errors import InsecureParametersError

# HomomorphicEncryption.org security standard, 128-bit classical, ternary secret: max log2(Q).
MAX_MODULUS_BITS_128 = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}
SECURITY_BITS = 128
MAX_PRIME_BITS = 60                # SEAL's limit on one prime of the coefficient modulus


@functools.cache
def special_prime_bits(n: int) -> int:
    """Smallest prime size with a prime = 1 mod 2N (SEAL's NTT needs one): 14 bits for N=2048,
    16 for 4096, 17 for 8192. The engine never key-switches, so a bigger one would be waste."""
    for bits in range(int(math.log2(2 * n)) + 1, MAX_PRIME_BITS + 1):
        try:
            seal.CoeffModulus.Create(n, [bits])
            return bits
        except (ValueError, RuntimeError):
            continue
    raise InsecureParametersError(f"no prime = 1 mod {2 * n} below 2^{MAX_PRIME_BITS}")  # pragma: no cover


@functools.cache
def prime_count(n: int, bits: int, most: int = 8) -> int:
    """How many distinct `bits`-bit primes = 1 mod 2N exist (capped at `most`)."""
    for k in range(most, 0, -1):
        try:
            seal.CoeffModulus.Create(n, [bits] * k)
            return k
        except (ValueError, RuntimeError):
            continue
    return 0


def distinct_primes(n: int, bits: tuple[int, ...], fixed: int = 1) -> tuple[int, ...]:
    """Bump repeated prime sizes (beyond the first `fixed` entries) until SEAL can find distinct
    primes for all of them; a larger rescaling prime only costs a bit of scale."""
    out = list(bits)
    for i in range(fixed, len(out)):
        while out[i] < MAX_PRIME_BITS and sum(1 for b in out[:i + 1] if b == out[i]) > prime_count(n, out[i]):
            out[i] += 1
    return tuple(out)


class CkksParams(BaseModel):
    """Public CKKS parameters of one verifier's query key.

    `coeff_mod_bit_sizes` follows SEAL/TenSEAL: the data primes from the last level up
    (q0 first; rescaling drops primes from the end), then, if there is more than one prime,
    the special prime SEAL reserves for key switching. The engine never key-switches (no
    relinearization, no rotations), so the special prime is the smallest one that exists.
    `scale_bits` is the encoding scale of the images; `input_range` the interval every
    pixel must lie in (the contributor's overflow bounds assume it). `complex_packing` puts
    images in the imaginary parts of the slots too (2x capacity); valid for affine models only,
    since a product of slots mixes real and imaginary parts.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    poly_modulus_degree: int
    coeff_mod_bit_sizes: tuple[int, ...]
    scale_bits: int
    input_range: tuple[float, float] = (0.0, 1.0)
    complex_packing: bool = True

    @field_validator("poly_modulus_degree")
    @classmethod
    def _degree(cls, n: int) -> int:
        if n not in MAX_MODULUS_BITS_128:
            raise ValueError(f"poly_modulus_degree must be one of {sorted(MAX_MODULUS_BITS_128)}, got {n}")
        return n

    @field_validator("coeff_mod_bit_sizes")
    @classmethod
    def _bits(cls, bits: tuple[int, ...]) -> tuple[int, ...]:
        if not 1 <= len(bits) <= 64:
            raise ValueError("coeff_mod_bit_sizes must list 1 to 64 primes")
        if any(not 10 <= b <= MAX_PRIME_BITS for b in bits):
            raise ValueError(f"every prime must have 10..{MAX_PRIME_BITS} bits, got {list(bits)}")
        return bits

    @field_validator("input_range")
    @classmethod
    def _range(cls, r: tuple[float, float]) -> tuple[float, float]:
        lo, hi = r
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi and max(abs(lo), abs(hi)) <= 1e6):
            raise ValueError(f"input_range must be a finite interval lo < hi, got {r}")
        return r

    @model_validator(mode="after")
    def _secure(self) -> CkksParams:
        limit = MAX_MODULUS_BITS_128[self.poly_modulus_degree]
        total = sum(self.coeff_mod_bit_sizes)
        if total > limit:
            raise ValueError(f"total coefficient modulus {total} bits exceeds {limit} bits, the "
                             f"HomomorphicEncryption.org 128-bit limit for N={self.poly_modulus_degree}")
        if len(self.coeff_mod_bit_sizes) > 1 and self.coeff_mod_bit_sizes[-1] < special_prime_bits(
                self.poly_modulus_degree):
            raise ValueError("the special prime is too small for this N")
        if not 10 <= self.scale_bits < self.data_bits:
            raise ValueError(f"scale_bits must be in 10..{self.data_bits - 1}, got {self.scale_bits}")
        return self

    @classmethod
    def create(cls, **kwargs: object) -> CkksParams:
        """Build and validate; raises InsecureParametersError (not pydantic's) on bad values."""
        try:
            return cls.model_validate(kwargs)
        except ValidationError as exc:
            raise InsecureParametersError(f"invalid CKKS parameters: {exc.errors()[0]['msg']}") from None

    @property
    def data_primes(self) -> int:
        return len(self.coeff_mod_bit_sizes) - (1 if len(self.coeff_mod_bit_sizes) > 1 else 0)

    @property
    def data_bits(self) -> int:
        return sum(self.coeff_mod_bit_sizes[:self.data_primes])

    @property
    def levels(self) -> int:
        """How many rescalings a fresh ciphertext can go through."""
        return self.data_primes - 1

    @property
    def capacity(self) -> int:
        """Images per ciphertext: N/2 complex slots, with complex packing an image in the real and
        one in the imaginary part of each."""
        return self.poly_modulus_degree if self.complex_packing else self.poly_modulus_degree // 2

    @property
    def total_bits(self) -> int:
        return sum(self.coeff_mod_bit_sizes)

    @property
    def security_bits(self) -> int:
        return SECURITY_BITS

    def describe(self) -> str:
        return (f"N={self.poly_modulus_degree}, primes {list(self.coeff_mod_bit_sizes)} bits "
                f"(total {self.total_bits} <= {MAX_MODULUS_BITS_128[self.poly_modulus_degree]} for "
                f"{SECURITY_BITS}-bit security), input scale 2^{self.scale_bits}, "
                f"{self.capacity} images per ciphertext ({'complex' if self.complex_packing else 'real'} packing)")


@dataclass(frozen=True)
class SealContext:
    """SEAL objects for one CkksParams (built once per process and parameter set)."""

    params: CkksParams
    context: seal.SEALContext
    primes: tuple[int, ...]             # data primes q0..q_top
    level_ids: tuple[tuple[int, int, int, int], ...]   # parms_id with primes q0..q_i, index i
    encoder: seal.CKKSEncoder
    evaluator: seal.Evaluator

    def level_of(self, parms_id: tuple[int, ...] | list[int]) -> int:
        key = tuple(parms_id)
        for i, pid in enumerate(self.level_ids):
            if pid == key:
                return i
        return -1

    @property
    def top(self) -> int:
        return len(self.primes) - 1


@functools.lru_cache(maxsize=8)
def seal_context(params: CkksParams) -> SealContext:
    n = params.poly_modulus_degree
    moduli = seal.CoeffModulus.Create(n, list(params.coeff_mod_bit_sizes))
    parms = seal.EncryptionParameters(seal.SCHEME_TYPE.CKKS)
    parms.set_poly_modulus_degree(n)
    parms.set_coeff_modulus(moduli)
    ctx = seal.SEALContext(parms, True, seal.SEC_LEVEL_TYPE.TC128)
    if not ctx.parameters_set():  # pragma: no cover - the validator mirrors SEAL's checks
        raise InsecureParametersError(f"SEAL refused the parameters {params.describe()}")
    primes = tuple(int(m.value()) for m in moduli[:params.data_primes])
    ids: list[tuple[int, int, int, int]] = []
    data = ctx.first_context_data()
    while data is not None:
        ids.append(tuple(data.parms_id()))
        data = data.next_context_data()
    ids.reverse()                       # index i -> primes q0..q_i
    if len(ids) != len(primes):  # pragma: no cover
        raise InsecureParametersError("unexpected SEAL modulus chain")
    return SealContext(params, ctx, primes, tuple(ids), seal.CKKSEncoder(ctx), seal.Evaluator(ctx))

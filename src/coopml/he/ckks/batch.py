"""What travels: the public context (verifier -> contributor), the encrypted batch of images
(verifier -> contributor) and the encrypted outputs (contributor -> verifier).

Layout ("images across slots"): a ciphertext has N/2 complex slots; image i of a group sits
in slot i mod N/2, in the real part for the first N/2 images of the group and (complex packing,
affine models only) in the imaginary part for the next N/2. Ciphertext p of a group holds
pixel p of all its images, so a linear layer is a linear combination of ciphertexts with real
scalar weights (no rotation, no Galois key) and it acts on real and imaginary parts alike.

Sizes on the wire: an input ciphertext is sent seeded (symmetric encryption: the second
polynomial is regenerated from a 64-byte seed), its first polynomial bit-packed (ceil(bits/8)
bytes per coefficient and prime). An output ciphertext is rounded to a multiple of 2^shift
(the dropped bits lie below the noise; see docs/ckks.md) and packed likewise.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Annotated, Any

import numpy as np
import tenseal.sealapi as seal
from pydantic import BaseModel, ConfigDict, Field, model_validator

from coopml.he.ckks import _seal
from coopml.he.ckks.errors import CkksFormatError, CkksKeyMismatchError
from coopml.he.ckks.modmath import pack, unpack
from coopml.he.ckks.params import CkksParams, SealContext, seal_context
from coopml.he.ckks.wire import (
    KIND_BATCH,
    KIND_CONTEXT,
    KIND_OUTPUTS,
    open_blob,
    seal_blob,
)

KeyId = Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
MAX_IMAGES = 1 << 20
MAX_INPUT_DIM = 1 << 16
MAX_OUTPUTS = 1 << 16
MAX_BLOB = 1 << 32
MAX_CT_SIZE = 9


def key_id_of(public_key: bytes) -> str:
    return hashlib.sha256(b"coopml-ckks-key" + public_key).hexdigest()[:32]


def prime_bytes(q: int) -> int:
    return (q.bit_length() + 7) // 8


# --------------------------------------------------------------------------- public context


class ContextHeader(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    params: CkksParams
    key_id: KeyId
    public_key_bytes: int = Field(ge=1, le=1 << 28)


@dataclass
class PublicContext:
    """Parameters + public key of one verifier's query key. No secret key, no relinearization or
    Galois keys (the engine never key-switches). The public key only serves to encrypt the
    constant 1 (biases) and fresh zeros that re-randomize the outputs."""

    params: CkksParams
    public_key_bytes: bytes
    key_id: str
    _pk: Any = field(default=None, repr=False)

    @property
    def seal(self) -> SealContext:
        return seal_context(self.params)

    @property
    def public_key(self) -> Any:
        if self._pk is None:
            pk = seal.PublicKey()
            _seal.open_envelope(self.public_key_bytes, _seal.payload_limit(2, self.params.poly_modulus_degree,
                                                                           len(self.params.coeff_mod_bit_sizes)))
            _seal.load_into(pk, self.seal.context, self.public_key_bytes)
            self._pk = pk
        return self._pk

    def to_bytes(self) -> bytes:
        header = ContextHeader(params=self.params, key_id=self.key_id, public_key_bytes=len(self.public_key_bytes))
        return seal_blob(KIND_CONTEXT, header, self.public_key_bytes)

    @classmethod
    def from_bytes(cls, data: bytes, max_bytes: int = 1 << 28) -> PublicContext:
        header, body = open_blob(data, KIND_CONTEXT, ContextHeader, max_bytes)
        if len(body) != header.public_key_bytes:
            raise CkksFormatError(f"public context body is {len(body)} bytes, header says {header.public_key_bytes}")
        pk_bytes = bytes(body)
        if key_id_of(pk_bytes) != header.key_id:
            raise CkksFormatError("public context key id does not match its public key")
        ctx = cls(header.params, pk_bytes, header.key_id)
        _ = ctx.public_key             # SEAL validates the key against the parameters now
        return ctx

    def check(self, params: CkksParams, key_id: str, what: str) -> None:
        if key_id != self.key_id:
            raise CkksKeyMismatchError(f"{what} was made for key {key_id}, this context is key {self.key_id}")
        if params != self.params:
            raise CkksKeyMismatchError(f"{what} uses parameters ({params.describe()}) other than the "
                                       f"context's ({self.params.describe()})")


def as_context(context: PublicContext | bytes) -> PublicContext:
    if isinstance(context, PublicContext):
        return context
    if isinstance(context, (bytes, bytearray, memoryview)):
        return PublicContext.from_bytes(bytes(context))
    raise CkksFormatError(f"expected a PublicContext or its bytes, got {type(context).__name__}")


# --------------------------------------------------------------------------- encrypted batch


class BatchHeader(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    params: CkksParams
    key_id: KeyId
    input_shape: tuple[int, ...] = Field(min_length=1, max_length=4)
    count: int = Field(ge=1, le=MAX_IMAGES)

    @model_validator(mode="after")
    def _shape(self) -> BatchHeader:
        if any(not 1 <= s <= MAX_INPUT_DIM for s in self.input_shape) or math.prod(self.input_shape) > MAX_INPUT_DIM:
            raise ValueError(f"input shape {self.input_shape} out of range")
        return self


@dataclass
class EncryptedBatch:
    """Seeded input ciphertexts: `c0[g, p]` is pixel p of group g (uint64 (L, N)), `seeds[g, p]`
    the 65-byte PRNG info of its second polynomial."""

    context: PublicContext
    input_shape: tuple[int, ...]
    count: int
    c0: np.ndarray                      # (groups, D, L, N) uint64
    seeds: list[list[bytes]]            # (groups, D)

    @property
    def params(self) -> CkksParams:
        return self.context.params

    @property
    def groups(self) -> int:
        return int(self.c0.shape[0])

    def to_bytes(self) -> bytes:
        header = BatchHeader(params=self.params, key_id=self.context.key_id, input_shape=self.input_shape,
                             count=self.count)
        primes = self.context.seal.primes
        parts: list[bytes] = []
        for g in range(self.groups):
            for p in range(self.c0.shape[1]):
                for limb, q in enumerate(primes):
                    parts.append(pack(self.c0[g, p, limb], prime_bytes(q)))
                parts.append(self.seeds[g][p])
        return seal_blob(KIND_BATCH, header, b"".join(parts))

    @classmethod
    def from_bytes(cls, data: bytes, public_context: PublicContext | bytes, max_bytes: int = MAX_BLOB) -> EncryptedBatch:
        ctx = as_context(public_context)
        header, body = open_blob(data, KIND_BATCH, BatchHeader, max_bytes)
        ctx.check(header.params, header.key_id, "the encrypted batch")
        n = ctx.params.poly_modulus_degree
        primes = ctx.seal.primes
        d = math.prod(header.input_shape)
        groups = -(-header.count // ctx.params.capacity)
        per_ct = sum(prime_bytes(q) for q in primes) * n + _seal.SEED_INFO_BYTES
        if len(body) != groups * d * per_ct:
            raise CkksFormatError(f"encrypted batch body is {len(body)} bytes; {header.count} images of shape "
                                  f"{header.input_shape} need {groups * d * per_ct}")
        c0 = np.empty((groups, d, len(primes), n), dtype=np.uint64)
        seeds: list[list[bytes]] = []
        off = 0
        raw = bytes(body)
        for g in range(groups):
            row: list[bytes] = []
            for p in range(d):
                for limb, q in enumerate(primes):
                    nb = prime_bytes(q) * n
                    c0[g, p, limb] = unpack(raw[off:off + nb], prime_bytes(q), n)
                    off += nb
                seed = raw[off:off + _seal.SEED_INFO_BYTES]
                off += _seal.SEED_INFO_BYTES
                if seed[0] not in _seal.PRNG_TYPES:
                    raise CkksFormatError(f"ciphertext {g}/{p} has an unknown PRNG type {seed[0]}")
                row.append(seed)
            seeds.append(row)
        for limb, q in enumerate(primes):
            if int(c0[:, :, limb].max()) >= q:
                raise CkksFormatError("encrypted batch holds a coefficient outside its modulus")
        return cls(ctx, tuple(header.input_shape), header.count, c0, seeds)

    def expand(self, group: int) -> tuple[np.ndarray, float]:
        """Full input ciphertexts (D, 2, L, N) of one group (SEAL regenerates each second polynomial)."""
        sc = self.context.seal
        d = self.c0.shape[1]
        out = np.empty((d, 2) + self.c0.shape[2:], dtype=np.uint64)
        top = sc.level_ids[sc.top]
        scale = float(2 ** self.params.scale_bits)
        for p in range(d):
            seeded = _seal.RawCiphertext(top, scale, self.c0[group, p][None], 2, self.seeds[group][p])
            ct = seal.Ciphertext()
            _seal.load_into(ct, sc.context, _seal.build_ciphertext(seeded))
            raw = _seal.parse_ciphertext(_seal.save_bytes(ct), self.params.poly_modulus_degree, len(sc.primes), 2)
            if raw.seed is not None or raw.scale != scale:  # pragma: no cover - SEAL expands on load
                raise CkksFormatError("SEAL did not expand a seeded ciphertext")
            out[p] = raw.data
        return out, scale


# --------------------------------------------------------------------------- encrypted outputs


class OutputsHeader(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    params: CkksParams
    key_id: KeyId
    count: int = Field(ge=1, le=MAX_IMAGES)
    feature_dim: int = Field(ge=1, le=MAX_OUTPUTS)
    num_classes: int = Field(ge=1, le=MAX_OUTPUTS)
    size: int = Field(ge=2, le=MAX_CT_SIZE)
    scale: float = Field(gt=1.0, lt=2.0 ** 60)
    shift: int = Field(ge=0, le=59)


@dataclass
class EncryptedOutputs:
    """Output ciphertexts at the last level (prime q0), in coefficient (non-NTT) form:
    `data[g, j]` (size, N) is output j (features first, then logits) of group g; on the wire
    each coefficient is rounded to a multiple of 2^shift."""

    context: PublicContext
    count: int
    feature_dim: int
    num_classes: int
    scale: float
    shift: int
    data: np.ndarray                # (groups, F + C, size, N) uint64, values < q0 (multiples of 2^shift mod q0)

    @property
    def params(self) -> CkksParams:
        return self.context.params

    @property
    def size(self) -> int:
        return int(self.data.shape[2])

    def _coeff_bytes(self) -> int:
        return -(-(self.context.seal.primes[0].bit_length() - self.shift) // 8)

    def to_bytes(self) -> bytes:
        header = OutputsHeader(params=self.params, key_id=self.context.key_id, count=self.count,
                               feature_dim=self.feature_dim, num_classes=self.num_classes, size=self.size,
                               scale=self.scale, shift=self.shift)
        q = self.context.seal.primes[0]
        rounded = _round_shift(self.data, self.shift, q)
        return seal_blob(KIND_OUTPUTS, header, pack(rounded, self._coeff_bytes()))

    @classmethod
    def from_bytes(cls, data: bytes, public_context: PublicContext | bytes, max_bytes: int = MAX_BLOB) -> EncryptedOutputs:
        ctx = as_context(public_context)
        header, body = open_blob(data, KIND_OUTPUTS, OutputsHeader, max_bytes)
        ctx.check(header.params, header.key_id, "the encrypted outputs")
        n = ctx.params.poly_modulus_degree
        q = ctx.seal.primes[0]
        if header.shift >= q.bit_length():
            raise CkksFormatError(f"output shift {header.shift} is not below the modulus size")
        if header.scale >= q:
            raise CkksFormatError("output scale exceeds the modulus")
        groups = -(-header.count // ctx.params.capacity)
        rows = header.feature_dim + header.num_classes
        out = cls(ctx, header.count, header.feature_dim, header.num_classes, header.scale, header.shift,
                  np.zeros((0,), dtype=np.uint64))
        nb = out._coeff_bytes()
        total = groups * rows * header.size * n
        if len(body) != total * nb:
            raise CkksFormatError(f"encrypted outputs body is {len(body)} bytes, expected {total * nb}")
        rounded = unpack(bytes(body), nb, total)
        limit = (q - 1 + (1 << header.shift >> 1)) >> header.shift
        if total and int(rounded.max()) > limit:
            raise CkksFormatError("encrypted outputs hold a coefficient outside the modulus")
        values = _unshift(rounded, header.shift, q)
        out.data = values.reshape(groups, rows, header.size, n)
        return out


def _round_shift(values: np.ndarray, shift: int, q: int) -> np.ndarray:
    """round(v / 2^shift) of values in [0, q)."""
    if shift == 0:
        return values
    return (values + np.uint64(1 << (shift - 1))) >> np.uint64(shift)


def _unshift(values: np.ndarray, shift: int, q: int) -> np.ndarray:
    if shift == 0:
        return values
    # v * 2^shift may exceed 2^64 only if q > 2^63, which SEAL forbids; reduce mod q
    return (values << np.uint64(shift)) % np.uint64(q)

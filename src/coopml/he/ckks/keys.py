"""The verifier's side: its own CKKS key, encryption of its images, decryption of the outputs."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import tenseal.sealapi as seal
from pydantic import BaseModel, ConfigDict, Field

from coopml.he.ckks import _seal
from coopml.he.ckks.batch import (
    MAX_IMAGES,
    EncryptedBatch,
    EncryptedOutputs,
    KeyId,
    PublicContext,
    key_id_of,
)
from coopml.he.ckks.errors import CkksFormatError, CkksKeyMismatchError, InputRangeError
from coopml.he.ckks.params import CkksParams, seal_context
from coopml.he.ckks.wire import KIND_KEY, open_blob, seal_blob


class KeyHeader(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    params: CkksParams
    key_id: KeyId
    secret_key_bytes: int = Field(ge=1, le=1 << 28)
    public_key_bytes: int = Field(ge=1, le=1 << 28)


@dataclass
class QueryKey:
    """One verifier's CKKS key pair. The secret key never leaves this object except through
    `to_bytes` (for the owner's own 0600 storage); `public_context()` carries none of it."""

    params: CkksParams
    secret_key: seal.SecretKey
    context: PublicContext

    @classmethod
    def generate(cls, params: CkksParams) -> QueryKey:
        sc = seal_context(params)
        kg = seal.KeyGenerator(sc.context)
        sk = kg.secret_key()
        pk = seal.PublicKey()
        kg.create_public_key(pk)          # (the seeded form is not exposed by the binding)
        pk_bytes = _seal.save_bytes(pk)
        ctx = PublicContext(params, pk_bytes, key_id_of(pk_bytes))
        return cls(params, sk, ctx)

    @property
    def key_id(self) -> str:
        return self.context.key_id

    def public_context(self) -> bytes:
        """Parameters + public key, to send to the contributor."""
        return self.context.to_bytes()

    # ---------------------------------------------------------------- images -> ciphertexts

    def encrypt_images(self, x: np.ndarray) -> EncryptedBatch:
        """Encrypt (count, *input_shape) images, N per group of ciphertexts, one ciphertext per pixel."""
        x = np.asarray(x)
        if x.ndim < 2 or x.dtype.kind not in "fiu":
            raise InputRangeError(f"images must be a numeric array (count, *input_shape), got {x.dtype} {x.shape}")
        count = int(x.shape[0])
        if not 1 <= count <= MAX_IMAGES:
            raise InputRangeError(f"between 1 and {MAX_IMAGES} images per batch, got {count}")
        flat = x.reshape(count, -1).astype(np.float64)
        lo, hi = self.params.input_range
        if not np.isfinite(flat).all():
            raise InputRangeError("pixel values must be finite numbers within the declared input range")
        if flat.min() < lo or flat.max() > hi:
            raise InputRangeError(f"pixel values must lie in the declared input range [{lo}, {hi}] "
                                  f"(got [{flat.min():.4g}, {flat.max():.4g}]); the contributor's "
                                  "overflow bounds rely on it")
        sc = seal_context(self.params)
        n = self.params.poly_modulus_degree
        half = n // 2
        cap = self.params.capacity
        groups = -(-count // cap)
        d = flat.shape[1]
        enc = seal.Encryptor(sc.context, self.secret_key)
        scale = float(2 ** self.params.scale_bits)
        c0 = np.empty((groups, d, len(sc.primes), n), dtype=np.uint64)
        seeds: list[list[bytes]] = []
        for g in range(groups):
            block = np.zeros((n, d))
            chunk = flat[g * cap:(g + 1) * cap]
            block[:len(chunk)] = chunk                          # real packing: rows N/2.. stay 0
            slots = (block[:half] + 1j * block[half:]).T          # (d, N/2) complex
            row: list[bytes] = []
            for p in range(d):
                pt = seal.Plaintext()
                sc.encoder.encode(slots[p].tolist(), scale, pt)
                raw = _seal.parse_ciphertext(_seal.save_bytes(enc.encrypt_symmetric(pt)), n, len(sc.primes), 2)
                if raw.seed is None:  # pragma: no cover - SEAL always seeds symmetric Serializable output
                    raise CkksFormatError("SEAL did not produce a seeded ciphertext")
                c0[g, p] = raw.data[0]
                row.append(raw.seed)
            seeds.append(row)
        return EncryptedBatch(self.context, tuple(int(s) for s in x.shape[1:]), count, c0, seeds)

    # ---------------------------------------------------------------- ciphertexts -> outputs

    def decrypt_outputs(self, out: EncryptedOutputs) -> tuple[np.ndarray, np.ndarray]:
        """(features (count, F), logits (count, C)) in float64."""
        if out.context.key_id != self.key_id or out.params != self.params:
            raise CkksKeyMismatchError(f"outputs were encrypted for key {out.context.key_id}, this is key {self.key_id}")
        sc = seal_context(self.params)
        n = self.params.poly_modulus_degree
        half = n // 2
        dec = seal.Decryptor(sc.context, self.secret_key)
        groups, rows = out.data.shape[:2]
        cap = self.params.capacity
        values = np.empty((groups * cap, rows))
        pid = sc.level_ids[0]
        for g in range(groups):
            for j in range(rows):
                raw = _seal.RawCiphertext(pid, out.scale, out.data[g, j][:, None, :], out.size, is_ntt_form=False)
                ct = seal.Ciphertext()
                _seal.load_into(ct, sc.context, _seal.build_ciphertext(raw))
                sc.evaluator.transform_to_ntt_inplace(ct)
                pt = seal.Plaintext()
                dec.decrypt(ct, pt)
                z = np.asarray(sc.encoder.decode_complex(pt))
                values[g * cap:g * cap + half, j] = z.real
                if cap == n:
                    values[g * cap + half:(g + 1) * cap, j] = z.imag
        values = values[:out.count]
        return values[:, :out.feature_dim], values[:, out.feature_dim:]

    # ---------------------------------------------------------------- storage (owner only)

    def to_bytes(self) -> bytes:
        """SECRET: the whole key, for the owner's own storage (write it 0600, never send it)."""
        sk = _seal.save_bytes(self.secret_key)
        pk = self.context.public_key_bytes
        header = KeyHeader(params=self.params, key_id=self.key_id, secret_key_bytes=len(sk), public_key_bytes=len(pk))
        return seal_blob(KIND_KEY, header, sk + pk)

    @classmethod
    def from_bytes(cls, data: bytes) -> QueryKey:
        header, body = open_blob(data, KIND_KEY, KeyHeader, 1 << 29)
        if len(body) != header.secret_key_bytes + header.public_key_bytes:
            raise CkksFormatError("query key body does not match its header")
        raw = bytes(body)
        sk_bytes, pk_bytes = raw[:header.secret_key_bytes], raw[header.secret_key_bytes:]
        if key_id_of(pk_bytes) != header.key_id:
            raise CkksFormatError("query key id does not match its public key")
        sc = seal_context(header.params)
        n, limbs = header.params.poly_modulus_degree, len(header.params.coeff_mod_bit_sizes)
        _seal.open_envelope(sk_bytes, _seal.payload_limit(1, n, limbs))
        sk = seal.SecretKey()
        _seal.load_into(sk, sc.context, sk_bytes)
        ctx = PublicContext(header.params, pk_bytes, header.key_id)
        _ = ctx.public_key
        return cls(header.params, sk, ctx)


def images_per_group(params: CkksParams) -> int:
    return params.capacity


def groups_for(params: CkksParams, count: int) -> int:
    return math.ceil(count / params.capacity)

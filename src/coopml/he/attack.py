"""Attacks that show what the paper's parameters do not protect (see docs/security.md).

1. `recover_secret_1d`: with k = 1 every column of the public key M = [S* - T A + E; A] gives
   T = (S* + E - M_top) A^-1 mod Q for an odd A entry; trying the 2B+1 possible E values and
   keeping the candidate whose residuals over all columns are within [-B, B] recovers T.
2. `dictionary_attack`: encryption c' = M c* is deterministic, so anyone holding the public key
   can encrypt every candidate plaintext (scaled weights are small integers) and match.
"""

from __future__ import annotations

import numpy as np

from coopml.errors import HEError
from coopml.he import ring
from coopml.he.scheme import Ciphertext, PublicKey, SecretKey, encrypt


def recover_secret_1d(pk: PublicKey, max_noise: int | None = None) -> SecretKey:
    """T from the public key alone when k = 1. Returns a SecretKey that decrypts everything."""
    p = pk.params
    if p.k != 1:
        raise HEError("this attack handles k = 1 (larger k needs lattice reduction)")
    bound = p.noise_bound if max_noise is None else max_noise
    q = p.modulus
    m = np.asarray(ring.to_ring(pk.m_words), dtype=object) % q
    l = p.digits
    a = m[pk.n]
    powers = [1 << (l - 1 - b) for b in range(l)]
    t = np.zeros((pk.n, 1), dtype=np.int64)
    odd = [c for c in range(len(a)) if a[c] % 2 == 1]
    if not odd:
        raise HEError("no invertible column in A (astronomically unlikely)")
    col = odd[0]
    inv = pow(int(a[col]), -1, q)
    for i in range(pk.n):
        s_star = np.zeros(len(a), dtype=object)
        s_star[i * l:(i + 1) * l] = powers
        found = None
        for e in range(-bound, bound + 1):
            cand = ((int(s_star[col]) + e - int(m[i, col])) * inv) % q
            resid = (m[i] - s_star + cand * a) % q
            resid = np.where(resid >= q // 2, resid - q, resid)
            if all(abs(int(r)) <= bound for r in resid):
                found = cand - q if cand >= q // 2 else cand
                break
        if found is None:
            raise HEError(f"no candidate for T[{i}] with noise within +-{bound}")
        t[i, 0] = found
    return SecretKey(p, pk.n, t, pk.key_id)


def dictionary_attack(pk: PublicKey, ct: Ciphertext, candidates: np.ndarray) -> np.ndarray:
    """Plaintexts of a length-1 ciphertext batch by encrypting every candidate value (no secret).

    Returns the matched values; raises if some ciphertext matches no candidate (e.g. when
    Params.encrypt_noise randomises encryption)."""
    if ct.n != 1 or pk.n != 1:
        raise HEError("dictionary_attack handles element-wise (n = 1) ciphertexts")
    cand = np.asarray(candidates, dtype=np.int64)
    table = encrypt(pk, cand[:, None]).words.reshape(len(cand), -1)
    lookup = {row.tobytes(): int(v) for row, v in zip(table, cand)}
    flat = ct.words.reshape(-1, table.shape[1])
    out = np.empty(len(flat), dtype=np.int64)
    for i, row in enumerate(flat):
        v = lookup.get(row.tobytes())
        if v is None:
            raise HEError("a ciphertext matched no candidate (randomised encryption or wrong range)")
        out[i] = v
    return out.reshape(ct.shape)

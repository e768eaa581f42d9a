"""Exact arithmetic in Z_Q, Q = 2^(64*words).

Values are kept canonically as little-endian uint64 words (shape (..., words)), which is what
gets serialised. Computation uses numpy uint64 wrap-around when Q = 2^64 (one word) and
Python-int object arrays reduced mod Q otherwise. Large plaintext-by-ciphertext products
(encrypted inference) go through `limb_matmul`, which splits the Z_Q operand into narrow limbs
so that every float64 BLAS product stays an exact integer below 2^53.
"""

from __future__ import annotations

import numpy as np

MASK64 = (1 << 64) - 1
FLOAT_EXACT = 1 << 53


def modulus(words: int) -> int:
    return 1 << (64 * words)


def to_ring(words_arr: np.ndarray) -> np.ndarray:
    """uint64 words (..., W) -> uint64 array (W == 1) or Python-int object array."""
    if words_arr.shape[-1] == 1:
        return words_arr[..., 0].astype(np.uint64)
    out = np.zeros(words_arr.shape[:-1], dtype=object)
    for i in range(words_arr.shape[-1]):
        out = out + (words_arr[..., i].astype(object) << (64 * i))
    return out


def to_words(ring_arr: np.ndarray, words: int) -> np.ndarray:
    """Inverse of `to_ring`; object inputs are reduced mod Q first."""
    a = np.asarray(ring_arr)
    if words == 1:
        if a.dtype == object:
            a = (a % modulus(1)).astype(np.uint64)
        return a.astype(np.uint64)[..., None]
    a = a.astype(object) % modulus(words)
    return np.stack([((a >> (64 * i)) & MASK64).astype(np.uint64) for i in range(words)], axis=-1)


def lift(plain: np.ndarray, words: int) -> np.ndarray:
    """Signed integers (int64 or object) as ring elements (negative values wrap)."""
    a = np.asarray(plain)
    if words == 1:
        return a.astype(np.int64).astype(np.uint64) if a.dtype != object else (a % modulus(1)).astype(np.uint64)
    return a.astype(object) % modulus(words)


def reduce(a: np.ndarray, words: int) -> np.ndarray:
    return a if words == 1 else a % modulus(words)


def signed(a: np.ndarray, words: int) -> np.ndarray:
    """Ring elements to the centred representative in [-Q/2, Q/2) (int64 or object)."""
    if words == 1:
        return np.asarray(a, dtype=np.uint64).view(np.int64)
    q = modulus(words)
    a = np.asarray(a, dtype=object) % q
    return np.where(a >= q // 2, a - q, a)


def uniform(rng: np.random.Generator, shape: tuple[int, ...], words: int) -> np.ndarray:
    w = rng.integers(0, 1 << 64, size=(*shape, words), dtype=np.uint64, endpoint=False)
    return to_ring(w)


def limbs(words_arr: np.ndarray, bits: int) -> np.ndarray:
    """Split Z_Q values (uint64 words (..., W)) into float64 limbs (L, ...) of `bits` bits each."""
    total = 64 * words_arr.shape[-1]
    count = -(-total // bits)
    out = np.empty((count, *words_arr.shape[:-1]), dtype=np.float64)
    mask = np.uint64((1 << bits) - 1)
    for i in range(count):
        lo = i * bits
        word, off = divmod(lo, 64)
        v = words_arr[..., word] >> np.uint64(off)
        if off + bits > 64 and word + 1 < words_arr.shape[-1]:
            v = v | (words_arr[..., word + 1] << np.uint64(64 - off))
        out[i] = (v & mask).astype(np.float64)
    return out


def combine_limbs(parts: np.ndarray, bits: int, words: int) -> np.ndarray:
    """Sum_i parts[i] * 2^(bits*i) mod Q for non-negative exact integers parts[i] < 2^53.

    Vectorised with uint64 words and explicit carries (no Python ints)."""
    shape = parts.shape[1:]
    acc = np.zeros((*shape, words), dtype=np.uint64)
    for i in range(parts.shape[0]):
        v = parts[i].astype(np.uint64)
        shift = bits * i
        word, off = divmod(shift, 64)
        pieces = [(word, v << np.uint64(off))]
        if off:
            pieces.append((word + 1, v >> np.uint64(64 - off)))
        for wi, piece in pieces:
            carry = piece
            for j in range(wi, words):
                if not carry.any():
                    break
                new = acc[..., j] + carry
                carry = (new < acc[..., j]).astype(np.uint64)
                acc[..., j] = new
    return acc


def limb_matmul(x: np.ndarray, k_words: np.ndarray) -> np.ndarray:
    """x @ K mod Q, exactly: x a non-negative integer float64 matrix (N, m), K in Z_Q as words (m, n, W).

    The limb width is the largest b with sum_j x_ij * (2^b - 1) < 2^53 for every row, so each
    float64 product-sum is exact; one BLAS call does all limbs at once."""
    if x.size and x.min() < 0:
        raise ValueError("limb_matmul needs a non-negative left operand")
    row_l1 = float(x.sum(axis=1).max()) if x.size else 0.0
    bits = 1
    while bits < 52 and row_l1 * ((1 << (bits + 1)) - 1) < FLOAT_EXACT:
        bits += 1
    if row_l1 * ((1 << bits) - 1) >= FLOAT_EXACT:
        raise ValueError("left operand too large for exact float64 limb products")
    words = k_words.shape[-1]
    kl = limbs(k_words, bits)                                  # (L, m, n)
    L, m, n = kl.shape
    prod = x @ kl.transpose(1, 0, 2).reshape(m, L * n)         # (N, L*n)
    prod = prod.reshape(len(x), L, n).transpose(1, 0, 2)       # (L, N, n)
    return combine_limbs(prod, bits, words)

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


def add_words(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(a + b) mod Q on uint64 words (..., W), with carries."""
    a, b = np.broadcast_arrays(a, b)
    out = np.empty(a.shape, dtype=np.uint64)
    carry = np.zeros(a.shape[:-1], dtype=np.uint64)
    for j in range(a.shape[-1]):
        s1 = a[..., j] + b[..., j]
        c1 = s1 < a[..., j]
        s2 = s1 + carry
        carry = (c1 | (s2 < s1)).astype(np.uint64)
        out[..., j] = s2
    return out


def neg_words(a: np.ndarray) -> np.ndarray:
    """-a mod Q (two's complement over all words)."""
    one = np.zeros_like(a)
    one[..., 0] = 1
    return add_words(~a, one)


def int_to_words(v: np.ndarray, words: int) -> np.ndarray:
    """Signed int64 (or exact-integer float64) values as Z_Q words (sign-extended)."""
    v = np.asarray(v).astype(np.int64)
    out = np.empty((*v.shape, words), dtype=np.uint64)
    out[..., 0] = v.view(np.uint64)
    fill = np.where(v < 0, np.uint64(MASK64), np.uint64(0))
    for j in range(1, words):
        out[..., j] = fill
    return out


def shift_words(a: np.ndarray, s: int) -> np.ndarray:
    """a * 2^s mod Q."""
    words = a.shape[-1]
    word, off = divmod(s, 64)
    out = np.zeros_like(a)
    for j in range(word, words):
        src = j - word
        v = a[..., src] << np.uint64(off)
        if off and src >= 1:
            v = v | (a[..., src - 1] >> np.uint64(64 - off))
        out[..., j] = v
    return out


def combine_limbs(parts: np.ndarray, bits: int, words: int) -> np.ndarray:
    """Sum_i parts[i] * 2^(bits*i) mod Q, parts exact signed integers (|.| < 2^63)."""
    acc = np.zeros((*parts.shape[1:], words), dtype=np.uint64)
    for i in range(parts.shape[0]):
        acc = add_words(acc, shift_words(int_to_words(parts[i], words), bits * i))
    return acc


def _limb_bits(row_l1: float) -> int:
    bits = 0
    while bits < 52 and row_l1 * ((1 << (bits + 1)) - 1) < FLOAT_EXACT:
        bits += 1
    if bits == 0:
        raise ValueError(f"left operand rows too large ({row_l1:.3g}) for exact float64 limb products")
    return bits


def limb_matmul(x: np.ndarray, k_words: np.ndarray) -> np.ndarray:
    """x @ K mod Q, exactly: x an integer-valued float64 matrix (N, m) with sum_j |x_ij| < 2^52,
    K in Z_Q as words (m, n, W) -> words (N, n, W).

    The limb width b is the largest with sum_j |x_ij| * (2^b - 1) < 2^53 for every row, so
    each float64 product-sum is an exact integer; one BLAS call covers all limbs."""
    x = np.asarray(x, dtype=np.float64)
    row_l1 = float(np.abs(x).sum(axis=1).max()) if x.size else 0.0
    bits = _limb_bits(row_l1)
    words = k_words.shape[-1]
    kl = limbs(k_words, bits)                                  # (L, m, n)
    L, m, n = kl.shape
    prod = x @ kl.transpose(1, 0, 2).reshape(m, L * n)         # (N, L*n)
    prod = prod.reshape(len(x), L, n).transpose(1, 0, 2)       # (L, N, n)
    return combine_limbs(prod, bits, words)


def int_matmul(x: np.ndarray, k_words: np.ndarray, chunk_bits: int = 16) -> np.ndarray:
    """x @ K mod Q for arbitrary signed integers x (int64 or object): x is cut into signed
    `chunk_bits`-bit pieces, each multiplied exactly by `limb_matmul`."""
    x = np.asarray(x)
    words = k_words.shape[-1]
    sign = np.where(x < 0, -1, 1)
    mag = np.abs(x).astype(object) if x.dtype == object else np.abs(x.astype(np.int64)).astype(object)
    acc = np.zeros((x.shape[0], k_words.shape[1], words), dtype=np.uint64)
    mask = (1 << chunk_bits) - 1
    i = 0
    while True:
        piece = ((mag >> (chunk_bits * i)) & mask)
        if not piece.any():
            if not (mag >> (chunk_bits * i)).any():
                break
        else:
            part = limb_matmul((piece * sign).astype(np.float64), k_words)
            acc = add_words(acc, shift_words(part, chunk_bits * i))
        i += 1
    return acc

"""Exact arithmetic mod 2^T on float64 limbs, so that BLAS float64 GEMMs compute exact modular products.

A Z_Q value (Q = 2^T, T = 64 * words) is held as L signed limbs d_i (exact integers stored in
float64) with value sum_i d_i * 2^(b*i) mod 2^T. Limbs are *balanced* after normalisation,
|d_i| <= 2^(b-1), which buys one bit over unsigned limbs. A plaintext integer matrix G applied
to every limb (one GEMM over all limbs and ciphertext components stacked as rows) is exact as
long as every partial sum stays below 2^53 in magnitude; `Limbs.bound` carries a proven upper
bound on |d_i| and every operation checks it (`ExactnessError` otherwise, a bug, never a
wrong result). Carries are propagated lazily: only when the next operation needs the headroom
(`renorm`), or when the next layer wants a different limb width (`rebase`).

Every operation here is elementwise over the limb axis or a matrix product; nothing uses
Python integers, so the cost is a handful of float64 passes per limb plus the GEMMs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from coopml.errors import HEError
from coopml.he import ring

EXACT = float(1 << 53)


class ExactnessError(HEError):
    """An operation on float64 limbs could have left the exactly representable integers."""


def limb_count(total: int, bits: int) -> int:
    return -(-total // bits)


def widths(total: int, bits: int) -> list[int]:
    """Width of every limb: b, ..., b, and the (possibly narrower) top limb."""
    count = limb_count(total, bits)
    return [bits] * (count - 1) + [total - bits * (count - 1)]


def bits_for(l1: float, total: int, headroom: float = 1.0) -> int:
    """The limb width b for balanced limbs to go through a map with max row L1 norm `l1`
    (times `headroom`, e.g. a following sum-pooling) exactly: 2^(b-1) * l1 * headroom < 2^53.
    Among widths giving the same limb count, the smallest (most headroom) is returned."""
    growth = max(float(l1) * headroom, 1.0)
    b = 1
    while b < 52 and (2.0 ** b) * growth < EXACT:        # 2^((b+1)-1) * growth < 2^53
        b += 1
    if (2.0 ** (b - 1)) * growth >= EXACT:
        raise ExactnessError(f"a map with row L1 norm {growth:.3g} cannot be applied exactly in float64")
    count = limb_count(total, b)
    return -(-total // count)


@dataclass
class Limbs:
    """Z_{2^total} values as float64 limbs (L, ...) of width `bits`; |limb| <= bound."""

    data: np.ndarray
    bits: int
    total: int
    bound: float

    @property
    def count(self) -> int:
        return self.data.shape[0]

    def check(self, growth: float, what: str) -> None:
        if self.bound * growth >= EXACT:
            raise ExactnessError(f"{what}: limb bound {self.bound:.3g} x growth {growth:.3g} reaches 2^53")

    def replace(self, data: np.ndarray, bound: float) -> Limbs:
        return Limbs(data, self.bits, self.total, bound)


def _balance(d: np.ndarray, ws: list[int]) -> None:
    """In place: unsigned digits d_i in [0, 2^w_i) -> balanced |d_i| <= 2^(w_i - 1), same value mod 2^T."""
    carry = None
    for i, w in enumerate(ws):
        if carry is not None:
            d[i] += carry
        half = 2.0 ** (w - 1)
        over = d[i] >= half
        d[i] -= over * (2.0 ** w)
        carry = over.astype(np.float64) if i + 1 < len(ws) else None


def from_words(words: np.ndarray, bits: int) -> Limbs:
    """uint64 words (..., W) -> balanced limbs (L, ...) of width `bits`."""
    total = 64 * words.shape[-1]
    ws = widths(total, bits)
    out = np.empty((len(ws), *words.shape[:-1]), dtype=np.float64)
    lo = 0
    for i, w in enumerate(ws):
        word, off = divmod(lo, 64)
        v = words[..., word] >> np.uint64(off)
        if off + w > 64 and word + 1 < words.shape[-1]:
            v = v | (words[..., word + 1] << np.uint64(64 - off))
        if w < 64:
            v = v & np.uint64((1 << w) - 1)
        out[i] = v
        lo += w
    _balance(out, ws)
    return Limbs(out, bits, total, 2.0 ** (bits - 1))


def from_ints(values: np.ndarray, bits: int, total: int) -> Limbs:
    """Signed int64 values (exact) as limbs; negative values wrap mod 2^total."""
    return from_words(ring.int_to_words(np.asarray(values, dtype=np.int64), total // 64), bits)


def _carry(x: Limbs, round_fn: Callable[[np.ndarray], np.ndarray], what: str) -> np.ndarray:
    """Propagate carries from the lowest limb up: limb i keeps d_i - c * 2^w_i with
    c = round_fn(d_i / 2^w_i) and passes c on (the top limb's carry is 0 mod 2^total). np.rint
    leaves balanced digits |d_i| <= 2^(w_i - 1), np.floor digits in [0, 2^w_i); same value."""
    x.check(1.0 + 2.0 ** -x.bits, what)
    d = x.data.copy()
    ws = widths(x.total, x.bits)
    for i, w in enumerate(ws):
        c = round_fn(d[i] * (2.0 ** -w))
        d[i] -= c * (2.0 ** w)
        if i + 1 < len(ws):
            d[i + 1] += c
    return d


def renorm(x: Limbs) -> Limbs:
    """Propagate carries: balanced limbs |d_i| <= 2^(b-1), same value mod 2^total."""
    return Limbs(_carry(x, np.rint, "renorm"), x.bits, x.total, 2.0 ** (x.bits - 1))


def _unsigned(x: Limbs) -> np.ndarray:
    """Digits in [0, 2^w_i), same value mod 2^total."""
    return _carry(x, np.floor, "carry")


def rebase(x: Limbs, bits: int) -> Limbs:
    """The same values as balanced limbs of another width: unsigned digits, then the new limbs
    assembled from their bit fields (floor and subtraction by powers of two: exact in float64)."""
    if bits == x.bits:
        return renorm(x)
    d = _unsigned(x)
    old = widths(x.total, x.bits)
    new = widths(x.total, bits)
    out = np.zeros((len(new), *d.shape[1:]), dtype=np.float64)
    starts = [sum(old[:i]) for i in range(len(old))]
    lo = 0
    for j, w in enumerate(new):
        hi = lo + w
        for s_i, w_i, d_i in zip(starts, old, d):
            s, e = max(lo, s_i), min(hi, s_i + w_i)
            if s >= e:
                continue
            part = np.floor(d_i * (2.0 ** -(s - s_i))) if s > s_i else d_i
            if e < s_i + w_i:
                part = part - np.floor(part * (2.0 ** -(e - s))) * (2.0 ** (e - s))
            out[j] += part * (2.0 ** (s - lo)) if s > lo else part
        lo = hi
    _balance(out, new)
    return Limbs(out, bits, x.total, 2.0 ** (bits - 1))


def to_words(x: Limbs) -> np.ndarray:
    """Limbs (L, ...) -> uint64 words (..., W), exact (|limbs| < 2^53 always converts to int64 exactly)."""
    if x.total == 64:                          # Q = 2^64: int64 wrap-around is the ring itself
        acc = x.data[0].astype(np.int64)
        for i in range(1, x.count):
            acc += x.data[i].astype(np.int64) << (x.bits * i)
        return acc.view(np.uint64)[..., None]
    return ring.combine_limbs(x.data, x.bits, x.total // 64)


def add(x: Limbs, y: Limbs) -> Limbs:
    if x.bits != y.bits or x.total != y.total:
        raise ExactnessError("adding limbs of different widths")
    bound = x.bound + y.bound
    if bound >= EXACT:
        raise ExactnessError("limb sum reaches 2^53")
    return Limbs(x.data + y.data, x.bits, x.total, bound)


def matmul_right(x: Limbs, g: np.ndarray, l1: float | None = None) -> Limbs:
    """(L, M, K) limbs @ G (K, N) integer-valued float64 -> (L, M, N): one GEMM over all limbs."""
    if l1 is None:
        l1 = float(np.abs(g).sum(axis=0).max(initial=0.0))
    x.check(max(l1, 1.0), "matmul")
    count, m, k = x.data.shape
    out = (x.data.reshape(count * m, k) @ g).reshape(count, m, g.shape[1])
    return Limbs(out, x.bits, x.total, x.bound * max(l1, 1.0))


def words_matmul(a: np.ndarray, k_words: np.ndarray, a_l1: float | None = None) -> Limbs:
    """Plaintext integer-valued float64 A (M, K) times Z_Q matrix (K, N) given as words (K, N, W):
    the Z_Q operand is split into limbs narrow enough for exact products, one GEMM for all limbs.
    Returns limbs (L, M, N)."""
    if a_l1 is None:
        a_l1 = float(np.abs(a).sum(axis=1).max(initial=0.0))
    total = 64 * k_words.shape[-1]
    bits = bits_for(a_l1, total)
    kl = from_words(k_words, bits)                        # (L, K, N)
    count, kk, n = kl.data.shape
    prod = a @ kl.data.transpose(1, 0, 2).reshape(kk, count * n)   # (M, L*N)
    prod = prod.reshape(a.shape[0], count, n).transpose(1, 0, 2)
    return Limbs(prod, bits, total, kl.bound * max(a_l1, 1.0))

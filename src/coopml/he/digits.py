"""Exact arithmetic mod 2^T on byte digits, so that int8 GEMMs compute exact modular products.

A Z_Q value (Q = 2^T, T = 64 * words) is its T/8 little-endian bytes d_j in [0, 256): the uint64
words viewed as uint8, no conversion. A plaintext integer layer with weights |w| <= 127 and K
inputs per output is applied to every digit at once by ONE int8 GEMM (`torch._int_mm`, which
runs on the CPU's int8 dot-product units: ~20x the multiply-adds per second of a float64 GEMM
of the same narrow shape here): the digits enter shifted to int8, d - 128, so each partial
sum stays below 128 * 127 * K < 2^31, and adding back 128 * sum_k w_k gives S_j = sum_k d_jk w_k
exactly; sum_j S_j 2^(8j) = sum_k w_k a_k mod Q. Carries back to bytes are integer shifts
(`normalize`). With 8-bit digits a 128-bit value takes 16 GEMM rows instead of the 3 float64
limbs of `coopml.he.limbs`, and still costs about a quarter of their time.

Layout: digits on the first axis, (D, ...), like limbs; bytes of a word array (..., W) come
out as (8W, ...).
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from coopml.errors import HEError
from coopml.he import limbs as lb
from coopml.he.im2col import output_size, unfold

INT8_MAX = 127
# the largest K with 128 * 127 * K + 128 * 127 * K < 2^31 (shifted sum, then the correction)
MAX_K = (2**31 - 1) // (2 * 128 * INT8_MAX)
# unfolded int8 rows per GEMM: a cache-sized buffer
UNFOLD_BYTES = 8 << 20


@functools.cache
def available() -> bool:
    """Whether this torch computes int8 x int8 -> int32 GEMMs exactly (`torch._int_mm` is a
    private API: a torch without it, or with other shape rules, must not break verification; the
    callers then use the float64 limbs, same words). Probed once, at shapes like ours (odd K and
    N, as Table IV's 784 -> 10 head)."""
    if not hasattr(torch, "_int_mm"):
        return False
    rng = np.random.default_rng(0)
    a = rng.integers(-128, 128, size=(48, 37), dtype=np.int8)
    b = rng.integers(-127, 128, size=(37, 10), dtype=np.int8)
    out = np.empty((48, 10), dtype=np.int32)
    try:
        _int_mm(a, b, out)
    except (RuntimeError, TypeError):
        return False
    return bool(np.array_equal(out, a.astype(np.int64) @ b.astype(np.int64)))


def fits(weight: np.ndarray, k: int) -> bool:
    """Whether an integer weight matrix with `k` inputs per output can go through `conv`/`linear`
    (and this torch has the int8 GEMM: `available`)."""
    return bool(weight.size) and float(np.abs(weight).max()) <= INT8_MAX and k <= MAX_K and available()


def from_words(words: np.ndarray) -> np.ndarray:
    """uint64 words (..., W) -> bytes (8W, ...) uint8, little-endian (digit j = bits 8j..8j+7)."""
    b = np.ascontiguousarray(words, dtype=np.uint64).view(np.uint8)          # (..., 8W), x86: little-endian
    if np.little_endian is False:                                             # pragma: no cover
        raise HEError("byte digits assume a little-endian machine")
    return np.ascontiguousarray(np.moveaxis(b, -1, 0))


def from_limbs(x: lb.Limbs) -> np.ndarray:
    """float64 limbs (L, ...) -> bytes (T/8, ...) uint8: carried to unsigned limbs, whose bytes
    are the value's bytes when every limb width is a multiple of 8 (else through the words)."""
    ws = lb.widths(x.total, x.bits)
    if any(w % 8 for w in ws):
        return from_words(lb.to_words(x))
    x.check(1.0, "bytes")                                       # exact integers, so exact in int64
    out = np.empty((x.total // 8, *x.data.shape[1:]), dtype=np.uint8)
    carry: np.ndarray | int = 0
    j = 0
    for i, w in enumerate(ws):                                  # integer carries, lowest limb first
        v = x.data[i].astype(np.int64)
        v += carry
        carry = v >> w                                          # floor: the rest is in [0, 2^w)
        v &= (1 << w) - 1
        b = v[..., None].view(np.uint8)                         # (..., 8) little-endian
        out[j:j + w // 8] = np.moveaxis(b[..., :w // 8], -1, 0)
        j += w // 8
    return out


def to_words(digits: np.ndarray) -> np.ndarray:
    """Bytes (8W, ...) uint8 -> uint64 words (..., W)."""
    b = np.ascontiguousarray(np.moveaxis(digits, 0, -1))
    return b.view(np.uint64)


def shifted(digits: np.ndarray) -> np.ndarray:
    """Bytes d -> int8 d - 128 (one pass: flip the top bit, reinterpret)."""
    return (digits ^ np.uint8(0x80)).view(np.int8)


def normalize(s: np.ndarray) -> np.ndarray:
    """Exact signed digit sums S_j (D, ...) int64 -> the bytes of sum_j S_j 2^(8j) mod 2^(8D)."""
    out = np.empty(s.shape, dtype=np.uint8)
    carry = np.zeros(s.shape[1:], dtype=np.int64)
    for j in range(s.shape[0]):
        acc = s[j] + carry
        out[j] = acc & 0xFF
        carry = acc >> 8                    # arithmetic shift: floor division, also for negative sums
    return out


def _int_mm(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """out = a @ b, int8 x int8 -> int32, written in place (out must be contiguous)."""
    torch._int_mm(torch.from_numpy(a), torch.from_numpy(b), out=torch.from_numpy(out))


def _check(weight: np.ndarray) -> np.ndarray:
    g = np.asarray(weight)
    if not fits(g, g.shape[0]):
        raise HEError(f"weights beyond int8 or {g.shape[0]} inputs per output: use the float64 limbs")
    return g.astype(np.int8)


def _unshift(out: np.ndarray, g8: np.ndarray) -> None:
    """In place: sums of (d - 128) * w -> sums of d * w, adding 128 * sum_k w_k per output column
    (|.| <= 2 * 128 * 127 * K < 2^31 by MAX_K)."""
    out += (128 * g8.astype(np.int64).sum(axis=0)).astype(np.int32)


def linear(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Digits (D, M, K) uint8 @ integer G (K, N) -> exact digit sums (D, M, N) int32."""
    g8 = _check(g)
    d, m, k = x.shape
    out = np.empty((d * m, g8.shape[1]), dtype=np.int32)
    _int_mm(np.ascontiguousarray(shifted(x).reshape(d * m, k)), g8, out)
    _unshift(out, g8)
    return out.reshape(d, m, -1)


def conv(x: np.ndarray, g: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int],
         padding: tuple[int, int]) -> np.ndarray:
    """Digits (D, B, H, W, C) uint8, convolution matrix G (kh*kw*C, Cout) in (kh, kw, C) row
    order -> exact digit sums (D, B, Ho, Wo, Cout) int32: im2col of the shifted digits (zero
    padding is digit 0, shifted -128, which the correction covers like any other input) and
    ONE int8 GEMM per cache-sized block."""
    g8 = _check(g)
    d, b, h, w, c = x.shape
    rows = d * b
    # the unfold copies runs of whole channel vectors: as 8-, 4- or 2-byte words when C allows
    # (numpy copies a few wide elements much faster than many bytes)
    wide = np.dtype(next(t for t in (np.uint64, np.uint32, np.uint16, np.uint8) if c % np.dtype(t).itemsize == 0))
    xs = np.ascontiguousarray(shifted(x).reshape(rows, h, w, c)).view(wide)
    pad = np.full(wide.itemsize, -128, dtype=np.int8).view(wide)[0]      # digit 0, shifted
    ho, wo = output_size((h, w), kernel, stride, padding)
    out = np.empty((rows, ho, wo, g8.shape[1]), dtype=np.int32)
    for lo, m, unfolded in unfold(xs, kernel, stride, padding, pad, UNFOLD_BYTES):
        _int_mm(unfolded.view(np.int8), g8, out[lo:lo + m].reshape(m * ho * wo, -1))
    _unshift(out, g8)
    return out.reshape(d, b, ho, wo, -1)

"""Convolution as im2col + one GEMM on an NHWC layout, in cache-sized blocks.

Used where values must stay exact integers: the layer-by-layer encrypted inference (float64
limbs here, int8 byte digits in `coopml.he.digits`, both through `unfold`) and the plaintext
integer network. torch has no fast float64 convolution on CPU (its mkldnn path is float32
only); this is 3-5x faster than torch's float64 fallback.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from numpy.lib.stride_tricks import as_strided

# unfolded (im2col) rows per GEMM: a cache-sized buffer
UNFOLD_BYTES = 4 << 20


def output_size(hw: tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int],
                padding: tuple[int, int]) -> tuple[int, int]:
    (h, w), (kh, kw), (sh, sw), (ph, pw) = hw, kernel, stride, padding
    return (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1


def unfold(x: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
           pad_value: object, budget: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """The im2col rows of x (B, H, W, C), sub-batch by sub-batch: yields (lo, m, rows) with rows
    (m*Ho*Wo, kh*kw*C) in (kh, kw, C) order for x[lo:lo + m], at most `budget` bytes. The rows
    live in ONE reused buffer (consume them before the next step; no page faults), and the
    padding is written once. In NHWC the kw taps of one kernel row are one contiguous run of
    kw*C elements, so the copy moves runs, not single channels."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    b, h, w, c = x.shape
    ho, wo = output_size((h, w), kernel, stride, padding)
    k = kh * kw * c
    step = max(1, min(b, budget // max(1, ho * wo * k * x.itemsize)))
    padded = np.full((step, h + 2 * ph, w + 2 * pw, c), pad_value, dtype=x.dtype)
    buf = np.empty((step, ho, wo, kh, kw * c), dtype=x.dtype)
    s0, s1, s2, s3 = padded.strides
    for lo in range(0, b, step):
        m = min(step, b - lo)
        padded[:m, ph:ph + h, pw:pw + w] = x[lo:lo + m]
        win = as_strided(padded[:m], shape=(m, ho, wo, kh, kw * c), strides=(s0, sh * s1, sw * s2, s1, s3),
                         writeable=False)
        np.copyto(buf[:m], win)
        yield lo, m, buf[:m].reshape(m * ho * wo, k)


def conv_nhwc(x: np.ndarray, g: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int],
              padding: tuple[int, int]) -> np.ndarray:
    """Convolution as im2col + float64 GEMM, x (B, H, W, C) @ g (kh*kw*C, Cout) -> (B, Ho, Wo, Cout)."""
    x = np.asarray(x, dtype=np.float64)
    ho, wo = output_size(x.shape[1:3], kernel, stride, padding)
    out = np.empty((x.shape[0], ho, wo, g.shape[1]), dtype=np.float64)
    for lo, m, rows in unfold(x, kernel, stride, padding, 0.0, UNFOLD_BYTES):
        np.matmul(rows, g, out=out[lo:lo + m].reshape(m * ho * wo, -1))
    return out

"""Convolution as im2col + one float64 BLAS GEMM on an NHWC layout, in cache-sized blocks.

Used where values must stay exact integers (< 2^53): the layer-by-layer encrypted inference on
float64 limbs, and the plaintext integer network. torch has no fast float64 convolution on CPU
(its mkldnn path is float32 only); this is 3-5x faster than torch's float64 fallback.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

# unfolded (im2col) rows per GEMM: a cache-sized buffer
UNFOLD_BYTES = 4 << 20


def conv_nhwc(x: np.ndarray, g: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int],
          padding: tuple[int, int]) -> np.ndarray:
    """Convolution as im2col + GEMM, x (B, H, W, C) @ g (kh*kw*C, Cout) -> (B, Ho, Wo, Cout), in
    sub-batches whose unfolded rows stay cache-sized (reused buffers: no page faults, and the
    zero padding is written once)."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    b, h, w, c = x.shape
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    k = g.shape[0]
    step = max(1, min(b, UNFOLD_BYTES // max(1, ho * wo * k * 8)))
    padded = np.zeros((step, h + 2 * ph, w + 2 * pw, c), dtype=np.float64)
    buf = np.empty((step, ho, wo, kh, kw, c), dtype=np.float64)
    out = np.empty((b, ho, wo, g.shape[1]), dtype=np.float64)
    for lo in range(0, b, step):
        m = min(step, b - lo)
        padded[:m, ph:ph + h, pw:pw + w] = x[lo:lo + m]
        win = sliding_window_view(padded[:m], (kh, kw), axis=(1, 2))[:, ::sh, ::sw].transpose(0, 1, 2, 4, 5, 3)
        np.copyto(buf[:m], win[:, :ho, :wo])
        np.matmul(buf[:m].reshape(m * ho * wo, k), g, out=out[lo:lo + m].reshape(m * ho * wo, -1))
    return out

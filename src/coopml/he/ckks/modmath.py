"""Exact modular arithmetic on coefficient arrays with float64 BLAS.

A linear layer over ciphertexts is `out = W @ X mod q` for every RNS prime q, where X holds
the ciphertexts' coefficients (NTT form: the map is linear, the domain does not matter) and W
the integer weights. float64 multiplies integers exactly while every partial sum stays below
2^53, so X is cut into digits of a few bits (and W too when it is large) such that
digit_x * digit_w * K < 2^53; each digit product is one BLAS call, reduced mod q in int64 and
recombined by Horner steps that never overflow 64 bits.
"""

from __future__ import annotations

import numpy as np

EXACT_BITS = 53


def _shift_mod(a: np.ndarray, bits: int, q: int) -> np.ndarray:
    """(a * 2^bits) mod q for 0 <= a < q < 2^60, in steps that stay below 2^63."""
    step = 63 - q.bit_length()
    while bits > 0:
        s = min(step, bits)
        a = (a << np.uint64(s)) % np.uint64(q)
        bits -= s
    return a


def _digits(values: np.ndarray, width: int, count: int) -> list[np.ndarray]:
    """Unsigned base-2^width digits of non-negative uint64 values, as float64 arrays."""
    mask = np.uint64((1 << width) - 1)
    return [((values >> np.uint64(width * i)) & mask).astype(np.float64) for i in range(count)]


def _signed_digits(w: np.ndarray, width: int, count: int) -> list[np.ndarray]:
    """Base-2^width digits of |w| carrying w's sign (so sum_i d_i 2^(width i) = w), float64."""
    sign = np.where(w < 0, -1.0, 1.0)
    mag = np.abs(w).astype(np.uint64)
    return [d * sign for d in _digits(mag, width, count)]


def modmatmul(w: np.ndarray, x: np.ndarray, q: int) -> np.ndarray:
    """(w @ x) mod q exactly: w int64 (m, K) with |w| < 2^62, x uint64 (K, C) with entries < q < 2^60."""
    m, k = w.shape
    if x.shape[0] != k:
        raise ValueError(f"shape mismatch {w.shape} @ {x.shape}")
    kb = max(1, int(k).bit_length())
    wb = max(1, int(np.abs(w).max()).bit_length()) if w.size else 1
    qb = q.bit_length()
    budget = EXACT_BITS - kb - 1
    # give W as few digits as possible, then X gets what is left (at least 8 bits per digit)
    w_count = 1
    while -(-wb // w_count) > budget - 8:
        w_count += 1
    w_width = -(-wb // w_count)
    x_width = budget - w_width
    x_count = -(-qb // x_width)
    xd = _digits(x, x_width, x_count)
    wd = _signed_digits(w, w_width, w_count)
    qq = np.uint64(q)
    acc = np.zeros((m, x.shape[1]), dtype=np.uint64)
    # Horner over the combined digit position: value = sum_{i,j} wd_j xd_i 2^(w_width j + x_width i)
    terms: dict[int, np.ndarray] = {}
    for j, wj in enumerate(wd):
        for i, xi in enumerate(xd):
            prod = (wj @ xi).astype(np.int64) % np.int64(q)
            shift = w_width * j + x_width * i
            if shift in terms:
                terms[shift] = (terms[shift] + prod.astype(np.uint64)) % qq
            else:
                terms[shift] = prod.astype(np.uint64)
    prev = None
    for shift in sorted(terms, reverse=True):
        if prev is not None:
            acc = _shift_mod(acc, prev - shift, q)
        acc = (acc + terms[shift]) % qq
        prev = shift
    if prev:
        acc = _shift_mod(acc, prev, q)
    return acc


def pack(values: np.ndarray, nbytes: int) -> bytes:
    """Little-endian `nbytes`-byte encoding of each uint64 value (values < 2^(8 nbytes))."""
    v = np.ascontiguousarray(values, dtype="<u8").reshape(-1)
    return v.view(np.uint8).reshape(-1, 8)[:, :nbytes].tobytes()


def unpack(data: bytes, nbytes: int, count: int) -> np.ndarray:
    if len(data) != nbytes * count:
        raise ValueError(f"expected {nbytes * count} bytes, got {len(data)}")
    out = np.zeros((count, 8), dtype=np.uint8)
    out[:, :nbytes] = np.frombuffer(data, dtype=np.uint8).reshape(count, nbytes)
    return out.view("<u8").reshape(count).astype(np.uint64)

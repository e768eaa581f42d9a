"""float64 limbs: exact Z_Q arithmetic through BLAS GEMMs (the layer-by-layer engine's core)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coopml.he import limbs as lb
from coopml.he import ring


def _words(seed: int, shape: tuple[int, ...], words: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 1 << 64, size=(*shape, words), dtype=np.uint64)


def _ints(w: np.ndarray) -> np.ndarray:
    return ring.to_ring(w) if w.shape[-1] > 1 else w[..., 0].astype(object)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), words=st.sampled_from([1, 2, 3]), bits=st.integers(8, 50),
       bits2=st.integers(8, 52))
def test_limbs_roundtrip_renorm_and_rebase(seed, words, bits, bits2):
    w = _words(seed, (5, 3), words)
    x = lb.from_words(w, bits)
    assert x.count == -(-64 * words // bits)
    assert np.abs(x.data).max() <= 2 ** (bits - 1)                       # balanced
    assert np.array_equal(lb.to_words(x), w)
    # unnormalised limbs (as after a GEMM) carry back to the same value
    bumped = x.replace(x.data * 3 - np.roll(x.data, 1, axis=1), x.bound * 4)
    want = lb.to_words(bumped)
    assert np.array_equal(lb.to_words(lb.renorm(bumped)), want)
    y = lb.rebase(bumped, bits2)
    assert y.bits == bits2 and np.abs(y.data).max() <= 2 ** (bits2 - 1)
    assert np.array_equal(lb.to_words(y), want)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), words=st.sampled_from([1, 2]), scale=st.sampled_from([1, 100, 1 << 20]))
def test_gemms_on_limbs_are_exact_mod_q(seed, words, scale):
    rng = np.random.default_rng(seed)
    q = 1 << (64 * words)
    a = rng.integers(-scale, scale + 1, size=(7, 30)).astype(np.float64)     # plaintext integers
    k = _words(seed + 1, (30, 4), words)                                    # Z_Q matrix
    want = (a.astype(np.int64).astype(object) @ _ints(k)) % q
    got = lb.to_words(lb.words_matmul(a, k))                               # A (plain) x K (Z_Q)
    assert np.array_equal(_ints(got), want)
    # Z_Q activations x plaintext weights, one GEMM over all limbs
    acts = _words(seed + 2, (9, 30), words)
    g = rng.integers(-scale, scale + 1, size=(30, 4)).astype(np.float64)
    x = lb.from_words(acts, lb.bits_for(np.abs(g).sum(axis=0).max(), 64 * words))
    got = lb.to_words(lb.matmul_right(x, g))
    want = (_ints(acts) @ g.astype(np.int64).astype(object)) % q
    assert np.array_equal(_ints(got), want)


def test_exactness_is_checked_not_assumed():
    x = lb.from_words(_words(0, (4, 8), 2), 40)
    g = np.full((8, 2), float(1 << 20))
    with pytest.raises(lb.ExactnessError, match="2\\^53"):
        lb.matmul_right(x, g)                  # 2^39 * 8 * 2^20 > 2^53: refused, never rounded
    with pytest.raises(lb.ExactnessError):
        lb.bits_for(2.0 ** 60, 128)

"""Byte digits: exact Z_Q arithmetic through int8 GEMMs (the layer-by-layer engine's fast tail)."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from coopml.errors import HEError
from coopml.he import digits as dg
from coopml.he import ring


def _words(seed: int, shape: tuple[int, ...], words: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 1 << 64, size=(*shape, words), dtype=np.uint64)


def _ints(w: np.ndarray) -> np.ndarray:
    return ring.to_ring(w) if w.shape[-1] > 1 else w[..., 0].astype(object)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), words=st.sampled_from([1, 2, 3]), wmax=st.sampled_from([1, 5, 127]))
def test_int8_gemms_on_digits_are_exact_mod_q(seed, words, wmax):
    rng = np.random.default_rng(seed)
    q = 1 << (64 * words)
    acts = _words(seed, (9, 30), words)
    x = dg.from_words(acts)
    assert x.shape == (8 * words, 9, 30) and np.array_equal(dg.to_words(x), acts)     # a view, both ways
    g = rng.integers(-wmax, wmax + 1, size=(30, 4))
    got = dg.to_words(dg.normalize(dg.linear(x, g)))
    assert np.array_equal(_ints(got), (_ints(acts) @ g.astype(object)) % q)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), stride=st.sampled_from([1, 2]), pad=st.sampled_from([0, 1, 2]))
def test_int8_convolution_on_digits_equals_torch_on_integers_mod_q(seed, stride, pad):
    """Zero padding is digit 0 (shifted -128 like any other input); checked against an exact
    int64 torch convolution of every 16-bit slice of the words."""
    rng = np.random.default_rng(seed)
    acts = _words(seed, (2, 6, 6, 3), 1)                        # (B, H, W, C) in Z_{2^64}
    weight = rng.integers(-127, 128, size=(4, 3, 3, 3))         # torch (Cout, Cin, kh, kw)
    g = weight.transpose(2, 3, 1, 0).reshape(-1, 4)
    got = dg.to_words(dg.normalize(dg.conv(dg.from_words(acts), g, (3, 3), (stride, stride), (pad, pad))))
    want = np.zeros(got.shape[:-1], dtype=object)
    a = acts[..., 0]
    for shift in range(0, 64, 16):                              # exact in int64: 16-bit slices x 7-bit weights
        part = torch.from_numpy(((a >> np.uint64(shift)) & np.uint64(0xFFFF)).astype(np.int64)).permute(0, 3, 1, 2)
        y = torch.nn.functional.conv2d(part, torch.from_numpy(weight), stride=stride, padding=pad)
        want += y.permute(0, 2, 3, 1).numpy().astype(object) * (1 << shift)
    assert np.array_equal(_ints(got), want % (1 << 64))


def test_normalize_carries_negative_sums_and_weights_beyond_int8_are_refused():
    s = np.array([[-1], [0]], dtype=np.int64)                  # -1 in two digits: 0xFFFF
    assert dg.normalize(s)[:, 0].tolist() == [255, 255]
    assert dg.fits(np.full((3, 2), 127), 3) and not dg.fits(np.full((3, 2), 128), 3)
    assert not dg.fits(np.ones((3, 2)), dg.MAX_K + 1)
    with pytest.raises(HEError, match="int8"):
        dg.linear(dg.from_words(_words(0, (2, 3), 1)), np.full((3, 2), 200))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), words=st.sampled_from([1, 2]), bits=st.sampled_from([8, 16, 32, 20, 43]))
def test_limbs_become_bytes_exactly_even_unnormalised(seed, words, bits):
    """Float64 limbs as a GEMM leaves them (large, signed, not carried) -> the value's bytes."""
    from coopml.he import limbs as lb
    x = lb.from_words(_words(seed, (4, 3), words), bits)
    bumped = x.replace(x.data * 5 - np.roll(x.data, 1, axis=1), x.bound * 6)
    assert np.array_equal(dg.to_words(dg.from_limbs(bumped)), lb.to_words(bumped))


def test_without_a_working_int8_gemm_the_layers_run_on_float64_limbs(monkeypatch):
    """`torch._int_mm` is private: a torch without it (or computing it wrongly) must not break
    encrypted inference. The probe says no, `fits` refuses, the tail runs on float64 limbs and
    the words are the same."""
    from coopml.he import MODEL_PARAMS, encrypt_model, encrypted_infer_layered, keygen
    from coopml.he import layered as he_layered
    from coopml.models import build_model

    assert dg.available()                                       # this torch: the probe passes
    torch.manual_seed(0)
    model = build_model("table4", seed=1)
    _sk, pk = keygen(MODEL_PARAMS, 1, rng=0)
    enc = encrypt_model(pk, model, p=1 << 5, q=1000)
    x = np.random.default_rng(0).integers(0, 1001, size=(2, 1, 28, 28))
    want = encrypted_infer_layered(enc, x).words
    assert he_layered._digits_fit(enc.tail.layers[:enc.split])
    calls = []
    real = torch._int_mm

    def wrong(a, b, out=None):                                  # a torch whose int8 GEMM is off by one
        calls.append(1)
        real(a, b, out=out)
        out += 1
    for broken in (None, wrong):
        dg.available.cache_clear()
        if broken is None:
            monkeypatch.delattr(torch, "_int_mm")
        else:
            monkeypatch.setattr(torch, "_int_mm", broken, raising=False)
        assert not dg.available() and not dg.fits(np.ones((3, 2)), 3)
        assert not he_layered._digits_fit(enc.tail.layers[:enc.split])
        assert np.array_equal(encrypted_infer_layered(enc, x).words, want)
    assert len(calls) == 1                                      # the probe only, never the inference
    monkeypatch.undo()
    dg.available.cache_clear()
    assert dg.available()

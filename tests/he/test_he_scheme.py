"""The Zhou-Wornell scheme itself: exact homomorphisms, parameter validation, noise budget."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coopml.errors import CoopmlError
from coopml.he import (
    KeyMismatchError,
    NoiseOverflowError,
    Params,
    add,
    add_plain,
    decrypt,
    encrypt,
    inner_product,
    keygen,
    linear_transform,
    linear_transform_key,
    matmul_plain,
    ring,
)

P64 = Params(w=1 << 24, k=2, plain_bound=1 << 12)
P128 = Params(w=1 << 70, k=3, plain_bound=1 << 20, words=2)
KEYS = {id(p): keygen(p, n=3, rng=7) for p in (P64, P128)}

vectors = st.lists(st.lists(st.integers(-4096, 4096), min_size=3, max_size=3), min_size=1, max_size=6)


@pytest.mark.parametrize("params", [P64, P128], ids=["Q=2^64", "Q=2^128"])
@settings(max_examples=25, deadline=None)
@given(x=vectors, y=vectors, g=st.lists(st.integers(-50, 50), min_size=1, max_size=36))
def test_homomorphisms_are_exact(params, x, y, g):
    sk, pk = KEYS[id(params)]
    x = np.array(x)
    y = np.array((y * len(x))[:len(x)])
    cx, cy = encrypt(pk, x), encrypt(pk, y)
    assert np.array_equal(decrypt(sk, cx), x)
    assert np.array_equal(decrypt(sk, add(cx, cy)), x + y)
    assert np.array_equal(decrypt(sk, add_plain(cx, y)), x + y)
    gm = np.resize(np.array(g), (2, len(x)))
    assert np.array_equal(decrypt(sk, matmul_plain(gm, cx)), gm @ x)
    assert np.array_equal(decrypt(sk, inner_product(cx, gm[0])), gm[0] @ x)


def test_ciphertext_layout_and_key_equation():
    """S' M = S* + E with |E| <= B: the public key really is a key-switching matrix to S' = [I, T]."""
    p = Params(w=1 << 16, k=1, noise_bound=3, plain_bound=100)
    sk, pk = keygen(p, n=2, rng=1)
    assert pk.m_words.shape == (2 + 1, 2 * p.digits, 1)
    m = ring.to_ring(pk.m_words)
    resid = ring.signed(ring.reduce(sk.matrix @ m, 1), 1)
    powers = np.array([1 << (p.digits - 1 - b) for b in range(p.digits)])
    s_star = np.kron(np.eye(2, dtype=np.int64), powers)
    e = resid - s_star
    assert np.abs(e).max() <= 3 and np.abs(e).max() > 0
    ct = encrypt(pk, np.array([[7, -3]]))
    assert ct.words.shape == (1, 3, 1)


@pytest.mark.parametrize("params", [Params(w=1 << 40, k=2, plain_bound=1000),
                                    Params(w=1 << 60, k=1, plain_bound=1000, words=2)])
def test_linear_transform_switches_to_new_key(params):
    sk, pk = keygen(params, n=4, rng=3)
    x = np.random.default_rng(0).integers(-1000, 1001, size=(5, 4))
    g = np.random.default_rng(1).integers(-9, 10, size=(2, 4))
    ksk, sk_out = linear_transform_key(sk, g, rng=2)
    out = linear_transform(ksk, encrypt(pk, x))
    assert out.n == 2 and out.key_id == sk_out.key_id
    assert np.array_equal(decrypt(sk_out, out), x @ g.T)
    with pytest.raises(KeyMismatchError):
        decrypt(sk, out)


def test_noise_budget_refuses_before_wrong_decryption():
    p = Params(w=1 << 12, k=1, plain_bound=10)
    sk, pk = keygen(p, n=1, rng=0)
    ct = encrypt(pk, np.array([[1]] * 64))
    big = np.ones((1, 64), dtype=np.int64) * 40      # noise grows by 2560 > w / (2 * fresh)
    out = matmul_plain(big, ct)
    assert 2 * out.noise_bound >= p.w
    with pytest.raises(NoiseOverflowError, match="w/2"):
        decrypt(sk, out)
    small = matmul_plain(np.ones((1, 2), dtype=np.int64), encrypt(pk, np.array([[3], [4]])))
    assert decrypt(sk, small)[0, 0] == 7


def test_value_overflow_is_caught_in_Q():
    p = Params(w=1 << 40, k=1, plain_bound=1 << 20)
    sk, pk = keygen(p, n=1, rng=0)
    ct = encrypt(pk, np.array([[1 << 20]] * 8))
    g = np.full((1, 8), 1 << 10, dtype=np.int64)    # value 2^33 * w = 2^73 > 2^63
    with pytest.raises(NoiseOverflowError, match="wrap"):
        decrypt(sk, matmul_plain(g, ct))


@pytest.mark.parametrize("kwargs, match", [
    ({"w": 1}, "w must be"), ({"k": 0}, "k must be"), ({"words": 5}, "words"),
    ({"w": 16, "noise_bound": 4}, "fresh ciphertexts"), ({"w": 1 << 62, "plain_bound": 8}, "does not fit"),
    ({"w": 2.5}, "must be an int"),
])
def test_params_are_validated(kwargs, match):
    with pytest.raises(CoopmlError, match=match):
        Params(**kwargs)


def test_inputs_and_keys_are_checked():
    sk, pk = keygen(P64, n=3, rng=1)
    sk2, pk2 = keygen(P64, n=3, rng=2)
    with pytest.raises(CoopmlError, match="integer"):
        encrypt(pk, np.array([[0.5, 1.0, 2.0]]))
    with pytest.raises(CoopmlError, match="n=3"):
        encrypt(pk, np.array([[1, 2]]))
    with pytest.raises(CoopmlError, match="plain_bound"):
        encrypt(pk, np.array([[1, 2, 1 << 13]]))
    ct = encrypt(pk, np.array([[1, 2, 3]]))
    with pytest.raises(KeyMismatchError):
        decrypt(sk2, ct)
    with pytest.raises(KeyMismatchError):
        add(ct, encrypt(pk2, np.array([[1, 2, 3]])))
    assert "t=" not in repr(sk) and str(sk.t[0, 0]) not in repr(sk)

"""Encrypted models: decrypted encrypted-inference outputs equal the integer-scaled plaintext network."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch import nn

from coopml.errors import CoopmlError
from coopml.he import (
    MODEL_PARAMS,
    KeyMismatchError,
    NoiseOverflowError,
    Params,
    decrypt_model,
    decrypt_outputs,
    encrypt_model,
    encrypted_infer,
    encrypted_infer_layered,
    integer_forward,
    keygen,
    quantize,
    scale_inputs,
)
from coopml.he import layered as he_layered
from coopml.models import TaylorSigmoid, build_model

KEYS = {n: keygen(MODEL_PARAMS, n=n, rng=11) for n in (1, 3, 4, 32)}


def small_cnn(seed: int, c1: int, c2: int, k: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, c1, k, padding=k // 2), nn.AvgPool2d(2),
                         nn.Conv2d(c1, c2, 3, padding=1), nn.AvgPool2d(2), nn.Flatten(),
                         nn.Linear(c2 * 3 * 3, 5))


def fc_net(seed: int, hidden: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(36, hidden), nn.Linear(hidden, 4))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), c1=st.sampled_from([1, 3]), c2=st.integers(1, 3),
       k=st.sampled_from([3, 5]), logp=st.integers(3, 7), q=st.sampled_from([10, 255, 1000]),
       strategy=st.sampled_from(["element-wise", "matrix-pair-wise"]), batch=st.integers(1, 4))
def test_cnn_encrypted_inference_is_bit_identical(seed, c1, c2, k, logp, q, strategy, batch):
    model = small_cnn(seed, c1, c2, k)
    p = 1 << logp
    sk, pk = KEYS[1 if strategy == "element-wise" else c1]
    enc = encrypt_model(pk, model, p, q, strategy, input_shape=(1, 12, 12))
    x = np.random.default_rng(seed).integers(0, q + 1, size=(batch, 1, 12, 12))
    want = integer_forward(quantize(model, p, q), x)
    collapsed = encrypted_infer(enc, x, q)
    assert np.array_equal(decrypt_outputs(sk, enc, collapsed), want)
    layered = encrypted_infer_layered(enc, x, q, chunk=2)          # layer by layer, in chunks
    assert np.array_equal(layered.words, collapsed.words)          # the same words mod Q


def shaped_cnn(seed: int, c1: int, kernel: tuple[int, int], stride: int, pool: tuple[int, int],
               act: str) -> nn.Sequential:
    """1-D style (rectangular) kernels, strides, rectangular pools, optional nonlinearity."""
    torch.manual_seed(seed)
    mid = {"none": [], "relu": [nn.ReLU()], "taylor": [TaylorSigmoid()]}[act]
    pad = (kernel[0] // 2, kernel[1] // 2)
    return nn.Sequential(nn.Conv2d(1, c1, kernel, stride=stride, padding=pad), *mid, nn.AvgPool2d(pool),
                         nn.Conv2d(c1, 2, (1, 3), padding=(0, 1)), nn.Flatten(), nn.LazyLinear(3))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), c1=st.sampled_from([2, 3]), kernel=st.sampled_from([(1, 5), (3, 3), (1, 9)]),
       stride=st.sampled_from([1, 2]), pool=st.sampled_from([(1, 2), (2, 2)]),
       act=st.sampled_from(["none", "relu", "taylor"]),
       strategy=st.sampled_from(["element-wise", "matrix-pair-wise"]), words=st.sampled_from([1, 2]),
       shape=st.sampled_from([(1, 4, 16), (1, 5, 15)]))
def test_layered_and_prefix_inference_are_bit_identical(seed, c1, kernel, stride, pool, act, strategy, words, shape):
    """Layer-by-layer encrypted inference on rectangular/strided convolutions, with and without a
    nonlinearity (then only the linear prefix runs in cipherspace and the key holder finishes):
    decrypted outputs equal the integer network bit for bit. The first layer merged with its
    pooling into one strided convolution gives the same words as conv then pool, also where the
    floor-mode pooling drops a row or column (odd sizes)."""
    model = shaped_cnn(seed, c1, kernel, stride, pool, act)
    with torch.no_grad():
        model(torch.zeros(1, *shape))                               # materialise the lazy layer
    if act == "none":
        words = 2                       # the whole network in cipherspace needs Q = 2^128
    # Q = 2^64 suffices when only the first layer runs in cipherspace (Case Study IV's setting)
    params = MODEL_PARAMS if words == 2 else Params(w=1 << 26, k=1, plain_bound=1 << 12, words=1)
    p, q = (16, 63) if act == "taylor" else (32, 255)
    n = 1 if strategy == "element-wise" else c1
    sk, pk = KEYS[n] if words == 2 and n in KEYS else keygen(params, n=n, rng=seed)
    enc = encrypt_model(pk, model, p, q, strategy, input_shape=shape)
    x = np.random.default_rng(seed).integers(0, q + 1, size=(3, *shape))
    want = integer_forward(quantize(model, p, q), x)
    out = encrypted_infer_layered(enc, x, q, chunk=2)
    assert np.array_equal(decrypt_outputs(sk, enc, out), want)
    assert np.array_equal(encrypted_infer_layered(enc, x, q, merge_pools=False).words, out.words)
    if act == "none":
        assert np.array_equal(out.words, encrypted_infer(enc, x, q, method="collapsed").words)
    else:
        assert enc.split < len(enc.tail.layers)
        with pytest.raises(CoopmlError, match="linear networks"):
            encrypted_infer(enc, x, q, method="collapsed")


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), hidden=st.sampled_from([3, 4]), logp=st.integers(3, 7),
       strategy=st.sampled_from(["element-wise", "matrix-pair-wise"]))
def test_fully_connected_encrypted_inference_is_bit_identical(seed, hidden, logp, strategy):
    model = fc_net(seed, hidden)
    p, q = 1 << logp, 1000
    sk, pk = KEYS[1 if strategy == "element-wise" else hidden]
    enc = encrypt_model(pk, model, p, q, strategy, input_shape=(1, 6, 6))
    x = np.random.default_rng(seed).integers(-q, q + 1, size=(3, 1, 6, 6))   # signed inputs too
    want = integer_forward(quantize(model, p, q), x)
    assert np.array_equal(decrypt_outputs(sk, enc, encrypted_infer(enc, x)), want)


@pytest.fixture(scope="module")
def table4():
    model = build_model("table4", seed=3)
    torch.manual_seed(0)
    return model


@pytest.mark.parametrize("strategy", ["element-wise", "matrix-pair-wise"])
def test_table4_cnn_exact_and_decrypted_model_is_rounded(table4, strategy):
    sk, pk = KEYS[1 if strategy == "element-wise" else 32]
    enc = encrypt_model(pk, table4, p=1 << 7, q=1000, strategy=strategy)
    assert enc.output_scale == (1 << 21) * 1000 * 16
    x = scale_inputs(torch.rand(4, 1, 28, 28), 1000)
    out = encrypted_infer(enc, x, q=1000)
    ref = integer_forward(quantize(table4, 1 << 7, 1000), x)
    assert np.array_equal(decrypt_outputs(sk, enc, out), ref)
    # the integer outputs / scale approximate the float logits
    with torch.no_grad():
        logits = table4(torch.from_numpy(x).float() / 1000).numpy()
    assert np.abs(ref / enc.output_scale - logits).max() < 0.05
    dec = decrypt_model(sk, enc, build_model("table4"))
    w = table4.body[0].weight.detach()
    assert torch.equal(dec.body[0].weight, torch.round(w * 128) / 128)
    assert torch.equal(dec.head.weight, torch.round(table4.head.weight.detach() * 128) / 128)


def test_layered_inference_matches_prepared_operator(table4):
    sk, pk = KEYS[1]
    enc = encrypt_model(pk, table4, p=1 << 5, q=1000)
    x = scale_inputs(torch.rand(2, 1, 28, 28), 1000)
    a, b = encrypted_infer_layered(enc, x), encrypted_infer(enc, x)
    assert np.array_equal(a.words, b.words)
    # the tail on int8 byte digits (Table IV's weights fit int8 at p = 2^5) and on float64 limbs
    assert he_layered._digits_fit(enc.tail.layers[:enc.split])
    assert np.array_equal(encrypted_infer_layered(enc, x, int8=False).words, a.words)
    assert np.array_equal(encrypted_infer_layered(enc, x, merge_pools=False).words, a.words)
    assert np.array_equal(decrypt_outputs(sk, enc, a), integer_forward(quantize(table4, 32, 1000), x))


def test_noise_check_raises_when_w_too_small(table4):
    params = Params(w=1 << 30, k=1, plain_bound=1 << 20, words=2)   # output noise ~2^47 > w/2
    _sk, pk = keygen(params, 1, rng=0)
    enc = encrypt_model(pk, table4, p=1 << 7, q=1000)
    with pytest.raises(NoiseOverflowError, match="w/2"):
        encrypted_infer(enc, scale_inputs(torch.rand(2, 1, 28, 28), 1000))
    one_word = Params(w=1 << 40, k=1, plain_bound=1 << 20)            # Q = 2^64 cannot hold w*y
    _sk, pk = keygen(one_word, 1, rng=0)
    enc = encrypt_model(pk, table4, p=1 << 7, q=1000)
    with pytest.raises(NoiseOverflowError):
        encrypted_infer(enc, scale_inputs(torch.rand(2, 1, 28, 28), 1000))


def test_model_misuse_gives_clear_errors(table4):
    _sk, pk = KEYS[1]
    with pytest.raises(KeyMismatchError, match="n=32"):
        encrypt_model(pk, table4, 128, strategy="matrix-pair-wise")
    with pytest.raises(CoopmlError, match="strategy"):
        encrypt_model(pk, table4, 128, strategy="row-wise")
    with pytest.raises(CoopmlError, match="cannot be scaled to integers"):
        encrypt_model(pk, build_model("table1-c1"), 128)
    enc = encrypt_model(pk, table4, 128)
    with pytest.raises(CoopmlError, match="integer inputs"):
        encrypted_infer(enc, np.zeros((1, 1, 28, 28)))
    with pytest.raises(CoopmlError, match="q=1000"):
        encrypted_infer(enc, np.zeros((1, 1, 28, 28), np.int64), q=255)
    with pytest.raises(CoopmlError, match="shape"):
        encrypted_infer(enc, np.zeros((1, 1, 14, 14), np.int64))
    other_sk, _ = keygen(MODEL_PARAMS, 1, rng=99)
    with pytest.raises(KeyMismatchError):
        decrypt_model(other_sk, enc, build_model("table4"))


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10_000), strategy=st.sampled_from(["element-wise", "matrix-pair-wise"]))
def test_single_word_modulus_end_to_end(seed, strategy):
    """Q = 2^64 (uint64 wrap-around) suffices for a small net with small scales."""
    params = Params(w=1 << 36, k=2, plain_bound=1 << 10, words=1)
    model = fc_net(seed, 3)
    sk, pk = keygen(params, n=1 if strategy == "element-wise" else 3, rng=seed)
    enc = encrypt_model(pk, model, p=8, q=16, strategy=strategy, input_shape=(1, 6, 6))
    assert enc.first_weight.words.dtype == np.uint64 and enc.first_weight.words.shape[-1] == 1
    x = np.random.default_rng(seed).integers(0, 17, size=(5, 1, 6, 6))
    assert np.array_equal(decrypt_outputs(sk, enc, encrypted_infer(enc, x)),
                          integer_forward(quantize(model, 8, 16), x))


def test_relu_is_not_a_ciphertext_operation():
    """Why the nonlinearity stays out of cipherspace: ReLU applied to the components does not decrypt
    to ReLU of the plaintexts, with a negative or a non-negative secret (the paper's suggestion),
    while a random 0/1 mask ('ReLU via random dropout') is linear and decrypts to the masked values."""
    from coopml.he import decrypt, encrypt, matmul_plain, ring
    params = Params(w=1 << 20, k=1, plain_bound=1 << 10, words=1)
    keys = [keygen(params, n=1, rng=seed) for seed in range(8)]
    signs = set()
    x = np.random.default_rng(0).integers(-1000, 1001, size=(200, 1))
    for sk, pk in keys:
        signs.add(bool(sk.t[0, 0] >= 0))
        ct = encrypt(pk, x)
        comps = ring.signed(ring.to_ring(ct.words), 1)                      # centred representatives
        relu_ct = type(ct)(params, 1, ring.to_words(np.maximum(comps, 0), 1), ct.noise_bound, ct.value_bound,
                           ct.key_id)
        assert (decrypt(sk, relu_ct) != np.maximum(x, 0)).mean() > 0.3     # garbage, not ReLU
    assert signs == {True, False}
    sk, pk = keys[0]
    mask = np.diag(np.random.default_rng(1).integers(0, 2, size=6))
    x6 = np.arange(-3, 3).reshape(6, 1)
    assert np.array_equal(decrypt(sk, matmul_plain(mask, encrypt(pk, x6))), mask @ x6)


def _conv_words(x: np.ndarray, k: np.ndarray, stride: tuple[int, int], pad: tuple[int, int]) -> np.ndarray:
    """Reference convolution mod 2^64 on uint64 (numpy's integer arithmetic wraps): x (B, H, W, C),
    k (kh, kw, C, O, 1) words -> (B, Ho, Wo, O)."""
    from coopml.he.im2col import output_size
    kh, kw = k.shape[:2]
    ho, wo = output_size(x.shape[1:3], (kh, kw), stride, pad)
    xp = np.pad(x, ((0, 0), (pad[0], pad[0]), (pad[1], pad[1]), (0, 0)))
    out = np.zeros((x.shape[0], ho, wo, k.shape[3]), dtype=np.uint64)
    for u in range(kh):
        for v in range(kw):
            patch = xp[:, u:u + stride[0] * (ho - 1) + 1:stride[0], v:v + stride[1] * (wo - 1) + 1:stride[1]]
            out += np.einsum("bhwc,co->bhwo", patch, k[u, v, :, :, 0])
    return out


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), kernel=st.tuples(st.integers(1, 4), st.integers(1, 4)),
       stride=st.tuples(st.integers(1, 3), st.integers(1, 3)), pad=st.tuples(st.integers(0, 2), st.integers(0, 2)),
       pools=st.lists(st.tuples(st.integers(1, 3), st.integers(1, 3)), min_size=1, max_size=2),
       hw=st.tuples(st.integers(5, 17), st.integers(5, 17)))
def test_a_convolution_and_its_sum_pools_merge_into_one_strided_convolution(seed, kernel, stride, pad, pools, hw):
    """`merge_pools_into_kernel` on its own, exact mod 2^64: any kernel, stride, padding, one or two
    rectangular pools, floor mode (sizes that do not divide). The model-level tests above merge
    only where the network allows it (element-wise, no activation before the pool)."""
    from coopml.he.im2col import output_size
    ho, wo = output_size(hw, kernel, stride, pad)
    ph, pw = np.prod([p[0] for p in pools]), np.prod([p[1] for p in pools])
    assume(ho >= ph and wo >= pw)
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 1 << 64, size=(2, *hw, 2), dtype=np.uint64)
    k = rng.integers(0, 1 << 64, size=(*kernel, 2, 3, 1), dtype=np.uint64)
    want = _conv_words(x, k, stride, pad)
    for size in pools:
        want = he_layered._pool(want, size, (1, 2))
    merged, kernel2, stride2 = he_layered.merge_pools_into_kernel(k, kernel, stride, pools)
    assert merged.shape[:2] == kernel2
    assert np.array_equal(_conv_words(x, merged, stride2, pad), want)
    # merged only where it does not add taps: a stride beyond the kernel leaves gaps in it
    assert he_layered._merge_pays(kernel, stride, pools) == (kernel2[0] * kernel2[1] <= ph * pw * kernel[0] * kernel[1])

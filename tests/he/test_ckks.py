"""coopml.he.ckks: confidential batch inference with CKKS (SEAL inside TenSEAL), for real.

Every test encrypts with a real SEAL key, evaluates without the secret key and decrypts. Small
batches keep CI fast; the 1000-image figures live in benchmarks/bench_ckks.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from coopml.errors import HEError
from coopml.he import (
    CkksFormatError,
    CkksKeyMismatchError,
    CkksParams,
    EncryptedBatch,
    EncryptedOutputs,
    HePlan,
    InputRangeError,
    InsecureParametersError,
    PlanError,
    PublicContext,
    QueryKey,
    UnsupportedLayerError,
    compile_model,
    evaluate,
    params_for,
)
from coopml.he.ckks import _seal
from coopml.he.ckks.batch import key_id_of
from coopml.he.ckks.modmath import modmatmul
from coopml.he.ckks.params import seal_context
from coopml.models import (
    FeatureModel,
    Square,
    TaylorSigmoid,
    TrainConfig,
    build_model,
    train_model,
)
from coopml.models import evaluate as accuracy


def _torch_outputs(model: nn.Module, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    model.eval()
    with torch.no_grad():
        t = torch.tensor(x, dtype=torch.float64)
        m64 = model.double()
        f, lg = m64.features(t).reshape(len(x), -1).numpy(), m64(t).numpy()
        model.float()
    return f, lg


def _round_trip(model: nn.Module, x: np.ndarray, key: QueryKey | None = None):
    """Verifier encrypts -> bytes -> contributor evaluates -> bytes -> verifier decrypts."""
    plan = compile_model(model, x.shape[1:])
    key = key or QueryKey.generate(params_for(plan))
    ctx = key.public_context()
    batch = EncryptedBatch.from_bytes(key.encrypt_images(x).to_bytes(), ctx)
    reply = evaluate(plan, batch).to_bytes()
    return key.decrypt_outputs(EncryptedOutputs.from_bytes(reply, key.context))


def _agree(model: nn.Module, x: np.ndarray, feature_tol: float) -> None:
    f, lg = _round_trip(model, x)
    tf, tl = _torch_outputs(model, x)
    assert f.shape == tf.shape and lg.shape == tl.shape
    assert np.abs(f - tf).max() <= feature_tol * max(1.0, np.abs(tf).max())
    assert (lg.argmax(1) == tl.argmax(1)).all()


@pytest.fixture(scope="module")
def table4_key() -> QueryKey:
    plan = compile_model(build_model("table4", seed=0), (1, 28, 28))
    return QueryKey.generate(params_for(plan))


@pytest.fixture(scope="module")
def mnist_small(mnist_train, mnist_test):
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(mnist_train))
    return mnist_train.subset(idx[:3000]), mnist_train.subset(idx[3000:3500]), mnist_test.subset(np.arange(1000))


# ---------------------------------------------------------------- parameters


def test_params_refuse_insecure_and_invalid():
    with pytest.raises(InsecureParametersError, match="128-bit"):
        CkksParams.create(poly_modulus_degree=2048, coeff_mod_bit_sizes=(40, 20), scale_bits=20)
    with pytest.raises(InsecureParametersError, match="poly_modulus_degree"):
        CkksParams.create(poly_modulus_degree=3000, coeff_mod_bit_sizes=(40,), scale_bits=20)
    with pytest.raises(InsecureParametersError, match="scale_bits"):
        CkksParams.create(poly_modulus_degree=2048, coeff_mod_bit_sizes=(54,), scale_bits=54)
    ok = CkksParams.create(poly_modulus_degree=4096, coeff_mod_bit_sizes=(60, 30, 19), scale_bits=25)
    assert ok.total_bits == 109 and ok.security_bits == 128 and ok.levels == 1


@pytest.mark.parametrize("arch", ["table4", "table4-square", "fc-sigmoid"])
def test_params_for_is_secure_and_seal_agrees(arch):
    import tenseal.sealapi as seal
    params = params_for(compile_model(build_model(arch, seed=0), (1, 28, 28)))
    limit = seal.CoeffModulus.MaxBitCount(params.poly_modulus_degree, seal.SEC_LEVEL_TYPE.TC128)
    assert params.total_bits <= limit
    assert seal_context(params).context.parameters_set()
    assert params.complex_packing == (arch == "table4")


@pytest.mark.parametrize("arch", ["table4", "table4-square", "fc-sigmoid"])
def test_the_float32_check_plan_sizes_the_same_parameters(arch):
    """A contributor checks its model before paying with a float32 fold (~9x cheaper); it must pick
    the parameters the exact plan picks, and its values must be close (not used to evaluate)."""
    model = build_model(arch, seed=0)
    exact, rough = compile_model(model, (1, 28, 28)), compile_model(model, (1, 28, 28), exact=False)
    assert params_for(rough) == params_for(exact)
    x = np.random.default_rng(1).random((5, 1, 28, 28))
    for e, r in zip(exact.forward_plain(x), rough.forward_plain(x), strict=True):
        assert np.allclose(e, r, rtol=1e-4, atol=1e-4 * np.abs(e).max())
        assert not np.array_equal(e, r)          # it is the cheap fold, not the exact one


def test_scores_folded_from_the_output_side_equal_the_forward_fold():
    """A model's class scores (10 outputs of 784 inputs) are folded by one backward pass (row i =
    gradient of score i) instead of 785 forward images: the same matrix as the forward fold of
    the full model's logits, and the same scores as torch in float64."""
    from coopml.roles.evaluation import ScoresOnly

    model = build_model("table4", seed=3)
    full = compile_model(model, (1, 28, 28))                  # 784 features -> forward over the basis
    scores = compile_model(ScoresOnly(model), (1, 28, 28))    # 10 scores -> reverse mode
    logits_rows = full.blocks[-1].matrix[full.feature_dim:]
    got = scores.blocks[-1].matrix[scores.feature_dim:]
    assert got.shape == logits_rows.shape == (10, 785)
    assert np.abs(got - logits_rows).max() <= 1e-12 * np.abs(logits_rows).max()
    x = np.random.default_rng(2).random((4, 1, 28, 28))
    with torch.no_grad():
        want = ScoresOnly(model).double()(torch.tensor(x)).numpy()
    assert np.abs(scores.forward_plain(x)[1] - want).max() <= 1e-10 * np.abs(want).max()


# ---------------------------------------------------------------- compiler


def test_unsupported_layer_is_refused_by_name():
    with pytest.raises(UnsupportedLayerError, match=r"layer body\.1 \(ReLU\).*Square/TaylorSigmoid"):
        compile_model(build_model("table1-c1"), (1, 28, 28))
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(2 * 13 * 13, 10))
    with pytest.raises(UnsupportedLayerError, match=r"layer 1 \(MaxPool2d\)"):
        compile_model(net, (1, 28, 28))


@pytest.mark.parametrize("arch", ["table4", "table4-square", "fc-sigmoid"])
def test_compiled_circuit_equals_torch(arch):
    model = build_model(arch, seed=3)
    if arch == "fc-sigmoid":      # non-trivial running statistics, folded at compile time
        bn = model.body[2]
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    plan = compile_model(model, (1, 28, 28))
    x = np.random.default_rng(1).random((7, 1, 28, 28))
    pf, pl = plan.forward_plain(x)
    tf, tl = _torch_outputs(model, x)
    assert np.allclose(pf, tf, atol=1e-9) and np.allclose(pl, tl, atol=1e-9)
    # the overflow bound is a real bound
    assert np.abs(np.concatenate([pf, pl], axis=1)).max() <= plan.output_bound


def test_every_supported_affine_layer_folds_exactly():
    torch.manual_seed(2)
    body = nn.Sequential(nn.ZeroPad2d((1, 0, 2, 1)), nn.Conv2d(1, 3, 3, stride=2, padding=1), nn.BatchNorm2d(3),
                         nn.Dropout(0.5), nn.Identity(), nn.AvgPool2d(2, stride=1), Square(), nn.Flatten(),
                         nn.Linear(3 * 5 * 3, 5), nn.BatchNorm1d(5))
    model = FeatureModel("mixed", body, 5, nn.Sequential(nn.Dropout(0.1), nn.Linear(5, 4)))
    for bn in (body[2], body[9]):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.data.uniform_(0.5, 1.5)
    model.train()                                   # compile folds the eval-mode (running-stats) network
    plan = compile_model(model, (1, 9, 7))
    x = np.random.default_rng(0).random((6, 1, 9, 7))
    pf, pl = plan.forward_plain(x)
    tf, tl = _torch_outputs(model, x)
    assert np.allclose(pf, tf, atol=1e-9) and np.allclose(pl, tl, atol=1e-9)
    assert [b.powers for b in plan.blocks] == [(2,), ()]


def test_modmatmul_is_exact():
    rng = np.random.default_rng(0)
    for q, wmax, k in [((1 << 54) - 33, 1 << 40, 300), (40961, 3, 1000), (1099511480321, 1 << 61, 20)]:
        w = rng.integers(-wmax, wmax, size=(5, k))
        x = rng.integers(0, q, size=(k, 6), dtype=np.uint64)
        ref = [[sum(int(w[i, j]) * int(x[j, c]) for j in range(k)) % q for c in range(6)] for i in range(5)]
        assert modmatmul(w, x, q).tolist() == ref


# ---------------------------------------------------------------- round trips


def test_random_table4_round_trip(table4_key):
    model = build_model("table4", seed=0)
    x = np.random.default_rng(2).random((40, 1, 28, 28))
    f, lg = _round_trip(model, x, table4_key)
    tf, tl = _torch_outputs(model, x)
    assert np.abs(f - tf).max() < 1e-4 and np.abs(lg - tl).max() < 1e-4
    assert (lg.argmax(1) == tl.argmax(1)).all()


def test_trained_table4_predictions_match_plaintext(mnist_small, table4_key):
    train, val, test = mnist_small
    model = build_model("table4", seed=1)
    train_model(model, train, val, TrainConfig(max_epochs=1, seed=1))
    x = test.tensors()[0][:300].numpy().astype(np.float64)
    f, lg = _round_trip(model, x, table4_key)
    tf, tl = _torch_outputs(model, x)
    assert (lg.argmax(1) == tl.argmax(1)).mean() == 1.0
    assert np.abs(f - tf).max() < 1e-3 * max(1.0, np.abs(tf).max())
    labels = test.labels[:300]
    assert (lg.argmax(1) == labels).mean() > 0.6               # a trained model, not a random one


def test_images_beyond_one_group_and_complex_packing():
    """More images than N/2 slots: the imaginary parts and a second group are used."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.Linear(3, 2))
    x = np.random.default_rng(3).random((2048 + 5, 1, 2, 2))
    f, lg = _round_trip(model, x)
    with torch.no_grad():
        t = torch.tensor(x, dtype=torch.float32)
        ref_f = model[1](model[0](t)).numpy()
        ref_l = model(t).numpy()
    assert f.shape == (2053, 3) and np.abs(f - ref_f).max() < 1e-4 and np.abs(lg - ref_l).max() < 1e-4


def _small_square_cnn() -> FeatureModel:
    torch.manual_seed(0)
    body = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.AvgPool2d(2), Square(), nn.Flatten())
    return FeatureModel("tiny-square", body, 3 * 3 * 3, nn.Linear(27, 4))


def _small_sigmoid_fc() -> FeatureModel:
    torch.manual_seed(1)
    body = nn.Sequential(nn.Flatten(), nn.Linear(36, 6), nn.BatchNorm1d(6), TaylorSigmoid())
    model = FeatureModel("tiny-sigmoid", body, 6, nn.Linear(6, 3))
    model.body[2].running_var.fill_(0.3)
    return model


@pytest.mark.parametrize("build", [_small_square_cnn, _small_sigmoid_fc], ids=["square-cnn", "taylor-fc"])
def test_polynomial_activation_round_trip(build):
    model = build().eval()
    x = np.random.default_rng(4).random((25, 1, 6, 6))
    _agree(model, x, feature_tol=1e-3)


def test_polynomial_models_refuse_complex_packing():
    model = _small_square_cnn().eval()
    plan = compile_model(model, (1, 6, 6))
    p = params_for(plan)
    complex_p = CkksParams.create(**{**p.model_dump(), "complex_packing": True})
    key = QueryKey.generate(complex_p)
    batch = key.encrypt_images(np.zeros((2, 1, 6, 6)))
    with pytest.raises(PlanError, match="real packing"):
        evaluate(plan, batch)


def test_parameters_too_small_for_the_model_are_refused():
    plan = compile_model(_small_square_cnn().eval(), (1, 6, 6))
    other = compile_model(nn.Sequential(nn.Flatten(), nn.Linear(36, 2), nn.Linear(2, 2)), (1, 6, 6))
    key = QueryKey.generate(params_for(other))
    batch = key.encrypt_images(np.zeros((3, 1, 6, 6)))
    with pytest.raises(PlanError):
        evaluate(plan, batch)
    with pytest.raises(PlanError, match="shape"):
        evaluate(compile_model(build_model("table4", seed=0), (1, 28, 28)), batch)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["table4-square", "fc-sigmoid"])
def test_real_polynomial_architectures_round_trip(arch):
    model = build_model(arch, seed=0).eval()
    x = np.random.default_rng(5).random((20, 1, 28, 28))
    _agree(model, x, feature_tol=1e-3)


# ---------------------------------------------------------------- models with polynomial activations learn


@pytest.mark.parametrize("arch,bar", [("fc-sigmoid", 0.8), ("table4-square", 0.8)])
def test_polynomial_architectures_learn_mnist(arch, bar, mnist_small):
    train, val, test = mnist_small
    model = build_model(arch, seed=0)
    train_model(model, train, val, TrainConfig(max_epochs=2, patience=2, seed=0))
    assert accuracy(model, test) >= bar


# ---------------------------------------------------------------- keys and secrets


def test_batch_for_one_key_is_useless_with_another(table4_key):
    model = build_model("table4", seed=0)
    plan = compile_model(model, (1, 28, 28))
    other = QueryKey.generate(table4_key.params)
    x = np.random.default_rng(6).random((10, 1, 28, 28))
    blob = table4_key.encrypt_images(x).to_bytes()
    with pytest.raises(CkksKeyMismatchError):
        EncryptedBatch.from_bytes(blob, other.public_context())
    out = evaluate(plan, EncryptedBatch.from_bytes(blob, table4_key.public_context()))
    with pytest.raises(CkksKeyMismatchError):
        other.decrypt_outputs(out)
    with pytest.raises(CkksKeyMismatchError):
        EncryptedOutputs.from_bytes(out.to_bytes(), other.context)
    # even with the labels forged, the other secret key decrypts noise
    out.context = other.context
    _, wrong = other.decrypt_outputs(out)
    _, tl = _torch_outputs(model, x)
    assert np.abs(wrong - tl).max() > 1.0


def _small_linear() -> tuple[nn.Module, HePlan, QueryKey]:
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10), nn.Linear(10, 10)).double()
    plan = compile_model(model, (1, 28, 28))
    return model, plan, QueryKey.generate(params_for(plan))


def test_a_request_carries_the_rings_capacity_whatever_count_it_declares():
    """A LIMIT, not a guarantee (docs/threat-model.md, P8): the declared count is a number in the
    header; the ciphertexts hold the ring's capacity of images, and the contributor's evaluation
    covers every slot. A verifier that declares 8 images gets the model's outputs on all of them."""
    model, plan, key = _small_linear()
    cap = key.params.capacity
    x = np.random.default_rng(8).random((cap, 1, 28, 28))
    full = key.encrypt_images(x)
    declared = EncryptedBatch(key.context, full.input_shape, 8, full.c0, full.seeds)
    batch = EncryptedBatch.from_bytes(declared.to_bytes(), key.public_context())
    assert batch.count == 8
    out = EncryptedOutputs.from_bytes(evaluate(plan, batch).to_bytes(), key.context)
    out.count = cap                          # the verifier's own object: it reads every slot
    _, logits = key.decrypt_outputs(out)
    with torch.no_grad():
        tl = model(torch.tensor(x)).numpy()
    assert cap >= 1024 and np.abs(logits - tl).max() < 1e-3


def test_the_output_mask_rests_on_the_verifiers_public_key():
    """A LIMIT (docs/threat-model.md, P8): the fresh encryption of zero that re-randomises each
    output is made with the verifier's public key, and SEAL accepts any key of the right shape.
    With an all-zero key the mask is gone: the same batch evaluated twice gives the same output
    polynomials up to the wire rounding, where an honest key makes them differ across the modulus."""
    _, plan, key = _small_linear()
    params = key.params
    n, q0 = params.poly_modulus_degree, key.context.seal.primes[0]
    pk = _seal.parse_ciphertext(key.context.public_key_bytes, n, len(params.coeff_mod_bit_sizes), 2)
    zero_pk = _seal.build_ciphertext(_seal.RawCiphertext(pk.parms_id, pk.scale, np.zeros_like(pk.data), 2,
                                                         None, pk.is_ntt_form))
    malformed = PublicContext.from_bytes(PublicContext(params, zero_pk, key_id_of(zero_pk)).to_bytes())
    x = np.random.default_rng(9).random((4, 1, 28, 28))
    enc = key.encrypt_images(x)
    for ctx, masked in ((key.context, True), (malformed, False)):
        batch = EncryptedBatch(ctx, enc.input_shape, enc.count, enc.c0, enc.seeds)
        a, b = (EncryptedOutputs.from_bytes(evaluate(plan, batch).to_bytes(), ctx) for _ in range(2))
        q = np.uint64(q0)
        diff = (a.data + q - b.data) % q                  # words < q0 < 2^54: no uint64 overflow
        spread = int(np.minimum(diff, q - diff).max())
        assert (spread > q0 // 4) if masked else (spread <= 4 << a.shift), (masked, spread.bit_length(), a.shift)


def test_secret_key_is_not_in_the_public_context(table4_key):
    params = table4_key.params
    n = params.poly_modulus_degree
    sk_words = _seal.parse_plaintext(_seal.save_bytes(table4_key.secret_key), n, len(params.coeff_mod_bit_sizes))
    ctx = table4_key.public_context()
    pk_payload = _seal.open_envelope(table4_key.context.public_key_bytes, 1 << 24)
    words = {int(w) for w in sk_words.ravel()} - {0, 1}
    assert len(words) > n // 2
    haystacks = (ctx, pk_payload)
    for w in list(words)[:2000]:
        needle = w.to_bytes(8, "little")
        assert not any(needle in h for h in haystacks)
    # and the key file does hold it (the check above would have found it)
    sk_blob = table4_key.to_bytes()
    assert any(w.to_bytes(8, "little") in _seal.open_envelope(
        sk_blob[sk_blob.index(b"\x5e\xa1"):][:len(_seal.save_bytes(table4_key.secret_key))], 1 << 24)
        for w in list(words)[:50])


def test_query_key_round_trips_through_bytes(table4_key):
    again = QueryKey.from_bytes(table4_key.to_bytes())
    assert again.key_id == table4_key.key_id
    plan = compile_model(nn.Sequential(nn.Flatten(), nn.Linear(784, 5), nn.Linear(5, 2)), (1, 28, 28))
    x = np.random.default_rng(7).random((3, 1, 28, 28))
    out = evaluate(plan, EncryptedBatch.from_bytes(table4_key.encrypt_images(x).to_bytes(),
                                                   table4_key.public_context()))
    f1, _ = again.decrypt_outputs(out)
    pf, _ = plan.forward_plain(x)
    assert np.abs(f1 - pf).max() < 1e-4


def test_images_outside_the_declared_range_are_refused(table4_key):
    with pytest.raises(InputRangeError, match="input range"):
        table4_key.encrypt_images(np.full((2, 1, 28, 28), 1.5))
    with pytest.raises(InputRangeError):
        table4_key.encrypt_images(np.full((2, 1, 28, 28), np.nan))


# ---------------------------------------------------------------- malformed input


@pytest.fixture(scope="module")
def blobs():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.Linear(3, 2))
    plan = compile_model(model, (1, 2, 2))
    key = QueryKey.generate(params_for(plan))
    batch = key.encrypt_images(np.random.default_rng(8).random((3, 1, 2, 2)))
    ctx = key.public_context()
    out = evaluate(plan, EncryptedBatch.from_bytes(batch.to_bytes(), ctx))
    return {"key": key, "context": ctx, "batch": batch.to_bytes(), "outputs": out.to_bytes(),
            "secret": key.to_bytes()}


def _load(kind: str, data: bytes, blobs) -> object:
    if kind == "context":
        return PublicContext.from_bytes(data)
    if kind == "batch":
        return EncryptedBatch.from_bytes(data, blobs["context"])
    if kind == "outputs":
        return EncryptedOutputs.from_bytes(data, blobs["key"].context)
    return QueryKey.from_bytes(data)


KINDS = ["context", "batch", "outputs", "secret"]


@pytest.mark.parametrize("kind", KINDS)
def test_truncated_wrong_kind_and_trailing_bytes_are_refused(kind, blobs):
    good = blobs[kind]
    _load(kind, good, blobs)
    for bad in (good[:len(good) // 2], good[:-1], good + b"\x00", b"", b"garbage" * 3):
        with pytest.raises(CkksFormatError):
            _load(kind, bad, blobs)
    other = blobs["batch" if kind != "batch" else "outputs"]
    with pytest.raises(CkksFormatError, match="expected a"):
        _load(kind, other, blobs)


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_blobs_raise_only_format_errors(kind, blobs, data):
    good = blobs[kind]
    how = data.draw(st.sampled_from(["random", "flip", "splice", "header"]))
    if how == "random":
        bad = data.draw(st.binary(max_size=300))
    elif how == "flip":
        pos = data.draw(st.lists(st.integers(0, len(good) - 1), min_size=1, max_size=8))
        arr = bytearray(good)
        for p in pos:
            arr[p] ^= data.draw(st.integers(1, 255))
        bad = bytes(arr)
    elif how == "splice":
        cut = data.draw(st.integers(0, len(good)))
        bad = good[:cut] + data.draw(st.binary(max_size=64)) + good[cut + data.draw(st.integers(0, 64)):]
    else:   # rewrite the JSON header with hostile values
        n = int.from_bytes(good[9:13], "big")
        head = good[13:13 + n]
        bad_head = data.draw(st.sampled_from([
            head.replace(b'"count":3', b'"count":99999999'), head.replace(b'"count":3', b'"count":-1'),
            head.replace(b"2048", b"32768"), head.replace(b'"shift":', b'"shift":9'), b"{", b"[]", b"\xff\xfe",
            head.replace(b'"input_shape":[1,2,2]', b'"input_shape":[65536,65536]'),
        ]))
        bad = good[:9] + len(bad_head).to_bytes(4, "big") + bad_head + good[13 + n:]
    try:
        _load(kind, bad, blobs)
    except HEError:
        pass

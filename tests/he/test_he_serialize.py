"""Keys, ciphertexts and encrypted models round-trip through bytes; bad blobs give clear errors."""

import json

import numpy as np
import pytest
from safetensors.numpy import save as st_save

from coopml.errors import CoopmlError
from coopml.he import (
    MODEL_PARAMS,
    HEFormatError,
    decrypt,
    decrypt_outputs,
    encrypt,
    encrypt_model,
    encrypted_infer,
    from_bytes,
    keygen,
    to_bytes,
)
from coopml.models import build_model


@pytest.fixture(scope="module")
def setup():
    sk, pk = keygen(MODEL_PARAMS, 1, rng=5)
    enc = encrypt_model(pk, build_model("table4", seed=1), p=1 << 5, q=1000)
    return sk, pk, enc


def test_roundtrips(setup):
    sk, pk, enc = setup
    pk2 = from_bytes(to_bytes(pk), "public-key")
    sk2 = from_bytes(to_bytes(sk), "secret-key")
    assert pk2.key_id == pk.key_id and np.array_equal(pk2.m_words, pk.m_words)
    ct = encrypt(pk2, np.array([[12], [-34]]))
    ct2 = from_bytes(to_bytes(ct), "ciphertext")
    assert ct2.noise_bound == ct.noise_bound and ct2.value_bound == ct.value_bound
    assert decrypt(sk2, ct2).ravel().tolist() == [12, -34]
    enc2 = from_bytes(to_bytes(enc), "encrypted-model")
    assert (enc2.arch, enc2.strategy, enc2.p, enc2.q) == ("table4", "element-wise", 32, 1000)
    x = np.random.default_rng(0).integers(0, 1001, size=(2, 1, 28, 28))
    assert np.array_equal(decrypt_outputs(sk, enc2, encrypted_infer(enc2, x)),
                          decrypt_outputs(sk, enc, encrypted_infer(enc, x)))
    assert b"pickle" not in to_bytes(enc)


def _meta(blob: bytes) -> tuple[dict, dict]:
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + n])
    return header, json.loads(header["__metadata__"]["coopml-he"])


def _resave(blob: bytes, meta: dict, tensors: dict | None = None) -> bytes:
    from safetensors.numpy import load
    return st_save(tensors if tensors is not None else load(blob), metadata={"coopml-he": json.dumps(meta)})


def test_malformed_blobs(setup):
    _sk, pk, _enc = setup
    for bad in (b"", b"garbage!", b"\xff" * 8 + b"{}", st_save({"a": np.zeros(2)})):
        with pytest.raises(HEFormatError):
            from_bytes(bad)
    with pytest.raises(HEFormatError, match="expected a secret-key"):
        from_bytes(to_bytes(pk), "secret-key")
    blob = to_bytes(pk)
    _, meta = _meta(blob)
    with pytest.raises(HEFormatError, match="format"):
        from_bytes(_resave(blob, {**meta, "format": "other/9"}))
    with pytest.raises(HEFormatError, match="params|Params"):
        from_bytes(_resave(blob, {**meta, "params": {**meta["params"], "w": 1}}))
    with pytest.raises(HEFormatError, match="key id"):
        from_bytes(_resave(blob, {**meta, "key_id": "0" * 16}))
    with pytest.raises(HEFormatError, match="shape"):
        from_bytes(_resave(blob, meta, {"m": np.zeros((2, 3, 2), np.uint64)}))
    with pytest.raises(HEFormatError, match="dtype"):
        from_bytes(_resave(blob, meta, {"m": np.zeros((2, 3, 2), np.int32)}))


def test_mismatched_encrypted_model(setup):
    _sk, _pk, enc = setup
    blob = to_bytes(enc)
    _, meta = _meta(blob)
    from safetensors.numpy import load
    tensors = load(blob)
    with pytest.raises(HEFormatError, match="architecture"):
        from_bytes(_resave(blob, meta, {**tensors, "tail.1.weight": np.zeros((16, 16, 5, 5), np.int64)}))
    with pytest.raises(HEFormatError, match="scales"):
        from_bytes(_resave(blob, {**meta, "p": 128}))
    with pytest.raises(HEFormatError, match="matrix-pair-wise"):
        from_bytes(_resave(blob, {**meta, "strategy": "matrix-pair-wise"}))
    with pytest.raises(HEFormatError, match="no weights"):
        from_bytes(_resave(blob, meta, {k: v for k, v in tensors.items() if k != "tail.4.bias"}))
    with pytest.raises(CoopmlError, match="unknown strategy"):
        from_bytes(_resave(blob, {**meta, "strategy": "cell-wise"}))


def test_matrix_pair_wise_model_roundtrip():
    sk, pk = keygen(MODEL_PARAMS, 32, rng=8)
    enc = encrypt_model(pk, build_model("table4", seed=2), p=1 << 7, q=1000, strategy="matrix-pair-wise")
    enc2 = from_bytes(to_bytes(enc), "encrypted-model")
    assert enc2.strategy == "matrix-pair-wise" and enc2.first_weight.n == 32
    x = np.random.default_rng(1).integers(0, 1001, size=(2, 1, 28, 28))
    assert np.array_equal(decrypt_outputs(sk, enc2, encrypted_infer(enc2, x)),
                          decrypt_outputs(sk, enc, encrypted_infer(enc, x)))


@pytest.mark.parametrize("arch", ["fading-cnn", "fading-fc"])
def test_case_study_4_models_roundtrip(arch):
    """Rectangular (1-D) kernels and pools, ReLU and the Taylor-sigmoid polynomial survive the wire;
    a tampered polynomial is refused (it must follow from p and q)."""
    from coopml.sim.case_study4 import CS4_PARAMS
    model = build_model(arch, seed=2)
    out_ch = 16 if arch == "fading-cnn" else 32
    x = np.random.default_rng(1).integers(0, 256, size=(4, 1, 1, 64))
    for strategy, n in (("element-wise", 1), ("matrix-pair-wise", out_ch)):
        sk, pk = keygen(CS4_PARAMS, n, rng=3)
        enc = encrypt_model(pk, model, 1 << 7, 255, strategy, input_shape=(1, 1, 64))
        blob = to_bytes(enc)
        enc2 = from_bytes(blob, "encrypted-model")
        assert np.array_equal(decrypt_outputs(sk, enc2, encrypted_infer(enc2, x)),
                              decrypt_outputs(sk, enc, encrypted_infer(enc, x)))
    _header, meta = _meta(blob)
    polys = [i for i, layer in enumerate(meta["tail"]) if layer["poly"]]
    if arch == "fading-fc":
        assert len(polys) == 1
        meta["tail"][polys[0]]["poly"][1] = str(int(meta["tail"][polys[0]]["poly"][1]) + 1)
        with pytest.raises(HEFormatError, match="do not match"):
            from_bytes(_resave(blob, meta), "encrypted-model")
    else:
        assert not polys and meta["first_layer"]["padding"] == [0, 4]

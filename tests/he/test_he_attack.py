"""docs/security.md's claims, demonstrated: the paper's 1-D T and deterministic encryption leak."""

import numpy as np
import pytest
import torch

from coopml.errors import CoopmlError
from coopml.he import (
    MODEL_PARAMS,
    Params,
    decrypt,
    decrypt_model,
    dictionary_attack,
    encrypt,
    encrypt_model,
    keygen,
    recover_secret_1d,
)
from coopml.models import build_model


@pytest.mark.parametrize("params", [MODEL_PARAMS, Params(w=1 << 20, k=1, noise_bound=4, plain_bound=1000)],
                         ids=["model-params-Q2^128", "Q2^64-B4"])
def test_public_key_alone_reveals_T_and_the_model(params):
    """k = 1 (the paper's S' = [I, T] with a vector T): search over the noise recovers T from M."""
    sk, pk = keygen(params, 1, rng=2024)
    model = build_model("table4", seed=4)
    enc = encrypt_model(pk, model, p=1 << 5) if params is MODEL_PARAMS else None
    stolen = recover_secret_1d(pk)                       # uses nothing but the public key
    assert np.array_equal(stolen.t, sk.t)
    if enc is not None:
        w = decrypt(stolen, enc.first_weight)[..., 0]
        assert np.array_equal(w, torch.round(model.body[0].weight.detach() * 32).long().numpy())
        assert torch.equal(decrypt_model(stolen, enc, build_model("table4")).body[0].weight,
                           decrypt_model(sk, enc, build_model("table4")).body[0].weight)
    else:
        x = np.array([[17], [-400], [999]])
        assert np.array_equal(decrypt(stolen, encrypt(pk, x)), x)


def test_deterministic_encryption_falls_to_a_dictionary():
    """Even a large k does not help: scaled weights are small, so encrypt every candidate and match."""
    params = Params(w=1 << 40, k=64, plain_bound=1 << 16)
    sk, pk = keygen(params, 1, rng=1)
    model = build_model("table4", seed=5)
    enc = encrypt_model(pk, model, p=1 << 5)
    weights = dictionary_attack(pk, enc.first_weight, np.arange(-64, 65))
    assert np.array_equal(weights, decrypt(sk, enc.first_weight)[..., 0])
    randomised = Params(w=1 << 40, k=64, plain_bound=1 << 16, encrypt_noise=1 << 20)
    _, pk2 = keygen(randomised, 1, rng=1)
    with pytest.raises(CoopmlError, match="matched no candidate"):
        dictionary_attack(pk2, encrypt(pk2, np.array([[3]]), rng=0), np.arange(-64, 65))


def test_attack_needs_k_equal_one():
    _, pk = keygen(Params(w=1 << 20, k=2, plain_bound=100), 1, rng=0)
    with pytest.raises(CoopmlError, match="k = 1"):
        recover_secret_1d(pk)

"""The roles' evaluation door: limits a task sets on CKKS parameters, and IVHE (ivhe-insecure mode)
round trips and refusals. The lifecycles in test_roles_lifecycle.py run these end to end."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from coopml.he import UnsupportedLayerError
from coopml.models import build_model
from coopml.roles import evaluation
from coopml.roles.evaluation import EvaluationError

SHAPE = (1, 28, 28)


def test_a_model_needing_a_larger_ring_than_the_task_accepts_is_refused_by_name():
    model = build_model("table4-square")
    need = evaluation.offer_params(model, SHAPE)["poly_modulus_degree"]
    evaluation.check_evaluable(model, SHAPE, need)                     # exactly enough: fine
    with pytest.raises(EvaluationError, match=f"ring degree {need}"):
        evaluation.check_evaluable(model, SHAPE, need // 2)


def test_a_verifier_refuses_an_offer_above_the_tasks_ring_limit():
    model = build_model("table4")
    params = evaluation.offer_params(model, SHAPE)
    qs = evaluation.build_queries(np.zeros((10, *SHAPE), np.float32), np.zeros(10, np.int64), None, 0,
                                  np.random.default_rng(0))
    with pytest.raises(EvaluationError, match="exceeds"):
        evaluation.encrypt_queries(qs, params, params["poly_modulus_degree"] // 2)


def test_a_contributor_evaluates_only_under_the_parameters_it_offered():
    """A larger ring the engine would also run holds N images per ciphertext, whatever count the
    request declares (docs/threat-model.md, P8): refused; the offered ring is answered."""
    model = build_model("table4", seed=0)
    offered = evaluation.offer_params(model, SHAPE)
    qs = evaluation.build_queries(np.random.default_rng(1).random((10, *SHAPE)).astype(np.float32),
                                  np.zeros(10, np.int64), None, 0, np.random.default_rng(0))
    larger = {**offered, "poly_modulus_degree": 4 * offered["poly_modulus_degree"]}
    for params, ok in ((offered, True), (larger, False)):
        enc = evaluation.encrypt_queries(qs, params)
        if ok:
            _, n = evaluation.evaluate_encrypted(model, SHAPE, enc.public_context, enc.batch, 100, offered=offered)
            assert n == 10
        else:
            with pytest.raises(EvaluationError, match="other than offered"):
                evaluation.evaluate_encrypted(model, SHAPE, enc.public_context, enc.batch, 100, offered=offered)


@given(st.lists(st.floats(-1e4, 1e4, allow_nan=False), min_size=1, max_size=40))
def test_shared_scores_are_coarse_and_still_pass_the_audit(values):
    """What a verifier shares of its decryptions (its audit report) sits on a grid of 2^-16 of the
    largest magnitude, never finer than 2^-18 (the output noise is below 2^-20): no decryption-noise
    bits leave it, and the buyer's audit still matches wherever CKKS precision allows one (scores
    above ~1e-4)."""
    x = np.asarray(values).reshape(-1, 1)
    c = evaluation.coarsen(x)
    top = np.abs(x).max()
    step = max(2.0 ** (np.ceil(np.log2(top)) - evaluation.SHARED_SCORE_BITS) if top > 0 else 0.0,
               evaluation.SHARED_SCORE_FLOOR)
    assert step >= 2.0 ** -18
    assert np.all(np.abs(c - x) <= step / 2) and np.all(np.mod(c / step, 1) == 0)
    if top >= 1e-4:
        assert evaluation.reproduces(c, x)


def test_ckks_refuses_a_relu_network_naming_the_layer():
    with pytest.raises(UnsupportedLayerError, match="ReLU"):
        evaluation.check_evaluable(build_model("table1-c1"), SHAPE)


@pytest.fixture(scope="module")
def ivhe_keys():
    return evaluation.ivhe_keygen(seed=3)


def test_ivhe_scores_match_the_float_model_within_the_audit_tolerance(ivhe_keys):
    secret, public = ivhe_keys
    torch_model = build_model("table4", seed=1).eval()
    x = np.random.default_rng(0).random((50, *SHAPE)).astype(np.float32)
    blob = evaluation.ivhe_encrypt_model(torch_model, SHAPE, public, 128, 1000)
    ct = evaluation.ivhe_evaluate(blob, public, SHAPE, x)
    scores = evaluation.ivhe_scores(blob, SHAPE, evaluation.ivhe_decrypt(secret, ct, 100), 50, 10)
    assert evaluation.reproduces(evaluation.plaintext_scores(torch_model, x), scores)


def test_ivhe_refusals_are_clear_errors(ivhe_keys):
    secret, public = ivhe_keys
    _, other_public = evaluation.ivhe_keygen(seed=4)
    model = build_model("table4", seed=1).eval()
    blob = evaluation.ivhe_encrypt_model(model, SHAPE, public, 128, 1000)
    x = np.zeros((5, *SHAPE), np.float32)
    with pytest.raises(EvaluationError, match="not encrypted under the task's public key"):
        evaluation.ivhe_evaluate(blob, other_public, SHAPE, x)
    with pytest.raises(EvaluationError, match="inputs"):
        evaluation.ivhe_evaluate(blob, public, (1, 14, 14), x)
    with pytest.raises(EvaluationError, match="IVHE"):                 # BatchNorm has no integer form
        evaluation.ivhe_encrypt_model(build_model("fc-sigmoid"), SHAPE, public, 128, 1000)
    ct = evaluation.ivhe_evaluate(blob, public, SHAPE, x)
    with pytest.raises(EvaluationError, match="larger than"):          # the oracle bounds what it decrypts
        evaluation.ivhe_decrypt(secret, ct, 4)
    with pytest.raises(EvaluationError):
        evaluation.ivhe_decrypt(secret, b"garbage" * 10, 100)
    with pytest.raises(EvaluationError, match="rows"):
        evaluation.ivhe_scores(blob, SHAPE, evaluation.ivhe_decrypt(secret, ct, 100), 6, 10)
    with pytest.raises(EvaluationError):
        evaluation.ivhe_scores(blob, SHAPE, b"\x93NUMPY garbage", 5, 10)

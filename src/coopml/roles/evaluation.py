"""Confidential evaluation between a verifier and a contributor (CKKS mode), as the roles use it.

The verifier builds its query set once per task: its own labelled images with the task's public
audit images mixed in at secret positions, encrypted under its own CKKS key (the secret key never
leaves its node). Every drawn contributor evaluates its committed model on the same ciphertexts
(re-using them across models is safe: CKKS ciphertexts are IND-CPA) and returns encrypted class
scores; the verifier decrypts, scores its own images and keeps the audit images' outputs as
evidence that the delivered model must reproduce.

This module is the roles' one door into coopml.he's CKKS engine.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from coopml.errors import CoopmlError, HEError


class EvaluationError(CoopmlError):
    """A query set or an evaluation result is malformed or inconsistent."""


@dataclass
class QuerySet:
    """The verifier's secret bookkeeping: which query position holds which image."""

    x: np.ndarray            # (N, *input_shape) float32, preprocessed, in query order
    own: np.ndarray          # positions of the verifier's own images
    own_labels: np.ndarray   # their labels (class ids)
    audit: np.ndarray        # positions of audit images
    audit_index: np.ndarray  # which audit image sits at each of those positions

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, x=self.x, own=self.own, own_labels=self.own_labels, audit=self.audit,
                 audit_index=self.audit_index)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> QuerySet:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return cls(z["x"], z["own"], z["own_labels"], z["audit"], z["audit_index"])


def build_queries(own_x: np.ndarray, own_y: np.ndarray, audit_x: np.ndarray | None, n_audit: int,
                  rng: np.random.Generator) -> QuerySet:
    """Mix `n_audit` audit images among the own images at random positions."""
    own_x = np.asarray(own_x, dtype=np.float32)
    k = 0 if audit_x is None else min(n_audit, len(audit_x))
    audit_index = rng.choice(len(audit_x), size=k, replace=False) if audit_x is not None and k \
        else np.zeros(0, dtype=np.int64)
    n = len(own_x) + k
    order = rng.permutation(n)
    own_pos, audit_pos = order[:len(own_x)], order[len(own_x):]
    x = np.empty((n, *own_x.shape[1:]), dtype=np.float32)
    x[own_pos] = own_x
    if k:
        x[audit_pos] = np.asarray(audit_x, dtype=np.float32)[audit_index]
    return QuerySet(x, own_pos, np.asarray(own_y, dtype=np.int64), audit_pos, audit_index.astype(np.int64))


# ---------------------------------------------------------------------------- CKKS

MAX_POLY_DEGREE = 16384     # a contributor cannot make a verifier encrypt under absurd parameters


class ScoresOnly(torch.nn.Module):
    """The contributor's model with its class scores as the only output: the verifier needs (and so
    learns) nothing but the scores — not the penultimate features (also ~40x less to send back)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        model = getattr(model, "module", model)          # a user model wrapped with its feature hook
        body = [model.body, model.head] if hasattr(model, "body") and hasattr(model, "head") else [model]
        self.body = torch.nn.Sequential(*body)
        self.head = torch.nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def compile_scores(model: torch.nn.Module, input_shape: tuple[int, ...], exact: bool = True) -> Any:
    """Contributor: its model (class scores only) compiled for CKKS — compile once per model and
    pass the plan to `offer_params` and `evaluate_encrypted` (milliseconds for an affine model such
    as Table IV, folded from its 10 scores; seconds and ~1 GB for one whose first activation sees
    full-size feature maps, folded from its 785-image unit basis). Raises UnsupportedLayerError
    naming the first layer CKKS cannot evaluate. `exact=False`: a float32 fold, for checking and
    sizing only."""
    from coopml.he import ckks
    return ckks.compile_model(ScoresOnly(model), input_shape, exact=exact)


def offer_params(model: torch.nn.Module, input_shape: tuple[int, ...], plan: Any = None) -> dict[str, Any]:
    """Contributor: the smallest 128-bit-secure CKKS parameters that evaluate its model (public).
    Raises UnsupportedLayerError naming the first layer CKKS cannot evaluate."""
    from coopml.he import ckks
    params = ckks.params_for(plan if plan is not None else compile_scores(model, input_shape))
    return params.model_dump(mode="json")


def check_evaluable(model: torch.nn.Module, input_shape: tuple[int, ...], max_degree: int = MAX_POLY_DEGREE) -> None:
    """Raise (naming the layer) if CKKS cannot evaluate this model, or only with a ring larger than the
    task's verifiers accept; run before any payment. A float32 fold (`compile_scores(exact=False)`):
    the untrained model's parameters only size the check, the offer compiles the trained one exactly."""
    degree = int(offer_params(model, input_shape, compile_scores(model, input_shape, exact=False))["poly_modulus_degree"])
    if degree > max_degree:
        raise EvaluationError(f"the model needs CKKS ring degree {degree}; this task's verifiers accept at most "
                              f"{max_degree} (verification.poly_modulus_degree)")


@dataclass
class EncryptedQueries:
    secret: bytes          # the verifier's serialized CKKS key WITH its secret (stays home, 0600)
    public_context: bytes  # what the contributor gets: parameters and public key only
    batch: bytes           # the encrypted images


def encrypt_queries(queries: QuerySet, params: dict[str, Any], max_degree: int = MAX_POLY_DEGREE) -> EncryptedQueries:
    """Verifier: a fresh key for this model (queries under different keys cannot be linked) and the
    query images encrypted under it, with the parameters the contributor offered — checked first."""
    from coopml.he import ckks
    p = ckks.CkksParams.create(**params)
    limit = min(max_degree, MAX_POLY_DEGREE)
    if p.poly_modulus_degree > limit:
        raise EvaluationError(f"offered ring degree {p.poly_modulus_degree} exceeds {limit}")
    if len(queries.x) > p.capacity:
        raise EvaluationError(f"{len(queries.x)} queries do not fit one ciphertext group of {p.capacity}")
    key = ckks.QueryKey.generate(p)
    return EncryptedQueries(key.to_bytes(), key.public_context(), key.encrypt_images(queries.x).to_bytes())


def decrypt_scores(secret: bytes, outputs: bytes, n_queries: int, num_classes: int) -> np.ndarray:
    """The contributor's class scores (N, classes), decrypted with the verifier's own key."""
    from coopml.he import ckks
    key = ckks.QueryKey.from_bytes(secret)
    out = ckks.EncryptedOutputs.from_bytes(outputs, key.public_context())
    _, logits = key.decrypt_outputs(out)
    logits = np.asarray(logits, dtype=np.float64)
    if logits.shape != (n_queries, num_classes) or not np.isfinite(logits).all():
        raise EvaluationError(f"decrypted outputs have shape {logits.shape}, expected {(n_queries, num_classes)}")
    return logits


def evaluate_encrypted(model: torch.nn.Module, input_shape: tuple[int, ...], public_context: bytes,
                       batch: bytes, max_queries: int, plan: Any = None,
                       offered: dict[str, Any] | None = None) -> tuple[bytes, int]:
    """Contributor: evaluate its own model on a verifier's encrypted images; (outputs, n). `plan`:
    the model's `compile_scores` (compiled here if not given). `offered`: the parameters of our
    EVAL_OFFER, the only ones we evaluate under -- a larger ring the engine would also run holds more
    images per ciphertext (N of them, whatever count the request declares) and costs us more CPU."""
    from coopml.he import ckks
    enc = ckks.EncryptedBatch.from_bytes(batch, public_context)
    if offered is not None and enc.params != ckks.CkksParams.create(**offered):
        raise EvaluationError(f"request uses CKKS parameters other than offered ({enc.params.describe()}; "
                              f"offered {ckks.CkksParams.create(**offered).describe()})")
    if enc.count > max_queries:
        raise EvaluationError(f"request holds {enc.count} images, more than the task's max_queries={max_queries}")
    if plan is None:
        plan = compile_scores(model, input_shape)
    return ckks.evaluate(plan, enc).to_bytes(), enc.count


# ---------------------------------------------------------------------------- plaintext

def plaintext_scores(model: torch.nn.Module, x: np.ndarray, batch: int = 500) -> np.ndarray:
    model.eval()
    outs = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            outs.append(model(torch.as_tensor(x[i:i + batch], dtype=torch.float32)).double().numpy())
    return np.concatenate(outs) if outs else np.zeros((0, 0))


SHARED_SCORE_BITS = 16    # decrypted scores leave the verifier rounded to 2^-16 of their largest magnitude
SHARED_SCORE_FLOOR = 2.0 ** -18   # and never to a grid finer than this (value units)


def coarsen(scores: np.ndarray, bits: int = SHARED_SCORE_BITS) -> np.ndarray:
    """Decrypted CKKS scores as a verifier may share them (its audit report): rounded to a grid of
    2^-bits of the largest magnitude, at least SHARED_SCORE_FLOOR. A CKKS decryption at full
    precision carries the decryption noise, and with enough such values whoever holds the
    ciphertexts (the contributor, colluding with the buyer who reads the report) can solve for the
    verifier's secret key and read its private queries (Li and Micciancio, EUROCRYPT 2021). The
    output noise sits below 2^-20 in value units (the engine's rounding target), under the grid;
    the audit compares within 2-5 % of the largest score (`reproduces`), far above it."""
    scores = np.asarray(scores, dtype=np.float64)
    top = float(np.abs(scores).max(initial=0.0))
    if not np.isfinite(top):
        return scores.copy()
    step = max(2.0 ** (math.ceil(math.log2(top)) - bits), SHARED_SCORE_FLOOR) if top > 0 else SHARED_SCORE_FLOOR
    return np.round(scores / step) * step


def reproduces(expected: np.ndarray, actual: np.ndarray, atol: float = 0.05, rtol: float = 0.02) -> bool:
    """Do a delivered model's scores reproduce what a verifier decrypted (CKKS is approximate)?"""
    expected, actual = np.asarray(expected, dtype=np.float64), np.asarray(actual, dtype=np.float64)
    if expected.shape != actual.shape:
        return False
    scale = np.abs(expected).max(initial=1.0)
    return bool(np.all(np.abs(expected - actual) <= atol * scale + rtol * np.abs(expected)))


# ---------------------------------------------------------------------------- IVHE (the paper; INSECURE)
#
# ivhe-insecure mode reproduces the paper's verification flow: the initiator holds the IVHE secret
# key, the contributor encrypts its first layer under the public key, the verifier evaluates the
# encrypted model on its plaintext images and the initiator decrypts the outputs. It is offered to
# reproduce the paper, not to protect anybody: the initiator decrypts whatever ciphertext a drawn
# verifier sends (a verifier can send the model's encrypted weights), and IVHE at these parameters
# is obfuscation-grade (docs/security.md, docs/threat-model.md).

MAX_IVHE_OUTPUTS = 1 << 24     # words the initiator decrypts per request (N x outputs)


def ivhe_keygen(seed: int | None = None) -> tuple[bytes, bytes]:
    """Initiator: (secret key blob, public key blob) with the parameters of the paper's Case Study II."""
    from coopml.he import MODEL_PARAMS, keygen, to_bytes
    sk, pk = keygen(MODEL_PARAMS, 1, rng=seed)
    return to_bytes(sk), to_bytes(pk)


def _ivhe_public_key(blob: bytes) -> Any:
    from coopml.he import HEFormatError, PublicKey, from_bytes
    try:
        pk = from_bytes(blob, "public-key", where="task IVHE public key")
    except HEFormatError as exc:
        raise EvaluationError(str(exc)) from None
    assert isinstance(pk, PublicKey)
    if pk.n != 1:
        raise EvaluationError(f"the task's IVHE public key has n={pk.n}; element-wise encryption needs n=1")
    return pk


def ivhe_encrypt_model(model: torch.nn.Module, input_shape: tuple[int, ...], public_key: bytes, p: int,
                       q: int) -> bytes:
    """Contributor: its model (class scores only) with the first layer encrypted under the task's key.
    Raises EvaluationError naming what IVHE cannot evaluate (checked before paying)."""
    from coopml.he import encrypt_model, to_bytes
    try:
        enc = encrypt_model(_ivhe_public_key(public_key), ScoresOnly(model), p, q, "element-wise",
                            input_shape=tuple(input_shape))
    except HEError as exc:
        raise EvaluationError(f"the model cannot be evaluated under IVHE: {exc}") from None
    return to_bytes(enc)


def _ivhe_model(blob: bytes, input_shape: tuple[int, ...], key_id: str | None = None) -> Any:
    """An encrypted model this mode can evaluate: well-formed, element-wise, the task's input shape
    and (if `key_id`) encrypted under the task's key; EvaluationError otherwise."""
    from coopml.he import EncryptedModel, HEFormatError, check_model, from_bytes
    try:
        enc = from_bytes(blob, "encrypted-model", where="IVHE model")
        assert isinstance(enc, EncryptedModel)
        check_model(enc, "IVHE model")
    except HEFormatError as exc:
        raise EvaluationError(str(exc)) from None
    if enc.strategy != "element-wise":
        raise EvaluationError(f"IVHE model uses strategy {enc.strategy!r}; this mode takes element-wise")
    if tuple(enc.input_shape) != tuple(input_shape):
        raise EvaluationError(f"IVHE model takes inputs {enc.input_shape}, the task's are {tuple(input_shape)}")
    if key_id is not None and enc.key_id != key_id:
        raise EvaluationError("IVHE model is not encrypted under the task's public key")
    return enc


def ivhe_evaluate(model_blob: bytes, public_key: bytes, input_shape: tuple[int, ...], x: np.ndarray) -> bytes:
    """Verifier: the encrypted model on its own (plaintext) query images; the output ciphertext."""
    from coopml.he import PairOutputs, encrypted_infer, scale_inputs, to_bytes
    enc = _ivhe_model(model_blob, input_shape, _ivhe_public_key(public_key).key_id)
    try:
        out = encrypted_infer(enc, scale_inputs(torch.as_tensor(x), enc.q))
    except HEError as exc:
        raise EvaluationError(f"IVHE evaluation failed: {exc}") from None
    if isinstance(out, PairOutputs):      # pragma: no cover - element-wise is checked above
        raise EvaluationError("matrix-pair-wise outputs are not part of this mode")
    return to_bytes(out)


def ivhe_decrypt(secret_key: bytes, ciphertext: bytes, max_rows: int) -> bytes:
    """Initiator: THE DECRYPTION ORACLE of the paper's design — decrypts any well-formed ciphertext
    under its key of at most `max_rows` rows and MAX_IVHE_OUTPUTS words (it cannot tell a ciphertext
    of outputs from one of weights). Returns the words as an int64 .npy."""
    from coopml.he import Ciphertext, HEFormatError, SecretKey, decrypt, from_bytes
    sk = from_bytes(secret_key, "secret-key")
    assert isinstance(sk, SecretKey)
    try:
        ct = from_bytes(ciphertext, "ciphertext", where="decryption request")
    except HEFormatError as exc:
        raise EvaluationError(str(exc)) from None
    assert isinstance(ct, Ciphertext)
    if not ct.shape or ct.shape[0] > max_rows or int(np.prod(ct.shape)) > MAX_IVHE_OUTPUTS:
        raise EvaluationError(f"ciphertext of shape {ct.shape} is larger than this task's outputs")
    try:
        plain = np.asarray(decrypt(sk, ct))
    except HEError as exc:
        raise EvaluationError(f"cannot decrypt: {exc}") from None
    if plain.dtype != np.int64:
        raise EvaluationError("decrypted words exceed int64")
    buf = io.BytesIO()
    np.save(buf, plain, allow_pickle=False)
    return buf.getvalue()


def ivhe_scores(model_blob: bytes, input_shape: tuple[int, ...], plain: bytes, n_queries: int,
                num_classes: int) -> np.ndarray:
    """Verifier: class scores (N, classes) from the initiator's decrypted words (finishing a nonlinear
    network on plaintext integers, as the paper's verifier does)."""
    from coopml.he import finish_outputs
    enc = _ivhe_model(model_blob, input_shape)
    try:
        words = np.load(io.BytesIO(plain), allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise EvaluationError(f"decrypted outputs are not readable: {exc}") from None
    if not isinstance(words, np.ndarray) or words.dtype != np.int64 or words.ndim < 2 or len(words) != n_queries:
        shape = getattr(words, "shape", None)
        raise EvaluationError(f"decrypted outputs have shape {shape}, expected an int64 array of {n_queries} rows")
    try:
        ints = finish_outputs(enc, words)
    except (HEError, RuntimeError, ValueError) as exc:
        raise EvaluationError(f"decrypted outputs do not fit the model: {exc}") from None
    logits = np.asarray(ints, dtype=np.float64) / float(enc.output_scale)
    if logits.shape != (n_queries, num_classes) or not np.isfinite(logits).all():
        raise EvaluationError(f"decrypted outputs have shape {logits.shape}, expected {(n_queries, num_classes)}")
    return logits

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
from dataclasses import dataclass

import numpy as np
import torch

from coopml.errors import CoopmlError


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
    audit_index = rng.choice(len(audit_x), size=k, replace=False) if k else np.zeros(0, dtype=np.int64)
    n = len(own_x) + k
    order = rng.permutation(n)
    own_pos, audit_pos = order[:len(own_x)], order[len(own_x):]
    x = np.empty((n, *own_x.shape[1:]), dtype=np.float32)
    x[own_pos] = own_x
    if k:
        x[audit_pos] = np.asarray(audit_x, dtype=np.float32)[audit_index]
    return QuerySet(x, own_pos, np.asarray(own_y, dtype=np.int64), audit_pos, audit_index.astype(np.int64))


# ---------------------------------------------------------------------------- CKKS (verifier side)

@dataclass
class EncryptedQueries:
    secret: bytes          # the verifier's serialized CKKS context WITH its secret key (stays home, 0600)
    public_context: bytes  # what the contributor gets: no secret key
    batch: bytes           # the encrypted images


def encrypt_queries(queries: QuerySet, poly_modulus_degree: int | None = None) -> EncryptedQueries:
    from coopml.he import ckks
    key = ckks.QueryKey.generate(ckks.default_params(poly_modulus_degree))
    batch = key.encrypt_images(queries.x)
    return EncryptedQueries(key.to_bytes(), key.public_context(), batch.to_bytes())


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


# ---------------------------------------------------------------------------- CKKS (contributor side)

def check_evaluable(model: torch.nn.Module, input_shape: tuple[int, ...]) -> None:
    """Raise (naming the layer) if CKKS cannot evaluate this model; cheap, run before any payment."""
    from coopml.he import ckks
    ckks.compile_model(model, input_shape)


def evaluate_encrypted(model: torch.nn.Module, input_shape: tuple[int, ...], public_context: bytes,
                       batch: bytes, max_queries: int) -> tuple[bytes, int]:
    """Evaluate the contributor's own model on a verifier's encrypted images; (outputs, n)."""
    from coopml.he import ckks
    plan = ckks.compile_model(model, input_shape)
    enc = ckks.EncryptedBatch.from_bytes(batch, public_context)
    if enc.n > max_queries:
        raise EvaluationError(f"request holds {enc.n} images, more than the task's max_queries={max_queries}")
    return ckks.evaluate(plan, enc).to_bytes(), enc.n


# ---------------------------------------------------------------------------- plaintext

def plaintext_scores(model: torch.nn.Module, x: np.ndarray, batch: int = 500) -> np.ndarray:
    model.eval()
    outs = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            outs.append(model(torch.as_tensor(x[i:i + batch], dtype=torch.float32)).double().numpy())
    return np.concatenate(outs) if outs else np.zeros((0, 0))


def reproduces(expected: np.ndarray, actual: np.ndarray, atol: float = 0.05, rtol: float = 0.02) -> bool:
    """Do a delivered model's scores reproduce what a verifier decrypted (CKKS is approximate)?"""
    expected, actual = np.asarray(expected, dtype=np.float64), np.asarray(actual, dtype=np.float64)
    if expected.shape != actual.shape:
        return False
    scale = np.abs(expected).max(initial=1.0)
    return bool(np.all(np.abs(expected - actual) <= atol * scale + rtol * np.abs(expected)))

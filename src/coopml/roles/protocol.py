"""What the agents exchange, and the verifier's blinded-decryption protocol.

The paper has verifiers judge an encrypted model "in cipherspace with the public key", but an
accuracy cannot be read from ciphertexts: somebody must decrypt. Here the initiator (the only
holder of the secret key) acts as a *blinded decryption oracle*:

1. the verifier runs the encrypted model on its private verification images (plaintext inputs,
   encrypted first layer) and gets encrypted logits;
2. per image it keeps only the model's declared labels, permutes them at random, multiplies by a
   random positive integer and adds a random offset, homomorphically, and mixes in canary
   ciphertexts whose answers it knows;
3. the initiator decrypts and returns only the arg-max position of each vector;
4. the verifier un-permutes, checks the canaries, and computes the model's accuracy.

The initiator learns, per image, the order pattern of a shuffled, affinely blinded logit
vector; never which class is which, never the weights, and it cannot tell which image a vector
belongs to (it does not see the verifier's images). A lying oracle fails the canaries.
"""

from __future__ import annotations

import hashlib
import io
import struct
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, Field, ValidationError

from coopml.errors import CoopmlError
from coopml.he import Ciphertext, EncryptedModel, PublicKey, SecretKey, decrypt, encrypt
from coopml.he import ring
from coopml.he.scheme import add_plain

PACKAGE_MAGIC = b"CMLP1"


class ProtocolError(CoopmlError):
    """A payload received from another node is malformed or inconsistent."""


class Criterion(BaseModel):
    """The task's acceptance rule, published (as JSON) in the TaskSpec's criterion field."""

    min_accuracy: float = Field(0.9, ge=0, le=1)        # on the model's declared labels
    min_labels: int = Field(1, ge=1, le=10)             # a model must cover this many classes
    max_tail_similarity: float = Field(0.98, ge=0, le=1)  # above this it is a copy of a released model

    @classmethod
    def parse(cls, text: str) -> "Criterion":
        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            raise ProtocolError(f"task criterion is not valid: {exc.errors()[0]['msg']}") from None


class ModelManifest(BaseModel):
    arch: str
    labels: list[int] = Field(min_length=1, max_length=10)
    he_sha256: str


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def pack_model(he_blob: bytes, arch: str, labels: list[int]) -> bytes:
    """Encrypted model + the labels it claims, as one blob; its sha256 is the on-chain model hash."""
    head = ModelManifest(arch=arch, labels=sorted(labels), he_sha256=sha256(he_blob).hex()).model_dump_json()
    return PACKAGE_MAGIC + struct.pack(">I", len(head)) + head.encode() + he_blob


def unpack_model(blob: bytes) -> tuple[ModelManifest, bytes]:
    if len(blob) < 9 or not blob.startswith(PACKAGE_MAGIC):
        raise ProtocolError("not a coopml model package")
    (n,) = struct.unpack(">I", blob[5:9])
    if 9 + n > len(blob):
        raise ProtocolError("model package header is truncated")
    try:
        manifest = ModelManifest.model_validate_json(blob[9:9 + n])
    except ValidationError as exc:
        raise ProtocolError(f"model package manifest is invalid: {exc.errors()[0]['msg']}") from None
    he_blob = blob[9 + n:]
    if sha256(he_blob).hex() != manifest.he_sha256:
        raise ProtocolError("model package body does not match its manifest hash")
    if any(not 0 <= c <= 9 for c in manifest.labels) or len(set(manifest.labels)) != len(manifest.labels):
        raise ProtocolError(f"model package declares bad labels {manifest.labels}")
    return manifest, he_blob


def pack_dataset(images: np.ndarray, labels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, images=images.astype(np.uint8), labels=labels.astype(np.int64))
    return buf.getvalue()


def unpack_dataset(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            images, labels = z["images"], z["labels"]
    except Exception as exc:  # noqa: BLE001 - any parse failure is a bad payload
        raise ProtocolError(f"verification data is not a valid npz: {exc}") from None
    if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.shape != (len(images),):
        raise ProtocolError(f"verification data has shapes {images.shape} / {labels.shape}")
    return images, labels


# --------------------------------------------------------------------------- blinded oracle

@dataclass
class BlindedQuery:
    """What the verifier keeps secret to interpret the oracle's answers."""

    perms: np.ndarray        # (N + C, L): position j of vector i holds declared label index perms[i, j]
    canary_answer: np.ndarray  # (N + C,) expected arg-max position, -1 for real images
    order: np.ndarray        # shuffle applied to rows before sending


def _scale_rows(ct_data: np.ndarray, rows: np.ndarray, cols: np.ndarray, factors: np.ndarray,
                words: int) -> np.ndarray:
    picked = ct_data[rows[:, None], cols]                              # (R, L, comps)
    return ring.reduce(picked * factors.astype(object)[:, None, None], words)


def blind_outputs(pk: PublicKey, outputs: Ciphertext, labels: list[int], rng: np.random.Generator,
                  canaries: int = 32, max_scale: int = 64) -> tuple[Ciphertext, BlindedQuery]:
    """Select declared labels, permute and scale each vector, add offsets and canaries (all homomorphic)."""
    if outputs.n != 1 or len(outputs.shape) != 2:
        raise ProtocolError("expected element-wise outputs: a (N, classes) batch of length-1 ciphertexts")
    n, _ = outputs.shape
    lab = np.asarray(labels)
    L = len(lab)
    params = outputs.params
    perms = np.stack([rng.permutation(L) for _ in range(n + canaries)]) if n + canaries else np.zeros((0, L), int)
    scales = rng.integers(1, max_scale + 1, size=n + canaries)
    offsets = rng.integers(-(1 << 20), (1 << 20) + 1, size=n + canaries)
    data = outputs.data.reshape(n, -1, params.k + 1)
    real = _scale_rows(data, np.arange(n), lab[perms[:n]], scales[:n], params.words)
    # Canaries: fresh encryptions of vectors with one clear winner, scaled like the real ones.
    winners = rng.integers(0, L, size=canaries)
    plain = rng.integers(-(1 << 16), 1 << 16, size=(canaries, L))
    plain[np.arange(canaries), winners] = (1 << 18)
    canary_ct = encrypt(pk, plain[..., None]).data.reshape(canaries, L, params.k + 1)
    canary_scaled = ring.reduce(canary_ct * scales[n:].astype(object)[:, None, None], params.words)
    allv = np.concatenate([real, canary_scaled]) if canaries else real
    noise = max(outputs.noise_bound, params.fresh_noise) * max_scale
    value = max(outputs.value_bound, 1 << 18) * max_scale
    order = rng.permutation(n + canaries)
    ct = Ciphertext(params, 1, ring.to_words(allv[order], params.words), noise, value, outputs.key_id)
    ct = add_plain(ct, offsets[order][:, None, None].repeat(L, axis=1))
    ct.check_budget()
    canary_answer = np.full(n + canaries, -1)
    # Position of the winner after the canary's own permutation is irrelevant: canaries are not permuted.
    canary_answer[n:] = winners
    canary_perms = np.tile(np.arange(L), (canaries, 1))
    perms = np.concatenate([perms[:n], canary_perms]) if canaries else perms
    return ct, BlindedQuery(perms, canary_answer, order)


def oracle_argmax(sk: SecretKey, ct: Ciphertext) -> list[int]:
    """Initiator side: decrypt and return only the arg-max position of each vector."""
    values = decrypt(sk, ct)[..., 0]
    return [int(i) for i in np.argmax(np.asarray(values, dtype=object).astype(float), axis=1)]


def read_answers(query: BlindedQuery, answers: list[int], labels: list[int]) -> tuple[np.ndarray, bool]:
    """Verifier side: predicted label per real image (in original order) and whether canaries passed."""
    ans = np.asarray(answers)
    if ans.shape != query.order.shape or (len(ans) and (ans.min() < 0 or ans.max() >= len(labels))):
        raise ProtocolError(f"oracle answered {ans.shape} positions, expected {query.order.shape} in 0..{len(labels) - 1}")
    unshuffled = np.empty_like(ans)
    unshuffled[query.order] = ans
    canary = query.canary_answer >= 0
    honest = bool(np.all(unshuffled[canary] == query.canary_answer[canary]))
    real = ~canary
    idx = query.perms[real, unshuffled[real]]
    return np.asarray(labels)[idx], honest


def tail_fingerprint(enc: EncryptedModel) -> np.ndarray:
    """Unit vector of the plaintext (integer) tail weights: near-identical for copied models."""
    parts = [layer.weight.astype(np.float64).ravel() for layer in enc.tail.layers if layer.weight is not None]
    v = np.concatenate(parts) if parts else np.zeros(1)
    norm = np.linalg.norm(v)
    return v / norm if norm else v


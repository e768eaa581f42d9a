"""The messages agents send each other, typed: one kind number, one header model, one set of parts.

An off-chain message is a blob in content-addressed storage; the contract only announces it
(`postMessage(task, model, to, kind, cid)`), which makes the sender authentic (the chain signs for
it), the time it was sent public, and the content immutable (the CID). Each blob is a container:

    b"CMLM" | version u8 | kind u8 | header length u32 | header JSON | n parts u8 | (len u64 | bytes)*

The header is a pydantic model chosen by `kind` (extra fields forbidden); the parts are opaque
binary sections (ciphertexts, contexts) whose count and sizes the header declares. Everything a
receiver reads goes through `decode`, which never raises anything but `MessageError` — a malformed,
truncated, oversized or mislabelled blob is a recorded decision, never a crash
(tests/roles/test_roles_messages.py fuzzes it).
"""

from __future__ import annotations

import enum
import json
import struct
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from coopml.errors import CoopmlError

MAGIC = b"CMLM"
VERSION = 1
MAX_HEADER = 64 * 1024
MAX_PARTS = 8


class MessageError(CoopmlError):
    """A message received from another node is malformed, oversized, or not what its kind says."""


class MessageKind(enum.IntEnum):
    """What a `Message` event announces; the number is the on-chain `kind`."""

    EVAL_OFFER = 9      # contributor -> drawn verifier: the public CKKS parameters its model needs
    EVAL_REQUEST = 10   # verifier -> contributor: encrypted verification queries (CKKS mode)
    EVAL_RESPONSE = 11  # contributor -> verifier: encrypted outputs of the committed model
    AUDIT_REPORT = 12   # verifier -> initiator (sealed): outputs on the task's public audit images
    MODEL_KEY = 20      # contributor -> drawn verifier (plaintext mode only): the envelope key, sealed
    IVHE_MODEL = 21     # contributor -> drawn verifier (ivhe-insecure only): the IVHE-encrypted model, sealed
    DECRYPT_REQUEST = 22   # verifier -> initiator (ivhe-insecure only): encrypted outputs to decrypt, sealed
    DECRYPT_RESPONSE = 23  # initiator -> verifier (ivhe-insecure only): the decrypted words, sealed


class _Header(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: ClassVar[MessageKind]
    parts: ClassVar[tuple[str, ...]] = ()
    max_part_bytes: ClassVar[int] = 0

    task_id: int = Field(ge=1)
    model_id: int = Field(ge=1)


class EvalOffer(_Header):
    """The contributor's offer to be evaluated: the smallest 128-bit-secure CKKS parameters that
    evaluate its model (public: ring degree, prime sizes, input scale). The verifier checks them
    and encrypts its queries under a fresh key of its own with exactly these parameters."""

    kind: ClassVar[MessageKind] = MessageKind.EVAL_OFFER

    scheme: Literal["ckks"] = "ckks"
    params: dict[str, Any] = Field(description="coopml.he.ckks.CkksParams, as JSON")


class EvalRequest(_Header):
    """A drawn verifier's encrypted queries: `n_queries` images (its own verification images with the
    task's public audit images mixed in at secret positions) encrypted under the verifier's own CKKS
    key. The public context (no secret key) and the batch are stored once per task and referenced by
    CID, so the same ciphertexts serve every model the verifier is drawn for."""

    kind: ClassVar[MessageKind] = MessageKind.EVAL_REQUEST

    envelope_hash: str = Field(pattern="^[0-9a-f]{64}$")   # binds the request to the announced model
    scheme: Literal["ckks"] = "ckks"
    n_queries: int = Field(ge=1, le=100_000)
    offer_cid: str = Field(min_length=1, max_length=128)
    context_cid: str = Field(min_length=1, max_length=128)
    batch_cid: str = Field(min_length=1, max_length=128)


class EvalResponse(_Header):
    """The contributor's encrypted outputs (features and logits) for one request; part: outputs."""

    kind: ClassVar[MessageKind] = MessageKind.EVAL_RESPONSE
    parts: ClassVar[tuple[str, ...]] = ("outputs",)
    max_part_bytes: ClassVar[int] = 256 * 1024 * 1024

    request_cid: str = Field(min_length=1, max_length=128)
    n_queries: int = Field(ge=1, le=100_000)
    labels: list[int] = Field(min_length=1, max_length=100_000, description="classes the model declares")


class AuditReport(_Header):
    """What a verifier decrypted for the public audit images of one model: after delivery the
    initiator checks that the model it received reproduces these outputs, and otherwise disputes."""

    kind: ClassVar[MessageKind] = MessageKind.AUDIT_REPORT

    audit_indices: list[int] = Field(max_length=4096)
    logits: list[list[float]] = Field(max_length=4096)
    # the classes the contributor declared to this verifier (what it was judged on): the delivered
    # package must declare the same, or the buyer disputes
    labels: list[int] = Field(default_factory=list, max_length=4096)

    @field_validator("logits")
    @classmethod
    def _finite(cls, v: list[list[float]]) -> list[list[float]]:
        import math
        if any(not math.isfinite(x) for row in v for x in row):
            raise ValueError("logits must be finite")
        return v


class ModelKey(_Header):
    """Plaintext-to-verifiers mode only: the model's envelope key K for one drawn verifier (the whole
    message is sealed to that verifier's box key)."""

    kind: ClassVar[MessageKind] = MessageKind.MODEL_KEY

    key: str = Field(pattern="^[0-9a-f]{64}$")


class IvheModel(_Header):
    """ivhe-insecure mode only: the contributor's model with its first layer encrypted under the
    initiator's IVHE public key (the rest is plaintext scaled integers, as in the paper); the whole
    message is sealed to one drawn verifier's box key. Part: the coopml-he encrypted-model blob."""

    kind: ClassVar[MessageKind] = MessageKind.IVHE_MODEL
    parts: ClassVar[tuple[str, ...]] = ("model",)
    max_part_bytes: ClassVar[int] = 64 * 1024 * 1024

    labels: list[int] = Field(min_length=1, max_length=100_000, description="classes the model declares")


class DecryptRequest(_Header):
    """ivhe-insecure mode only: a drawn verifier asks the initiator (the IVHE key holder) to decrypt the
    outputs of its encrypted evaluation — the paper's decryption oracle. Sealed to the initiator's
    delivery key; the answer is sealed to `reply_box_key`. Part: a coopml-he ciphertext."""

    kind: ClassVar[MessageKind] = MessageKind.DECRYPT_REQUEST
    parts: ClassVar[tuple[str, ...]] = ("ciphertext",)
    max_part_bytes: ClassVar[int] = 256 * 1024 * 1024

    n_queries: int = Field(ge=1, le=100_000)
    reply_box_key: str = Field(pattern="^[0-9a-f]{64}$")


class DecryptResponse(_Header):
    """ivhe-insecure mode only: the initiator's decryption of one request (sealed to the verifier).
    Part: the decrypted integer words, an .npy array of int64 (no pickle)."""

    kind: ClassVar[MessageKind] = MessageKind.DECRYPT_RESPONSE
    parts: ClassVar[tuple[str, ...]] = ("plain",)
    max_part_bytes: ClassVar[int] = 256 * 1024 * 1024

    request_cid: str = Field(min_length=1, max_length=128)


HEADERS: dict[MessageKind, type[_Header]] = {h.kind: h for h in (EvalOffer, EvalRequest, EvalResponse, AuditReport,
                                                                  ModelKey, IvheModel, DecryptRequest, DecryptResponse)}
Header = EvalOffer | EvalRequest | EvalResponse | AuditReport | ModelKey | IvheModel | DecryptRequest | DecryptResponse


def encode(header: Header, parts: tuple[bytes, ...] = ()) -> bytes:
    if len(parts) != len(header.parts):
        raise MessageError(f"{type(header).__name__} carries {len(header.parts)} parts, got {len(parts)}")
    head = header.model_dump_json().encode()
    out = [MAGIC, struct.pack(">BBI", VERSION, int(header.kind), len(head)), head, struct.pack(">B", len(parts))]
    for p in parts:
        out += [struct.pack(">Q", len(p)), p]
    return b"".join(out)


def decode(blob: bytes, expect: MessageKind) -> tuple[Header, tuple[bytes, ...]]:
    """Parse a message of kind `expect` (the kind the on-chain event announced)."""
    if not isinstance(blob, (bytes, bytearray)):
        raise MessageError("message is not bytes")
    if len(blob) < 10 or blob[:4] != MAGIC:
        raise MessageError("not a coopml message (bad magic)")
    version, kind, hlen = struct.unpack(">BBI", blob[4:10])
    if version != VERSION:
        raise MessageError(f"unsupported message version {version}")
    if kind != int(expect):
        raise MessageError(f"message says kind {kind}, the chain announced {int(expect)}")
    cls = HEADERS.get(MessageKind(expect))
    if cls is None:
        raise MessageError(f"no header type for kind {int(expect)}")
    if hlen > MAX_HEADER or 10 + hlen + 1 > len(blob):
        raise MessageError("message header is truncated or too large")
    try:
        raw = json.loads(bytes(blob[10:10 + hlen]).decode("utf-8"))
        header = cls.model_validate(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MessageError(f"message header is not JSON: {exc}") from None
    except ValidationError as exc:
        err = exc.errors()[0]
        raise MessageError(f"{cls.__name__} header invalid at {'.'.join(map(str, err['loc']))}: {err['msg']}") from None
    pos = 10 + hlen
    (n,) = struct.unpack(">B", blob[pos:pos + 1])
    pos += 1
    if n != len(cls.parts) or n > MAX_PARTS:
        raise MessageError(f"{cls.__name__} must carry {len(cls.parts)} parts, has {n}")
    parts = []
    for name in cls.parts:
        if pos + 8 > len(blob):
            raise MessageError(f"message truncated before part {name!r}")
        (size,) = struct.unpack(">Q", blob[pos:pos + 8])
        pos += 8
        if size > cls.max_part_bytes or pos + size > len(blob):
            raise MessageError(f"part {name!r} is truncated or larger than {cls.max_part_bytes} bytes")
        parts.append(bytes(blob[pos:pos + size]))
        pos += size
    if pos != len(blob):
        raise MessageError(f"{len(blob) - pos} trailing bytes after the message")
    return header, tuple(parts)  # type: ignore[return-value]

"""What a bought model is: a typed package inside an AES-GCM envelope whose key K is committed on-chain.

    package  = b"CMLP2" | header length u32 | header JSON | model bytes
    envelope = wrap(K, package, context = contract address + task id)

The header says how the model bytes are to be read — `safetensors` of a registered architecture, or
an `onnx` graph with declared `logits` and `features` outputs — and which classes the model was
trained on. A receiver never executes the sender's code: safetensors are tensors only, and ONNX
graphs are checked before onnxruntime sees them (coopml.models). The envelope hash (sha256) and
keccak(K) are both committed at announcement: AES-GCM is not key-committing, so the key commitment
alone would let a contributor hand out a second key that opens different bytes.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from coopml.errors import CoopmlError

MAGIC = b"CMLP2"
MAX_HEADER = 64 * 1024


class PackageError(CoopmlError):
    """A model package or envelope is malformed, tampered, or does not match its commitment."""


class PackageHeader(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["safetensors", "onnx"]
    arch: str | None = Field(None, max_length=200, description="registered architecture (safetensors only)")
    labels: list[int] = Field(min_length=1, max_length=100_000, description="class ids the model was trained on")
    feature_layer: str | None = Field(None, max_length=200)
    sha256: str = Field(pattern="^[0-9a-f]{64}$", description="of the model bytes")


def pack(model_bytes: bytes, fmt: Literal["safetensors", "onnx"], labels: list[int], arch: str | None = None,
         feature_layer: str | None = None) -> bytes:
    head = PackageHeader(format=fmt, arch=arch, labels=sorted(set(labels)), feature_layer=feature_layer,
                         sha256=hashlib.sha256(model_bytes).hexdigest()).model_dump_json().encode()
    return MAGIC + struct.pack(">I", len(head)) + head + model_bytes


def unpack(blob: bytes) -> tuple[PackageHeader, bytes]:
    if len(blob) < 9 or not blob.startswith(MAGIC):
        raise PackageError("not a coopml model package")
    (n,) = struct.unpack(">I", blob[5:9])
    if n > MAX_HEADER or 9 + n > len(blob):
        raise PackageError("model package header is truncated or too large")
    try:
        header = PackageHeader.model_validate_json(blob[9:9 + n])
    except ValidationError as exc:
        err = exc.errors()[0]
        raise PackageError(f"model package header invalid at {'.'.join(map(str, err['loc']))}: {err['msg']}") from None
    body = blob[9 + n:]
    if hashlib.sha256(body).hexdigest() != header.sha256:
        raise PackageError("model package body does not match its header hash")
    if header.format == "safetensors" and not header.arch:
        raise PackageError("a safetensors model package must name its architecture")
    return header, body


def envelope_context(contract: str, task_id: int) -> bytes:
    """Authenticated data of a model envelope: it cannot be replayed into another task or deployment."""
    return f"coopml-model:{contract.lower()}:{task_id}".encode()


def delivery_context(contract: str, model_id: int) -> bytes:
    """Authenticated data of a key sealed to the buyer for one model."""
    return f"coopml-delivery:{contract.lower()}:{model_id}".encode()

"""Blob container for everything the CKKS engine sends, and its validation.

    b"CMLCKKS1" | kind (u8) | header length (u32 BE) | header (JSON, pydantic) | body

The header says how many of what; the body's length is then fully determined and must match
exactly. Nothing in a blob is trusted: headers are validated by pydantic with limits, every
packed coefficient is checked against its prime, SEAL objects are re-validated by SEAL.
"""

from __future__ import annotations

import struct
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from coopml.he.ckks.errors import CkksFormatError

MAGIC = b"CMLCKKS1"
KIND_CONTEXT, KIND_BATCH, KIND_OUTPUTS, KIND_KEY = 1, 2, 3, 4
KIND_NAMES = {KIND_CONTEXT: "public context", KIND_BATCH: "encrypted batch", KIND_OUTPUTS: "encrypted outputs",
              KIND_KEY: "query key"}
MAX_HEADER = 1 << 16
PREFIX = len(MAGIC) + 1 + 4

H = TypeVar("H", bound=BaseModel)


def seal_blob(kind: int, header: BaseModel, body: bytes) -> bytes:
    head = header.model_dump_json().encode()
    return MAGIC + bytes([kind]) + struct.pack(">I", len(head)) + head + body


def open_blob(data: bytes, kind: int, header_type: type[H], max_bytes: int) -> tuple[H, memoryview]:
    what = KIND_NAMES[kind]
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CkksFormatError(f"{what} must be bytes, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise CkksFormatError(f"{what} is {len(data)} bytes, over the {max_bytes}-byte limit")
    if len(data) < PREFIX or bytes(data[:len(MAGIC)]) != MAGIC:
        raise CkksFormatError(f"not a coopml CKKS blob (expected a {what})")
    got = data[len(MAGIC)]
    if got != kind:
        raise CkksFormatError(f"expected a {what}, got a {KIND_NAMES.get(got, f'unknown kind {got}')}")
    (n,) = struct.unpack_from(">I", data, len(MAGIC) + 1)
    if n > MAX_HEADER or PREFIX + n > len(data):
        raise CkksFormatError(f"{what} header is truncated or oversized ({n} bytes)")
    try:
        header = header_type.model_validate_json(bytes(data[PREFIX:PREFIX + n]))
    except ValidationError as exc:
        err = exc.errors()[0]
        raise CkksFormatError(f"{what} header is invalid: {'.'.join(map(str, err['loc']))}: {err['msg']}") from None
    return header, memoryview(bytes(data))[PREFIX + n:]

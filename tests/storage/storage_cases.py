"""File sizes the issue asks CIDs to be checked for, and deterministic payloads."""

from __future__ import annotations

import random

from coopml.storage.unixfs import DEFAULT_CHUNK_SIZE

SIZES = {
    "empty": 0,
    "small": 1000,
    "chunk-1": DEFAULT_CHUNK_SIZE - 1,
    "chunk": DEFAULT_CHUNK_SIZE,
    "chunk+1": DEFAULT_CHUNK_SIZE + 1,
    "5MiB+7": 5 * 1024 * 1024 + 7,
}


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed * 104729 + size).randbytes(size)

"""Transport encryption between agents: AES-256-GCM envelopes and X25519 sealed boxes.

An envelope seals a model package under its key K (committed on-chain); a sealed box carries a
message *for one recipient* (the model key to the buyer, an audit report to the buyer, a model key
to a drawn verifier in plaintext mode).
Built on PyCryptodome (already pinned through the chain stack).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from Crypto.Cipher import AES
from Crypto.Hash import SHA256
from Crypto.Protocol.DH import import_x25519_private_key, import_x25519_public_key, key_agreement
from Crypto.Protocol.KDF import HKDF
from Crypto.PublicKey import ECC

from coopml.errors import CoopmlError

ENVELOPE_MAGIC = b"CMLE1"
SEALED_MAGIC = b"CMLS1"


class SealError(CoopmlError):
    """An envelope or sealed box is malformed, tampered, or not for this key."""


def new_key() -> bytes:
    return os.urandom(32)


def wrap(key: bytes, plaintext: bytes, context: bytes = b"") -> bytes:
    """AES-256-GCM; `context` (e.g. the task id) is authenticated, so a blob can't be replayed elsewhere."""
    if len(key) != 32:
        raise SealError("envelope key must be 32 bytes")
    nonce = os.urandom(12)
    cipher = AES.new(key, AES.MODE_GCM, nonce=nonce)
    cipher.update(ENVELOPE_MAGIC + context)
    body, tag = cipher.encrypt_and_digest(plaintext)
    return ENVELOPE_MAGIC + nonce + tag + body


def unwrap(key: bytes, blob: bytes, context: bytes = b"") -> bytes:
    if len(blob) < 33 or not blob.startswith(ENVELOPE_MAGIC):
        raise SealError("not a coopml envelope")
    nonce, tag, body = blob[5:17], blob[17:33], blob[33:]
    cipher = AES.new(key, AES.MODE_GCM, nonce=nonce)
    cipher.update(ENVELOPE_MAGIC + context)
    try:
        return cipher.decrypt_and_verify(body, tag)
    except ValueError:
        raise SealError("envelope authentication failed: wrong key, wrong context or tampered data") from None


def _kdf(shared: bytes | bytearray | memoryview) -> bytes:
    key = HKDF(bytes(shared), 32, b"coopml-seal-v1", SHA256)
    assert isinstance(key, bytes)  # num_keys=1 gives one key; the stub's return type also allows a tuple
    return key


@dataclass(frozen=True)
class BoxKeyPair:
    """An X25519 key pair; the 32-byte public key is what goes on-chain."""

    private: ECC.EccKey

    @classmethod
    def generate(cls) -> BoxKeyPair:
        return cls(ECC.generate(curve="Curve25519"))

    @classmethod
    def from_bytes(cls, seed: bytes) -> BoxKeyPair:
        if len(seed) != 32:
            raise SealError("box private key must be 32 bytes")
        return cls(import_x25519_private_key(seed))

    def private_bytes(self) -> bytes:
        return self.private.seed

    @property
    def public(self) -> bytes:
        return self.private.public_key().export_key(format="raw")

    def __repr__(self) -> str:  # never print the private key
        return f"BoxKeyPair(public={self.public.hex()[:16]}...)"


def _public(raw: bytes) -> ECC.EccKey:
    try:
        return import_x25519_public_key(raw)
    except (ValueError, TypeError):
        raise SealError("not an X25519 public key") from None


def seal(recipient_public: bytes, plaintext: bytes, context: bytes = b"") -> bytes:
    """Anonymous sealed box: ephemeral X25519 + HKDF + AES-GCM; only the recipient can open it."""
    eph = ECC.generate(curve="Curve25519")
    key = key_agreement(static_priv=eph, static_pub=_public(recipient_public), kdf=_kdf)
    eph_pub = eph.public_key().export_key(format="raw")
    return SEALED_MAGIC + eph_pub + wrap(key, plaintext, context + recipient_public)


def open_sealed(pair: BoxKeyPair, blob: bytes, context: bytes = b"") -> bytes:
    if len(blob) < 37 or not blob.startswith(SEALED_MAGIC):
        raise SealError("not a coopml sealed box")
    key = key_agreement(static_priv=pair.private, static_pub=_public(blob[5:37]), kdf=_kdf)
    return unwrap(key, blob[37:], context + pair.public)

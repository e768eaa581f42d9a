"""An eth-keys ECC backend that remembers recovered signers.

Recovering a transaction's sender is the dominant cost of the embedded node (pure-Python
secp256k1: ~10 ms per recovery without `coincurve`), and py-evm recovers the same signature
again when it mines the transaction the node already checked at submission. eth-keys looks its
backend up by import path on every recovery (env `ECC_BACKEND_CLASS`), so the node points that
variable here: the faster `coincurve` backend when installed, the native one otherwise, with a
bounded cache in front of `ecdsa_recover`.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from typing import Any

from eth_keys.backends import CoinCurveECCBackend, NativeECCBackend
from eth_keys.backends.coincurve import is_coincurve_available
from eth_keys.datatypes import PublicKey, Signature

_Base: Any = CoinCurveECCBackend if is_coincurve_available() else NativeECCBackend
_CACHE: OrderedDict[tuple[bytes, bytes], bytes] = OrderedDict()
_CACHE_SIZE = 16_384
_LOCK = threading.Lock()
PATH = "coopml.chain._ecc.CachingECCBackend"


class CachingECCBackend(_Base):
    """Default eth-keys backend plus a process-wide LRU cache of (hash, signature) -> public key."""

    def ecdsa_recover(self, msg_hash: bytes, signature: Signature) -> PublicKey:
        key = (bytes(msg_hash), signature.to_bytes())
        with _LOCK:
            hit = _CACHE.get(key)
            if hit is not None:
                _CACHE.move_to_end(key)
        if hit is not None:
            return PublicKey(hit, backend=self)
        public_key: PublicKey = super().ecdsa_recover(msg_hash, signature)
        with _LOCK:
            _CACHE[key] = public_key.to_bytes()
            if len(_CACHE) > _CACHE_SIZE:
                _CACHE.popitem(last=False)
        return public_key


def install() -> str:
    """Make eth-keys (hence py-evm and eth-account in this process) use the caching backend,
    unless the user chose a backend explicitly. Returns the backend's class name in use."""
    os.environ.setdefault("ECC_BACKEND_CLASS", PATH)
    return f"{os.environ['ECC_BACKEND_CLASS']} over {_Base.__name__}"


def remember_sender(tx: Any, public_key: bytes) -> None:
    """Seed the cache for a py-evm transaction this process signed itself (its signer is known),
    so mining it does not pay for a recovery."""
    from eth_keys.datatypes import Signature as Sig
    from eth_utils import keccak

    message_hash = keccak(tx.get_message_for_signing())
    signature = Sig(vrs=(int(tx.y_parity), int(tx.r), int(tx.s)))
    with _LOCK:
        _CACHE[(bytes(message_hash), signature.to_bytes())] = bytes(public_key)
        if len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)

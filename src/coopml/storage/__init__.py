"""coopml.storage: content-addressed decentralized storage (paper section IV-A).

`put` returns the CID `ipfs add` gives the same bytes; `get` verifies every block against its CID
and raises ContentMismatch rather than return tampered bytes. Backends: LocalStore (embedded,
default) and KuboStore (an IPFS daemon's Kubo RPC API). `open_store` picks one from a spec string.
"""

from coopml.errors import ContentMismatch, ContentNotFound, ContentTooLarge, StorageError, StorageUnavailable
from coopml.storage.kubo import KuboStore
from coopml.storage.store import DEFAULT_MAX_SIZE, LocalStore, Store, open_store
from coopml.storage.unixfs import DEFAULT_CHUNK_SIZE, file_cid

__all__ = [
    "DEFAULT_CHUNK_SIZE", "DEFAULT_MAX_SIZE", "ContentMismatch", "ContentNotFound", "ContentTooLarge",
    "KuboStore", "LocalStore", "StorageError", "StorageUnavailable", "Store", "file_cid", "open_store",
]

"""Project-wide error base: every error a user can cause derives from CoopmlError so the CLI
can print its message instead of a traceback."""


class CoopmlError(Exception):
    """Base for errors with a message meant for a person."""


class DataError(CoopmlError):
    """A dataset file is missing, corrupted or malformed."""


class ModelFileError(CoopmlError):
    """A model file or manifest is malformed, tampered, or does not match its architecture."""


class ModelDefinitionError(CoopmlError):
    """A model cannot be built as declared: import path not found, factory not callable or not
    returning an nn.Module, declared feature layer missing, outputs not matching the InputSpec,
    architecture name taken or unknown to the registry."""


class HEError(CoopmlError):
    """Homomorphic-encryption misuse: bad parameters, mismatched keys, noise budget exceeded, bad blobs."""


class StorageError(CoopmlError):
    """Decentralized-storage failure (coopml.storage)."""


class ContentMismatch(StorageError):
    """Bytes received for a CID do not hash to it, or a DAG is malformed: tampering or corruption."""


class ContentNotFound(StorageError):
    """No block for the CID in the store (or none arrived from the swarm in time)."""


class ContentTooLarge(StorageError):
    """Content exceeds the store's configured size limit."""


class StorageUnavailable(StorageError):
    """The storage backend (IPFS daemon, node binary) cannot be reached or started."""


class ChainError(CoopmlError):
    """The chain layer could not do what was asked: node unreachable, bad artifact, tx failed."""


class ContractRevert(ChainError):
    """The CoopML contract reverted with a custom error; `name` is its Solidity name
    (e.g. "NotSelectedVerifier") and `args` its decoded arguments."""

    def __init__(self, name: str, args: tuple = (), message: str | None = None):
        self.name = name
        self.args_decoded = tuple(args)
        super().__init__(message or (f"contract reverted: {name}{tuple(args) if args else ''}"))

"""Project-wide error base: every error a user can cause derives from CoopmlError so the CLI
can print its message instead of a traceback."""


class CoopmlError(Exception):
    """Base for errors with a message meant for a person."""


class Cancelled(CoopmlError):
    """Work stopped by its caller (a `should_stop` turned true: the node is stopping, or newer work
    replaces it); nothing half-done was kept. Not a failure: do not retry it as one."""


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
    """The chain layer could not do what was asked: node unreachable, bad artifact, tx failed.
    Subclasses name the cause; `transient` is True for those worth retrying unchanged."""

    transient = False


class ContractRevert(ChainError):
    """The CoopML contract reverted with a custom error; `name` is its Solidity name
    (e.g. "NotSelectedVerifier") and `args` its decoded arguments. Permanent for this call on
    this state: retry only after the state changed (a window opened, a deposit arrived)."""

    def __init__(self, name: str, args: tuple = (), message: str | None = None):
        self.name = name
        self.args_decoded = tuple(args)
        super().__init__(message or (f"contract reverted: {name}{tuple(args) if args else ''}"))


# --- chain errors by cause (coopml.chain). `transient` says whether retrying the same call later
# can succeed without anyone changing anything (web3.py / ethers distinguish the same way).


class ChainUnavailable(ChainError):
    """The node cannot be reached or did not answer in time (connection refused, timeout, node
    restarting). Transient: retry with back-off; a transaction sent under an intent id is
    re-broadcast, never duplicated."""

    transient = True


class TransactionTimeout(ChainUnavailable):
    """A broadcast transaction was not mined (with the wanted confirmations) within the wait.
    Transient: it is still journaled; retrying the same intent resumes waiting / re-broadcasts."""


class WrongChain(ChainError):
    """The node serves another chain (chain id, or genesis block for a journal) than the one
    configured or journaled: a misconfiguration or a reset dev chain; never retried (payments
    signed for one chain must not go to another)."""

    def __init__(self, message: str, expected: int | str | None = None, actual: int | str | None = None) -> None:
        self.expected, self.actual = expected, actual
        super().__init__(message)


class FeeTooHigh(ChainError):
    """The network's base fee is above the configured fee cap: nothing is signed. Transient:
    base fees fall when blocks are less than half full; retry later or raise the cap."""

    transient = True


class InsufficientFunds(ChainError):
    """The sender cannot pay value + gas x max fee. Permanent until the account is funded."""


class NonceConflict(ChainError):
    """The nonce this node reserved was used by a transaction it did not journal (another process
    holds the same key, or the journal was lost). Not retried automatically: a payment might
    otherwise be made twice; reconcile by hand or use one key per process."""


class TransactionDropped(ChainError):
    """The node forgot a journaled transaction and refused it again on re-broadcast."""


class TransactionReplaced(ChainError):
    """A different transaction with the same sender and nonce was mined instead of ours
    (`replacement` is its hash). The intent did not happen; decide before re-issuing it."""

    def __init__(self, message: str, replacement: str | None = None) -> None:
        self.replacement = replacement
        super().__init__(message)


class NoContractAtAddress(ChainError):
    """eth_getCode is empty at the address: nothing deployed there (wrong address, wrong chain,
    node reset). Never send value to it."""


class NotCoopMLContract(ChainError):
    """Code at the address is not the expected contract (runtime bytecode differs from the
    artifact, metadata aside): another contract or another version. Never send value to it."""


class KeystoreError(CoopmlError):
    """An encrypted account file could not be used."""


class KeystoreNotFound(KeystoreError):
    """No keystore file for the account / at the path."""


class WrongPassword(KeystoreError):
    """The password does not decrypt the keystore file (MAC mismatch)."""


class KeystoreCorrupted(KeystoreError):
    """The keystore file is not a valid version-3 encrypted key (truncated, edited, not JSON)."""

"""coopml.chain: the CoopML Solidity contract (protocol v2), its compiled artifacts and a typed web3 client.

Backends behind one `Chain` interface: `Chain.embedded()` (in-process py-evm, the default) and
`Chain.rpc(url)` (anvil, `python -m coopml.chain.node`, any JSON-RPC node). See docs/chain.md
(contract, client) and docs/chain-client.md (node, transaction manager, errors, keystores).
"""

from coopml.chain.accounts import Keystore, read_password, read_private_key
from coopml.chain.artifacts import load_artifact
from coopml.chain.backends import ETHER, Chain
from coopml.chain.client import (
    PROTOCOL_VERSION,
    BallotInfo,
    BurnReason,
    MemberInfo,
    ModelInfo,
    ModelStatus,
    TaskClient,
    TaskInfo,
    TaskTerms,
    Vote,
    deploy,
    key_commitment,
    vote_commitment,
)
from coopml.chain.deployment import verify_deployment
from coopml.chain.events import ChainEvent, EventCursor
from coopml.chain.transactions import FeePolicy, TxJournal, TxManager
from coopml.errors import ChainError, ChainUnavailable, ContractRevert

__all__ = [
    "ETHER", "PROTOCOL_VERSION", "BallotInfo", "BurnReason", "Chain", "ChainError", "ChainEvent", "ChainUnavailable",
    "ContractRevert", "EventCursor", "FeePolicy", "Keystore", "MemberInfo", "ModelInfo", "ModelStatus", "TaskClient",
    "TaskInfo", "TaskTerms", "TxJournal", "TxManager", "Vote", "deploy", "key_commitment", "load_artifact",
    "read_password", "read_private_key", "verify_deployment", "vote_commitment",
]

"""The three agents of a task: Initiator, Contributor, Verifier (docs/protocol.md).

Each is a long-running, event-driven reconciler over the CoopML contract (coopml.chain), a
content-addressed store (coopml.storage) and IVHE (coopml.he), with its local state in SQLite so
that a node killed at any step resumes from chain state.
"""

from coopml.roles.config import ContributorConfig, InitiatorConfig, VerifierConfig, load_config
from coopml.roles.contributor import Contributor
from coopml.roles.initiator import Initiator
from coopml.roles.verifier import Verifier

__all__ = ["Contributor", "ContributorConfig", "Initiator", "InitiatorConfig", "Verifier", "VerifierConfig",
           "load_config"]

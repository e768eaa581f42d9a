"""The three agents of a task: Initiator, Contributor, Verifier (docs/protocol.md, docs/threat-model.md).

Each is a long-running, event-driven reconciler over the CoopML contract (coopml.chain), a
content-addressed store (coopml.storage) and the CKKS evaluation engine (coopml.he), with its local
state in SQLite so that a node killed at any step resumes from chain state. Imports are lazy: a
node process only pays for the role it runs.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Agent": "coopml.roles.agent", "AgentStopped": "coopml.roles.agent", "WorkdirLock": "coopml.roles.agent",
    "Contributor": "coopml.roles.contributor", "Initiator": "coopml.roles.initiator",
    "Verifier": "coopml.roles.verifier",
    "ContributorConfig": "coopml.roles.config", "InitiatorConfig": "coopml.roles.config",
    "VerifierConfig": "coopml.roles.config", "load_config": "coopml.roles.config",
    "EventLog": "coopml.roles.log", "LogEvent": "coopml.roles.log", "LogRecord": "coopml.roles.log",
    "Role": "coopml.roles.log",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'coopml.roles' has no attribute {name!r}")

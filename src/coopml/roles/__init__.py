"""The three agents of a task: Initiator, Contributor, Verifier (docs/protocol.md, docs/threat-model.md).

Each is a long-running, event-driven reconciler over the CoopML contract (coopml.chain), a
content-addressed store (coopml.storage) and the CKKS evaluation engine (coopml.he), with its local
state in SQLite so that a node killed at any step resumes from chain state. Imports are lazy: a
node process only pays for the role it runs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the real types for type checkers; at run time the names load lazily (__getattr__)
    from coopml.roles.agent import Agent, AgentStopped, WorkdirLock
    from coopml.roles.config import ContributorConfig, InitiatorConfig, VerifierConfig, load_config
    from coopml.roles.contributor import Contributor
    from coopml.roles.initiator import Initiator
    from coopml.roles.log import EventLog, LogEvent, LogRecord, Role
    from coopml.roles.verifier import Verifier

_EXPORTS = {
    "Agent": "coopml.roles.agent", "AgentStopped": "coopml.roles.agent", "WorkdirLock": "coopml.roles.agent",
    "Contributor": "coopml.roles.contributor", "Initiator": "coopml.roles.initiator",
    "Verifier": "coopml.roles.verifier",
    "ContributorConfig": "coopml.roles.config", "InitiatorConfig": "coopml.roles.config",
    "VerifierConfig": "coopml.roles.config", "load_config": "coopml.roles.config",
    "EventLog": "coopml.roles.log", "LogEvent": "coopml.roles.log", "LogRecord": "coopml.roles.log",
    "Role": "coopml.roles.log",
}
__all__ = [
    "Agent",
    "AgentStopped",
    "Contributor",
    "ContributorConfig",
    "EventLog",
    "Initiator",
    "InitiatorConfig",
    "LogEvent",
    "LogRecord",
    "Role",
    "Verifier",
    "VerifierConfig",
    "WorkdirLock",
    "load_config",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'coopml.roles' has no attribute {name!r}")

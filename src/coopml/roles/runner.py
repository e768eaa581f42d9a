"""Composition root of a node: from a config to a running agent with its dependencies.

`open_node` unlocks the node's keystore, connects to the chain (with a transaction journal in the
workdir, so a retried payment is never paid twice), checks that the configured address holds the
CoopML contract before anything is paid, opens the store and the node's state, and takes the
workdir lock. `run_node` runs an agent class (a production role, or a subclass — coopml.sim's
scripted misbehaviours are loaded the same way, by import path) until its part is over.
"""

from __future__ import annotations

import importlib
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast

from coopml.chain import Chain, Keystore, TaskClient, read_password, verify_deployment
from coopml.errors import CoopmlError
from coopml.roles.agent import Agent, WorkdirLock
from coopml.roles.config import NodeConfig
from coopml.roles.log import EventLog, Role, json_lines, text_lines
from coopml.roles.state import AgentState
from coopml.storage import Store, open_store


class AgentClass(Protocol):
    """What a node runs: an Agent subclass built from its role's config (coopml.roles:Verifier, a sim
    misbehaviour, ...). The base Agent itself takes no config."""

    @property
    def role(self) -> Role: ...

    def __call__(self, cfg: Any, *, client: TaskClient, store: Store, state: AgentState,
                 log: EventLog | None = None) -> Agent: ...


class NodeSetupError(CoopmlError):
    """The node cannot start: a missing keystore, a wrong password, no contract at the address, ..."""


@dataclass
class Node:
    chain: Chain
    client: TaskClient
    store: Store
    state: AgentState
    lock: WorkdirLock

    def close(self) -> None:
        self.state.close()
        self.store.close()
        self.lock.release()


def open_node(cfg: NodeConfig, chain: Chain | None = None, password: str | None = None) -> Node:
    cfg.workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
    cfg.workdir.chmod(0o700)          # private: also when it existed (mkdir's mode applies only to a new one)
    lock = WorkdirLock(cfg.workdir)
    try:
        if password is None:
            password = read_password(env=cfg.account.password_env, file=cfg.account.password_file, prompt=sys.stdin.isatty())
        account = Keystore(cfg.account.keystore.parent).unlock(cfg.account.keystore, password)
        if chain is None:
            chain = Chain.rpc(cfg.chain, journal=cfg.workdir / "tx-journal.sqlite", ws_url=cfg.chain_ws)
        address = chain.add_key(account.key)
        verify_deployment(chain, cfg.contract)           # P6: never pay into an address that is not CoopML
        client = TaskClient(chain, cfg.contract, address, payment_intents=True)
        return Node(chain, client, open_store(cfg.store), AgentState(cfg.workdir / "state.sqlite"), lock)
    except BaseException:
        lock.release()
        raise


def load_agent_class(path: str) -> AgentClass:
    """`package.module:Class` (e.g. coopml.roles:Verifier, or a sim misbehaviour)."""
    module, _, name = path.partition(":")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise NodeSetupError(f"cannot load agent class {path!r}: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, Agent)):
        raise NodeSetupError(f"{path!r} is not an agent class")
    return cast(AgentClass, cls)  # an Agent subclass; its constructor takes the role's config


def run_node(agent_cls: AgentClass, cfg: NodeConfig, node_name: str = "", chain: Chain | None = None,
             password: str | None = None, on_start: Callable[[Agent], None] | None = None) -> str:
    """Run one node to completion; returns its one-line human summary. SIGTERM/SIGINT stop it
    between rounds (state is always consistent; a restart resumes)."""
    node = open_node(cfg, chain, password)
    role: Role = agent_cls.role
    sink = json_lines(sys.stdout) if cfg.log_format == "json" else text_lines(sys.stdout)
    log = EventLog(role, node_name or role.value, sink)
    stopping = {"flag": False}

    def stop(*_: Any) -> None:
        stopping["flag"] = True
    old = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    agent = agent_cls(cfg, client=node.client, store=node.store, state=node.state, log=log)
    try:
        if on_start:
            on_start(agent)
        return agent.run(stop=lambda: stopping["flag"])
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        agent.jobs.shutdown()
        node.close()

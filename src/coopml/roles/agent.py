"""The shape every role shares: a reconciler driven by chain events.

Each loop: record what new events say (idempotently) in the local database, then `step()`:
look at chain state plus local facts and do the next action that is due. Because every
action is re-derived from chain state, a node killed at any point and restarted simply carries
on; the contract rejects anything done twice (AlreadyCommitted, NothingToWithdraw, ...).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

from coopml.chain import Chain, ChainEvent, EventCursor, ModelStatus, TaskClient
from coopml.errors import ChainError, ContractRevert, CoopmlError, StorageError
from coopml.roles.config import NodeConfig
from coopml.roles.state import AgentState
from coopml.storage import Store, open_store

# Kinds of off-chain protocol messages announced with postMessage (payload in storage).
MSG_VERIFICATION_DATA = 1   # initiator -> verifier: sealed {key, cid} of the verification set
MSG_MODEL_KEY = 2           # contributor -> selected verifier: sealed access key of the model
MSG_DECRYPT_REQUEST = 3     # verifier -> initiator: blinded encrypted outputs
MSG_DECRYPT_ANSWER = 4      # initiator -> verifier: sealed arg-max positions

Logger = Callable[[str, dict[str, Any]], None]

# A model in one of these states needs nothing more from anyone.
FINAL = (ModelStatus.REJECTED, ModelStatus.RELEASED, ModelStatus.FORFEITED)


def json_logger(role: str, stream=None) -> Logger:
    """One JSON object per line on stdout: what the demo's live view reads. Never log secrets."""
    out = stream or sys.stdout

    def log(event: str, fields: dict[str, Any]) -> None:
        out.write(json.dumps({"t": round(time.time(), 3), "role": role, "event": event, **fields}) + "\n")
        out.flush()
    return log


class Agent:
    role = "agent"

    def __init__(self, cfg: NodeConfig, chain: Chain | None = None, log: Logger | None = None) -> None:
        self.cfg = cfg
        self.workdir = Path(cfg.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.chain = chain if chain is not None else Chain.rpc(cfg.chain)
        self.address = self.chain.add_key(cfg.key)
        self.client = TaskClient(self.chain, cfg.contract, self.address)
        self.store: Store = open_store(cfg.store)
        self.state = AgentState(self.workdir / "state.sqlite")
        self.cursor = EventCursor(self.chain, cfg.contract, state_path=self.workdir / "cursor.json",
                                  from_block=cfg.from_block)
        self.log = log or json_logger(self.role)
        self.done = False

    # ------------------------------------------------------------------ loop

    def on_event(self, ev: ChainEvent) -> None:
        """Record what an event tells this node. Must be idempotent (events can be re-delivered)."""

    def step(self) -> None:
        """Do whatever is due now, judged from chain state and local facts."""

    def run_once(self) -> None:
        try:
            self.cursor.drain(self.on_event)
            self.step()
        except ContractRevert as exc:
            # A race with another node or a window that just closed: state is re-read next round.
            self.log("revert", {"error": getattr(exc, "name", "?"), "detail": str(exc)[:300]})
        except (ChainError, StorageError) as exc:
            # The node or the store is briefly unreachable (or content is not there yet): retry.
            self.log("retry", {"error": type(exc).__name__, "detail": str(exc)[:300]})

    def run(self) -> None:
        deadline = time.monotonic() + self.cfg.timeout
        while not self.done:
            self.run_once()
            if self.done:
                break
            if time.monotonic() > deadline:
                raise CoopmlError(f"{self.role} gave up after {self.cfg.timeout:.0f} s without finishing")
            time.sleep(self.cfg.poll_interval)

    # ------------------------------------------------------------------ helpers

    def now(self) -> int:
        """Chain time: the latest block's timestamp (deadlines are judged against it)."""
        return self.chain.now()

    def send_message(self, task_id: int, model_id: int, to: str, kind: int, payload: bytes) -> str:
        cid = self.store.put(payload)
        self.client.post_message(task_id, model_id, to, kind, cid)
        return cid

    def messages_to_me(self, ev: ChainEvent) -> bool:
        return ev.name == "Message" and ev.args["to"] == self.address

    def secret_path(self, name: str) -> Path:
        """Where this node keeps a secret: owner-only file mode, never uploaded or logged."""
        d = self.workdir / "secret"
        d.mkdir(mode=0o700, exist_ok=True)
        return d / name

    def write_secret(self, name: str, data: bytes) -> None:
        path = self.secret_path(name)
        tmp = path.with_name(path.name + ".part")
        tmp.touch(mode=0o600)
        tmp.write_bytes(data)
        tmp.replace(path)

    def read_secret(self, name: str) -> bytes | None:
        path = self.secret_path(name)
        return path.read_bytes() if path.is_file() else None

    def close(self) -> None:
        self.state.close()

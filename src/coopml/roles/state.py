"""An agent's local memory: a small SQLite database (WAL) that survives kill -9.

Agents are reconcilers: chain state says what has happened, this database says what *this* node
has prepared or learned (its trained model, facts seen in events, the decisions it took). Every
write is one committed transaction, so a crash leaves the old or the new value, never half.

Records are typed: each kind of fact is a pydantic model (see the roles' `facts` definitions), and
a `Decision` per handled item (a message, a model, a request) is stored *before* the item counts
as handled — so a crash between "decided" and "recorded" re-handles the item, it never loses it.
The database file is created 0600: it holds salts and votes before they are revealed.
"""

from __future__ import annotations

import enum
import json
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field

M = TypeVar("M", bound=BaseModel)


class Outcome(enum.StrEnum):
    DONE = "done"          # handled as intended
    REJECTED = "rejected"  # malformed, tampered, unauthorised or worthless: judged and dropped
    IGNORED = "ignored"    # not for us / not relevant any more
    EXPIRED = "expired"    # the chain deadline that made it relevant has passed


class Decision(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    outcome: Outcome
    reason: str = ""
    chain_time: int = 0


class Attempts(BaseModel):
    """Transient failures of one item (a store that does not have the content yet, ...)."""

    count: int = 0
    next_at: float = 0.0            # monotonic seconds: not before
    last_error: str = ""


class AgentState:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            fd = os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600)
            os.close(fd)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        self._db.execute("CREATE TABLE IF NOT EXISTS facts (kind TEXT, id TEXT, value TEXT NOT NULL,"
                         " PRIMARY KEY (kind, id))")
        self._db.execute("CREATE TABLE IF NOT EXISTS decisions (item TEXT PRIMARY KEY, value TEXT NOT NULL)")
        for suffix in ("-wal", "-shm"):
            side = self.path.with_name(self.path.name + suffix)
            if side.exists():
                os.chmod(side, 0o600)
        self._lock = threading.Lock()
        self._attempts: dict[str, Attempts] = {}

    # ------------------------------------------------------------------ plain values

    def get(self, key: str, default: Any = None) -> Any:
        row = self._db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def set(self, key: str, value: Any) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO kv VALUES (?, ?)", (key, json.dumps(value)))

    # ------------------------------------------------------------------ typed facts

    def put(self, kind: str, ident: object, value: BaseModel) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO facts VALUES (?, ?, ?)", (kind, str(ident), value.model_dump_json()))

    def add(self, kind: str, ident: object, value: BaseModel) -> bool:
        """Record a fact once; False when it was already known (a re-delivered event)."""
        with self._lock:
            cur = self._db.execute("INSERT OR IGNORE INTO facts VALUES (?, ?, ?)",
                                   (kind, str(ident), value.model_dump_json()))
            return cur.rowcount == 1

    def fact(self, kind: str, ident: object, cls: type[M]) -> M | None:
        row = self._db.execute("SELECT value FROM facts WHERE kind = ? AND id = ?", (kind, str(ident))).fetchone()
        return cls.model_validate_json(row[0]) if row else None

    def facts(self, kind: str, cls: type[M]) -> dict[str, M]:
        rows = self._db.execute("SELECT id, value FROM facts WHERE kind = ? ORDER BY rowid", (kind,)).fetchall()
        return {i: cls.model_validate_json(v) for i, v in rows}

    # ------------------------------------------------------------------ decisions

    def decide(self, item: str, decision: Decision) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO decisions VALUES (?, ?)", (item, decision.model_dump_json()))
        self._attempts.pop(item, None)

    def decision(self, item: str) -> Decision | None:
        row = self._db.execute("SELECT value FROM decisions WHERE item = ?", (item,)).fetchone()
        return Decision.model_validate_json(row[0]) if row else None

    def decisions(self, prefix: str = "") -> dict[str, Decision]:
        rows = self._db.execute("SELECT item, value FROM decisions WHERE item LIKE ? ORDER BY rowid",
                                (prefix + "%",)).fetchall()
        return {i: Decision.model_validate_json(v) for i, v in rows}

    def attempts(self, item: str) -> Attempts:
        """Transient-failure bookkeeping (in memory: after a restart every item is tried again)."""
        return self._attempts.setdefault(item, Attempts())

    def close(self) -> None:
        self._db.close()


class Fact(BaseModel):
    """Base of every role's local fact models."""

    model_config = ConfigDict(extra="forbid")


__all__ = ["AgentState", "Attempts", "Decision", "Fact", "Field", "Outcome"]

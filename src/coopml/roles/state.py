"""An agent's local memory: a small SQLite database (WAL) that survives kill -9.

Agents are reconcilers: chain state says what has happened, this database says what *this* node
has prepared or learned (its keys, trained model, facts seen in events). Every write is a single
committed transaction, so a crash leaves either the old or the new value, never half of one.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any


class AgentState:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        self._db.execute("CREATE TABLE IF NOT EXISTS facts (kind TEXT, id TEXT, value TEXT NOT NULL,"
                         " PRIMARY KEY (kind, id))")
        self._lock = threading.Lock()

    def get(self, key: str, default: Any = None) -> Any:
        row = self._db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def set(self, key: str, value: Any) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO kv VALUES (?, ?)", (key, json.dumps(value)))

    def add_fact(self, kind: str, ident: Any, value: Any) -> bool:
        """Record a fact once; returns False if it was already known (re-delivered event)."""
        with self._lock:
            cur = self._db.execute("INSERT OR IGNORE INTO facts VALUES (?, ?, ?)",
                                   (kind, str(ident), json.dumps(value)))
            return cur.rowcount == 1

    def update_fact(self, kind: str, ident: Any, value: Any) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO facts VALUES (?, ?, ?)", (kind, str(ident), json.dumps(value)))

    def fact(self, kind: str, ident: Any, default: Any = None) -> Any:
        row = self._db.execute("SELECT value FROM facts WHERE kind = ? AND id = ?", (kind, str(ident))).fetchone()
        return json.loads(row[0]) if row else default

    def facts(self, kind: str) -> dict[str, Any]:
        rows = self._db.execute("SELECT id, value FROM facts WHERE kind = ? ORDER BY rowid", (kind,)).fetchall()
        return {i: json.loads(v) for i, v in rows}

    def close(self) -> None:
        self._db.close()

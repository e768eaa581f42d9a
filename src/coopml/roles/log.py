"""What agents report while they run: one typed record per line, read by the CLI, the demo and tests.

Every record has a `LogEvent` name from one enum (no free-form event strings), the node's role and
the chain time; `fields` carries the event's facts. Nothing secret is ever logged: callers pass
ids, hashes, counts and outcomes, never keys, salts, votes before reveal, or data.

Two renderings of the same records: JSON lines (for the orchestrator and tests) and plain text
lines (for a person at a terminal or a log file; no TTY needed, no progress bars).
"""

from __future__ import annotations

import enum
import json
import sys
import threading
import time
from collections.abc import Callable
from typing import IO, Any

from pydantic import BaseModel, ConfigDict, Field


class Role(enum.StrEnum):
    INITIATOR = "initiator"
    CONTRIBUTOR = "contributor"
    VERIFIER = "verifier"


class LogEvent(enum.StrEnum):
    # lifecycle of a node
    STARTED = "started"
    REGISTERED = "registered"
    LEFT = "left"
    DONE = "done"
    RETRY = "retry"            # a transient failure (node, store unreachable); will retry with back-off
    REVERT = "revert"          # a transaction raced another node or a window; state is re-read
    DECISION = "decision"      # a recorded decision about one item (message, model, request)
    FAILED = "failed"          # a permanent failure: the node stops with a message for a person
    RESOURCES = "resources"    # when the loop ends: CPU seconds (process, user + system) and wall time
    # initiator
    PUBLISHED = "published"
    MODEL_RECEIVED = "model-received"
    DISPUTED = "disputed"
    FUSED = "fused"
    CLOSED = "closed"
    # contributor
    TRAINED = "trained"
    ANNOUNCED = "announced"
    DRAWN = "drawn"
    ANSWERED = "answered"
    DELIVERED = "delivered"
    # verifier
    REQUESTED = "requested"
    EVALUATED = "evaluated"
    COMMITTED = "committed"
    REVEALED = "revealed"
    SETTLED = "settled"
    # any role
    FINALIZED = "finalized"
    WITHDRAWN = "withdrawn"


class LogRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    t: float = Field(description="wall-clock time (unix seconds)")
    role: Role
    node: str = ""
    event: LogEvent
    task: int | None = None
    model: int | None = None
    fields: dict[str, Any] = Field(default_factory=dict)
    human: str = ""

    def text(self) -> str:
        where = f" task {self.task}" if self.task is not None else ""
        where += f" model {self.model}" if self.model is not None else ""
        extra = " ".join(f"{k}={v}" for k, v in self.fields.items())
        stamp = time.strftime("%H:%M:%S", time.localtime(self.t))
        return f"{stamp} {self.node or self.role}: {self.event.value}{where}" + (f" {extra}" if extra else "") \
            + (f" — {self.human}" if self.human else "")


Sink = Callable[[LogRecord], None]


class EventLog:
    """Emits LogRecords to a sink; `json_lines(stream)` and `text_lines(stream)` are the two sinks."""

    def __init__(self, role: Role, node: str = "", sink: Sink | None = None) -> None:
        self.role = role
        self.node = node
        self.sink = sink or json_lines(sys.stdout)
        self.task: int | None = None

    def __call__(self, event: LogEvent, *, model: int | None = None, human: str = "", **fields: Any) -> LogRecord:
        rec = LogRecord(t=round(time.time(), 3), role=self.role, node=self.node, event=event, task=self.task,
                        model=model, fields={k: _plain(v) for k, v in fields.items()}, human=human)
        self.sink(rec)
        return rec


def _plain(v: Any) -> Any:
    if isinstance(v, enum.Enum):
        return v.name if isinstance(v, enum.IntEnum) else v.value
    if isinstance(v, bytes):
        return "0x" + v.hex()
    if isinstance(v, float):
        return round(v, 6)
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    return v


def json_lines(stream: IO[str]) -> Sink:
    lock = threading.Lock()

    def sink(rec: LogRecord) -> None:
        with lock:
            stream.write(rec.model_dump_json() + "\n")
            stream.flush()
    return sink


def text_lines(stream: IO[str]) -> Sink:
    lock = threading.Lock()

    def sink(rec: LogRecord) -> None:
        with lock:
            stream.write(rec.text() + "\n")
            stream.flush()
    return sink


def parse_record(line: str) -> LogRecord | None:
    """A LogRecord from one JSON line, or None for anything else (e.g. a library's stray print)."""
    try:
        return LogRecord.model_validate(json.loads(line))
    except (ValueError, TypeError):
        return None

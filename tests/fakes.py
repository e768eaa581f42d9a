"""Real record types with test defaults, for agents unit-tested against fake chain clients.

Importable from any test file (`from fakes import model_info`): pytest puts `tests/` on the path
for its conftest.py. A fake built on the real dataclass keeps up with the fields and properties
the production code reads; a hand-built namespace silently misses a new one."""

from __future__ import annotations

from typing import Any

from coopml.chain import ModelStatus
from coopml.chain.client import ModelInfo


def model_info(**fields: Any) -> ModelInfo:
    """A `ModelInfo` of task 1, verifying, with every count and deadline 0 unless given."""
    counts = ("commits", "draw_block", "pool_snapshot", "verify_deadline", "reveal_deadline", "reveals", "approve",
              "reject", "abstain", "dispute_votes", "mismatch_votes", "delivery_deadline", "dispute_deadline",
              "response_deadline")
    base: dict[str, Any] = {"model_id": 1, "task_id": 1, "contributor": "0x" + "00" * 20,
                            "status": ModelStatus.VERIFYING, "envelope_hash": b"", "key_commitment": b"",
                            "sealed_key_hash": b"", "cid": "", **dict.fromkeys(counts, 0)}
    return ModelInfo(**(base | fields))

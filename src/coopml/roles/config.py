"""Role configuration (pydantic): validated from CLI flags or a JSON file, with clear errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from coopml.errors import CoopmlError


class ConfigError(CoopmlError):
    """A role configuration is missing, unreadable or invalid."""


class NodeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    chain: str = Field(description="JSON-RPC URL of the chain node (127.0.0.1)")
    contract: str = Field(description="address of the deployed CoopML contract")
    from_block: int = Field(0, ge=0, description="first block to read events from: the contract's "
                            "deployment block (0 reads from genesis, slow on a long chain)")
    store: str = Field(description="storage spec: a directory, local:/dir or http://127.0.0.1:5001")
    key: str = Field(repr=False, description="hex private key of this node's Ethereum account")
    workdir: Path
    poll_interval: float = Field(0.3, gt=0, le=60)
    timeout: float = Field(600, gt=0, description="give up after this many seconds")
    dataset: str = "mnist"
    seed: int = 0

    @field_validator("contract")
    @classmethod
    def _address(cls, v: str) -> str:
        if not (v.startswith("0x") and len(v) == 42):
            raise ValueError(f"not an Ethereum address: {v!r}")
        int(v, 16)
        return v

    @field_validator("key")
    @classmethod
    def _key(cls, v: str) -> str:
        body = v[2:] if v.startswith("0x") else v
        if len(body) != 64:
            raise ValueError("private key must be 32 bytes of hex")
        int(body, 16)
        return "0x" + body


class InitiatorConfig(NodeConfig):
    labels: list[int] = Field(default_factory=lambda: list(range(10)))
    n_train: int = Field(1000, ge=10)          # initiator's own data, used to train the MetaModel
    n_verify: int = Field(1000, ge=10)         # verification data sealed to the verifiers
    arch: str = "table4"
    reward_wei: int = Field(10**18, ge=0)
    verifier_fee_wei: int = Field(10**17, ge=0)
    contributor_deposit_wei: int = Field(10**17, ge=0)
    verifier_deposit_wei: int = Field(10**17, ge=0)
    max_models: int = Field(3, ge=1, le=1000)
    verifiers_per_model: int = Field(3, ge=1, le=99)
    announce_window: int = Field(600, ge=1)    # seconds from publication
    commit_window: int = Field(180, ge=1)      # per model: verification must fit in it
    reveal_window: int = Field(30, ge=1)
    release_window: int = Field(120, ge=1)
    min_accuracy: float = Field(0.9, ge=0, le=1)
    strategy: Literal["I", "II"] = "II"
    fusion_epochs: int = Field(30, ge=1)
    fusion_augment: int = Field(8, ge=0)        # distorted copies of the initiator's images (docs/fusion.md)
    he_p: int = Field(2**7, ge=2)
    close_when_models: int | None = Field(None, ge=1)  # close early once this many models are settled
    report_dir: Path | None = None

    @field_validator("verifiers_per_model")
    @classmethod
    def _odd(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError("verifiers_per_model must be odd so a majority always exists")
        return v


# All but "honest" are misbehaviours for tests and scenarios. A contributor may upload random
# weights, re-sell a released model ("copy"), upload a malformed package ("garbage"), or never
# release the key of its approved model ("withhold"); a verifier may vote against its finding
# ("flip") or never reveal its vote ("silent").
ContributorBehaviour = Literal["honest", "random", "copy", "garbage", "withhold"]
VerifierBehaviour = Literal["honest", "flip", "silent"]


class ContributorConfig(NodeConfig):
    task_id: int = Field(ge=1)
    slot: int = Field(1, ge=1, le=7)               # which private data slice this node holds
    labels: list[int] = Field(min_length=1, max_length=10)
    n_train: int = Field(1000, ge=10)
    n_val: int = Field(1000, ge=10)
    epochs: int = Field(30, ge=1)
    behaviour: ContributorBehaviour = "honest"


class VerifierConfig(NodeConfig):
    task_id: int = Field(ge=1)
    behaviour: VerifierBehaviour = "honest"


def load_config(cls: type[NodeConfig], path: Path | None = None, **overrides: object) -> NodeConfig:
    data: dict = {}
    if path is not None:
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such config file") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a JSON object")
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        msgs = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in exc.errors()[:4])
        raise ConfigError(f"invalid {cls.__name__}: {msgs}") from None

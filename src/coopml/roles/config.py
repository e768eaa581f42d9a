"""Role configuration (pydantic): validated from a JSON file plus command-line overrides, with clear errors.

No private key ever appears in a config: a node names an encrypted keystore file (eth-account,
scrypt) and where its password comes from (an environment variable or a 0600 file).
Generated reference: docs/config-reference.md (`coopml config-reference`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from coopml.chain.accounts import PASSWORD_ENV
from coopml.data import DatasetRef
from coopml.errors import CoopmlError
from coopml.models import ARCHITECTURES, TrainConfig
from coopml.roles.task import SpendingLimits


class ConfigError(CoopmlError):
    """A role configuration is missing, unreadable or invalid."""


class AccountRef(BaseModel):
    """Which Ethereum account signs for the node: an encrypted keystore file and its password source."""

    model_config = ConfigDict(extra="forbid")

    keystore: Path = Field(description="eth-account keystore JSON file (`coopml account new`)")
    password_env: str | None = Field(PASSWORD_ENV, description="environment variable holding the password")
    password_file: Path | None = Field(None, description="file holding the password (mode 0600); "
                                       "takes precedence over password_env")


class NodeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    chain: str = Field(description="JSON-RPC URL of the chain node, e.g. http://127.0.0.1:8545")
    chain_ws: str | None = Field(None, description="the node's websocket endpoint, which pushes new block headers "
                                 "so an idle node asks nothing (geth: ws://host:8546); default: the `chain` URL's "
                                 "own host and port (anvil serves both there); `none`: poll over HTTP. The same node "
                                 "as `chain`, or one trusted as much: deadlines are judged on its heads' timestamps")
    contract: str = Field(description="address of the deployed CoopML contract (checked before any payment)")
    from_block: int = Field(0, ge=0, description="first block to read events from: the contract's deployment "
                            "block (`coopml deploy` prints it)")
    confirmations: int = Field(0, ge=0, le=1000, description="act on an event only once it is this many blocks "
                               "deep (0 on dev chains; a few on a public chain)")
    store: str = Field(description="content store: a directory, local:/dir, or http://127.0.0.1:5001 (IPFS RPC)")
    workdir: Path = Field(description="this node's private working directory for ONE task (state, secrets, models)")
    account: AccountRef
    limits: SpendingLimits = SpendingLimits()
    log_format: Literal["json", "text"] = Field("text", description="json: one LogRecord per line (for programs)")

    @field_validator("chain_ws")
    @classmethod
    def _websocket(cls, v: str | None) -> str | None:
        if v is not None and v != "none" and not v.startswith(("ws://", "wss://")):
            raise ValueError(f"not a websocket URL (ws:// or wss://) nor 'none': {v!r}")
        return v

    @field_validator("contract")
    @classmethod
    def _address(cls, v: str) -> str:
        if not (v.startswith("0x") and len(v) == 42):
            raise ValueError(f"not an Ethereum address: {v!r}")
        int(v, 16)
        return v


class ModelSource(BaseModel):
    """A model, without editing coopml (a contributor's, or the initiator's own): exactly one of arch / factory / onnx."""

    model_config = ConfigDict(extra="forbid")

    arch: str | None = Field(None, description="a registered architecture name (`coopml archs`)")
    factory: str | None = Field(None, description="import path `package.module:function` returning a torch "
                                "nn.Module (your own code, run only on your node)")
    python_path: Path | None = Field(None, description="directory added to sys.path to import `factory`")
    onnx: Path | None = Field(None, description="a trained ONNX model (plaintext verification mode only)")
    feature_layer: str | None = Field(None, description="module name whose output are the penultimate features "
                                      "(factory models); registered archs know theirs")

    @model_validator(mode="after")
    def _one(self) -> ModelSource:
        given = [n for n in ("arch", "factory", "onnx") if getattr(self, n)]
        if len(given) != 1:
            raise ValueError(f"give exactly one of arch, factory, onnx (got {given or 'none'})")
        return self


def default_own_train(is_image: bool, seed: int = 0) -> TrainConfig:
    """How the initiator's own model is trained unless its config says otherwise: Case Study II's
    recipe (chosen on a holdout, docs/fusion.md) at the live preset's budget -- early-stopped on
    the fusion's validation split, augmented images where the inputs are images, then refit on
    all the initiator's data."""
    return TrainConfig(max_epochs=30, patience=5, augment=is_image, refit_on_all=True, seed=seed)


class InitiatorConfig(NodeConfig):
    manifest: str = Field(description="task manifest: a JSON file path or a built-in name (`coopml manifests`)")
    data: DatasetRef = Field(description="the initiator's own labelled data: trains the MetaModel's fusion head")
    test_data: DatasetRef | None = Field(None, description="optional held-out data to report MetaModel accuracy")
    audit_data: DatasetRef | None = Field(None, description="public audit images published with the task (their "
                                          "outputs bind what verifiers evaluated to what is delivered)")
    n_audit: int = Field(64, ge=0, le=4096)
    val_fraction: float = Field(0.5, gt=0, lt=1)
    fusion_epochs: int = Field(30, ge=1, description="epochs of a fusion fit from scratch (early-stopped); "
                               "a warm-started refit after a new model gets half")
    fusion_augment: int = Field(4, ge=0, description="augmented copies of the initiator's images for fusion "
                                "(image tasks only)")
    close_when_models: int | None = Field(None, ge=1, description="close the task once this many models are settled")
    own_model: ModelSource | None = Field(None, description="a model of the initiator's own (a registered `arch`), "
                                          "trained on its data and fused as one more all-label member, so the "
                                          "MetaModel is never built without what the initiator could do alone "
                                          "(docs/fusion.md, Case Study II)")
    own_train: TrainConfig | None = Field(None, description="how `own_model` is trained; default: up to 30 "
                                          "epochs early-stopped (patience 5) on the fusion's validation split, "
                                          "augmented images on image tasks, then refit on all the initiator's data "
                                          "(`own_train_config`; Case Study II's recipe)")
    seed: int = 0

    def own_train_config(self, is_image: bool) -> TrainConfig:
        """`own_train`, or the default recipe (`default_own_train`)."""
        return self.own_train if self.own_train is not None else default_own_train(is_image, self.seed)

    @model_validator(mode="after")
    def _own_model_trainable(self) -> InitiatorConfig:
        # a registered arch: the MetaModel file stores torch members by architecture name, never code
        if self.own_model is not None and self.own_model.arch is None:
            raise ValueError("own_model must be a registered `arch` (trained here, stored by name in the MetaModel "
                             "file); a factory or ONNX model is not supported there")
        # checked here, not when the fusion job first builds it (a bad name would only fail there, again and again)
        if self.own_model is not None and self.own_model.arch not in ARCHITECTURES:
            raise ValueError(f"own_model: {self.own_model.arch!r} is not a registered architecture (`coopml archs`)")
        return self


class ContributorConfig(NodeConfig):
    task_id: int = Field(ge=1)
    data: DatasetRef = Field(description="this contributor's private labelled training data")
    val_fraction: float = Field(0.5, gt=0, lt=1, description="held out for early stopping")
    model: ModelSource
    train: TrainConfig = TrainConfig(max_epochs=30, patience=5)
    labels: list[int] | None = Field(None, description="classes to declare; default: the classes in the data")


class VerifierConfig(NodeConfig):
    task_id: int = Field(ge=1)
    data: DatasetRef = Field(description="this verifier's own labelled verification images (never leave the node)")
    seed: int | None = Field(None, description="fix the query shuffle (tests); None: fresh randomness")


def load_config(cls: type[NodeConfig], path: Path | None = None, **overrides: object) -> NodeConfig:
    data: dict[str, object] = {}
    if path is not None:
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such config file") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a JSON object")
        if "key" in data:
            raise ConfigError(f"{path}: raw private keys are not accepted in configs; create an encrypted "
                              "keystore with `coopml account import` and name it under account.keystore")
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        msgs = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in exc.errors()[:4])
        raise ConfigError(f"invalid {cls.__name__}{f' in {path}' if path else ''}: {msgs}") from None

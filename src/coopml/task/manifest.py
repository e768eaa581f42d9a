"""The task as data: a versioned manifest, stored content-addressed and committed on-chain.

An initiator writes a manifest (input shape and preprocessing, class names, acceptance criterion,
verification mode and parameters, economics and windows), stores it (its CID goes in the
TaskPublished event) and publishes its sha256 with the task. Every agent reads the manifest from
the chain and the store, checks the hash and that the on-chain terms say the same as the manifest,
and takes everything about the task from it: nothing about a task is a constant in the code.

Manifests are canonical JSON (sorted keys, no whitespace), so the same manifest always has the
same hash. The paper's tasks ship with the package (`coopml.task.builtin_manifest`).
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from coopml.data import InputSpec
from coopml.errors import CoopmlError

MANIFEST_FORMAT: Final = "coopml-task"
MANIFEST_VERSION: Final = 1
MAX_MANIFEST_BYTES = 1 << 20


class ManifestError(CoopmlError):
    """A task manifest is malformed, of an unknown version, or disagrees with the chain."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Criterion(_Strict):
    """When a verifier approves a model (all must hold)."""

    min_accuracy: float = Field(0.85, ge=0, le=1, description="accuracy of the model's own predictions on the "
                                "verifier's images of the classes the model declares")
    min_labels: int = Field(1, ge=1, description="a model must declare at least this many classes")
    min_gain: float = Field(0.05, ge=-1, le=1, description="the paper's value test: fusing the model with the "
                            "models this verifier already evaluated must raise the fused accuracy (a ridge head on "
                            "their class scores) on the "
                            "verifier's held-out images by at least this much (negative: no value test)")


class Verification(_Strict):
    """How verifiers judge a model without the contributor revealing it."""

    mode: Literal["ckks", "plaintext", "ivhe-insecure"] = Field(
        "ckks", description="ckks: each verifier encrypts its images under its own CKKS key, the contributor "
        "evaluates its model on them and returns encrypted outputs (confidential: nobody sees the other's "
        "secrets). plaintext: the model's key is sealed to each drawn verifier, who runs it in the clear "
        "(TRUSTS THE VERIFIERS with the model). ivhe-insecure: the paper's scheme, to reproduce it, NOT "
        "CONFIDENTIAL: the contributor encrypts its first layer under the initiator's IVHE key, the verifier "
        "evaluates it and asks the INITIATOR TO DECRYPT the outputs; the initiator is a decryption oracle a "
        "verifier can use to read the model's weights, and it can lie about or withhold any decryption "
        "(docs/threat-model.md)")
    queries: int = Field(1000, ge=10, le=100_000, description="images each verifier evaluates a model on")
    max_queries: int = Field(1100, ge=10, le=100_000, description="contributors refuse larger requests and "
                             "answer one request per drawn verifier and model. In ckks mode the encryption cannot "
                             "enforce less than one ciphertext group: a request's ciphertexts carry the ring's "
                             "capacity (N/2 or N images, at least 1024) whatever count the verifier declares "
                             "(docs/threat-model.md, P8)")
    audit_cid: str | None = Field(None, description="CID of the task's public audit images (npz: x), mixed "
                                  "into every verifier's encrypted queries at secret positions")
    audit_per_request: int = Field(16, ge=0, le=1024)
    poly_modulus_degree: int | None = Field(None, ge=2048, le=16384, description="the largest CKKS ring degree "
                                            "the task's verifiers accept (bounds their encryption work and "
                                            "traffic per model; a contributor whose model needs more is told so "
                                            "before it deposits); None: 16384. The engine always offers the "
                                            "smallest >= 128-bit-secure ring for the model")
    ivhe_public_key_cid: str | None = Field(None, description="ivhe-insecure only: CID of the initiator's IVHE "
                                            "public key (the initiator sets it when it publishes)")
    ivhe_p: int = Field(128, ge=2, le=1 << 10, description="ivhe-insecure only: weights are scaled by p")
    ivhe_q: int = Field(1000, ge=1, le=1 << 16, description="ivhe-insecure only: inputs are scaled by q")

    @model_validator(mode="after")
    def _sizes(self) -> Verification:
        if self.queries + self.audit_per_request > self.max_queries:
            raise ValueError("queries + audit_per_request must not exceed max_queries")
        return self


class Economics(_Strict):
    reward_wei: int = Field(10**18, ge=0, description="paid per bought model")
    verifier_fee_wei: int = Field(10**17, ge=0, description="paid per drawn verifier per model, for a revealed vote")
    contributor_deposit_wei: int = Field(10**17, gt=0)
    verifier_deposit_wei: int = Field(10**17, gt=0)
    max_models: int = Field(3, ge=1, le=10_000)
    verifiers_per_model: int = Field(3, ge=1, le=99)

    @model_validator(mode="after")
    def _odd(self) -> Economics:
        if self.verifiers_per_model % 2 == 0:
            raise ValueError("verifiers_per_model must be odd so that a majority always exists")
        return self

    @property
    def escrow_wei(self) -> int:
        return self.max_models * (self.reward_wei + self.verifiers_per_model * self.verifier_fee_wei)


class Windows(_Strict):
    """Seconds of chain time (the contract bounds each window to 30 days, announcing to 90 days)."""

    announce_s: int = Field(3600, ge=1, le=90 * 86400, description="from publication until announcements close")
    verify_s: int = Field(600, ge=1, le=30 * 86400, description="from the draw: evaluate and commit a vote")
    reveal_s: int = Field(120, ge=1, le=30 * 86400)
    delivery_s: int = Field(300, ge=1, le=30 * 86400, description="after approval: deliver the key to the buyer")
    dispute_s: int = Field(300, ge=1, le=30 * 86400, description="after delivery: the buyer may dispute")


ModelFormat = Literal["onnx", "safetensors"]


def _default_formats() -> list[ModelFormat]:
    return ["safetensors", "onnx"]


class ModelRequirements(_Strict):
    arch: str | None = Field(None, description="suggested architecture (a registered name); contributors may "
                             "bring their own model as long as the verification mode can evaluate it")
    formats: list[ModelFormat] = Field(default_factory=_default_formats,
                                       description="how a bought model may be delivered")


class FusionSpec(_Strict):
    strategy: Literal["I", "II"] = "II"


class TaskManifest(_Strict):
    format: Literal["coopml-task"] = MANIFEST_FORMAT
    version: Literal[1] = MANIFEST_VERSION
    name: str = Field(min_length=1, max_length=200)
    description: str = Field("", max_length=10_000)
    input: InputSpec
    criterion: Criterion = Criterion()
    verification: Verification = Verification()
    economics: Economics = Economics()
    windows: Windows = Windows()
    model: ModelRequirements = ModelRequirements()
    fusion: FusionSpec = FusionSpec()

    # ------------------------------------------------------------------ bytes

    def to_bytes(self) -> bytes:
        """Canonical JSON: the bytes that are stored and hashed."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":")).encode()

    def sha256(self) -> bytes:
        return hashlib.sha256(self.to_bytes()).digest()

    @classmethod
    def from_bytes(cls, data: bytes, where: str = "task manifest") -> TaskManifest:
        if len(data) > MAX_MANIFEST_BYTES:
            raise ManifestError(f"{where}: {len(data)} bytes, more than the {MAX_MANIFEST_BYTES} allowed")
        try:
            raw = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ManifestError(f"{where}: not JSON ({exc})") from None
        if not isinstance(raw, dict):
            raise ManifestError(f"{where}: expected a JSON object")
        if raw.get("format") != MANIFEST_FORMAT:
            raise ManifestError(f"{where}: not a coopml task manifest (format={raw.get('format')!r})")
        if raw.get("version") != MANIFEST_VERSION:
            raise ManifestError(f"{where}: manifest version {raw.get('version')!r} is not supported "
                                f"(this coopml reads version {MANIFEST_VERSION})")
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            msgs = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:4])
            raise ManifestError(f"{where}: {msgs}") from None

    @classmethod
    def from_file(cls, path: str) -> TaskManifest:
        from pathlib import Path
        p = Path(path)
        if not p.is_file():
            raise ManifestError(f"{path}: no such manifest file")
        return cls.from_bytes(p.read_bytes(), where=str(path))

    def replace(self, **changes: object) -> TaskManifest:
        """A copy with top-level sections replaced (validated again)."""
        return type(self).model_validate({**self.model_dump(), **changes})


def builtin_names() -> list[str]:
    return sorted(p.name.removesuffix(".json") for p in resources.files("coopml.task.manifests").iterdir()
                  if p.name.endswith(".json"))


def builtin_manifest(name: str) -> TaskManifest:
    """A manifest shipped with coopml (the paper's tasks)."""
    if name not in builtin_names():
        raise ManifestError(f"no built-in manifest {name!r}; built-in: {', '.join(builtin_names())}")
    data = resources.files("coopml.task.manifests").joinpath(f"{name}.json").read_bytes()
    return TaskManifest.from_bytes(data, where=f"built-in manifest {name}")

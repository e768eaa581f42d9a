"""Model files: safetensors weights + a JSON manifest (architecture, labels, sha256).

Safetensors holds only tensors, so loading a file from an untrusted peer can never run code.
The manifest is also embedded in the safetensors header metadata, so a single blob (as sent
through storage) is self-describing; the sidecar JSON adds the file hash for at-rest checks.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from pydantic import BaseModel, Field, ValidationError, field_validator
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from coopml.data.spec import MNIST_INPUT, InputSpec
from coopml.errors import ModelFileError
from coopml.models.architectures import FeatureModel
from coopml.models.registry import architecture_names, build_architecture
from coopml.paths import write_private

FORMAT = "coopml-model/1"


class ModelManifest(BaseModel):
    format: str = FORMAT
    arch: str
    labels: list[int] = Field(min_length=1)   # class ids of the task's InputSpec (checked on load)
    sha256: str | None = None  # of the safetensors bytes; absent inside the embedded copy

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, v: str) -> str:
        if v not in architecture_names():
            raise ValueError(f"unknown architecture {v!r}; known: {', '.join(architecture_names())}")
        return v

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: list[int]) -> list[int]:
        if any(c < 0 for c in v) or len(set(v)) != len(v):
            raise ValueError(f"labels must be distinct class ids >= 0, got {v}")
        return sorted(v)


def model_to_bytes(model: FeatureModel, labels: list[int] | tuple[int, ...]) -> bytes:
    manifest = ModelManifest(arch=model.arch, labels=list(labels))
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    return st_save(state, metadata={"coopml": manifest.model_dump_json(exclude={"sha256"})})


def _parse_manifest(text: str, where: str) -> ModelManifest:
    try:
        m = ModelManifest.model_validate_json(text)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ModelFileError(f"{where}: bad manifest: {first['msg']} (at {'.'.join(map(str, first['loc']))})") from None
    if m.format != FORMAT:
        raise ModelFileError(f"{where}: unsupported format {m.format!r}, expected {FORMAT!r}")
    return m


def safetensors_metadata(data: bytes, where: str) -> dict[str, str]:
    """The `__metadata__` strings of a safetensors blob's header ({} if it has none), read without
    loading a tensor; ModelFileError naming `where` if the blob is not safetensors."""
    # safetensors layout: u64 little-endian header length, then a JSON header.
    if len(data) < 8:
        raise ModelFileError(f"{where}: not a safetensors file (too short)")
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8:
        raise ModelFileError(f"{where}: not a safetensors file (header length {n} exceeds file)")
    try:
        header = json.loads(data[8:8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ModelFileError(f"{where}: not a safetensors file (header is not JSON)") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return meta if isinstance(meta, dict) else {}


def model_from_bytes(data: bytes, where: str = "<bytes>", spec: InputSpec | None = None) -> tuple[FeatureModel, ModelManifest]:
    """Rebuild a model from a safetensors blob for the task's `spec` (default MNIST's); rejects
    unknown architectures, labels outside the spec's classes and shape mismatches."""
    meta = safetensors_metadata(data, where)
    if "coopml" not in meta:
        raise ModelFileError(f"{where}: safetensors file has no coopml manifest in its metadata")
    manifest = _parse_manifest(meta["coopml"], where)
    classes = (spec or MNIST_INPUT).num_classes
    if manifest.labels[-1] >= classes:
        raise ModelFileError(f"{where}: labels {manifest.labels} outside the task's {classes} classes")
    try:
        state = st_load(data)
    except SafetensorError as exc:
        raise ModelFileError(f"{where}: corrupt safetensors data ({exc})") from None
    model = build_architecture(manifest.arch, spec)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ModelFileError(f"{where}: tensors do not match architecture {manifest.arch}: "
                             f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise ModelFileError(f"{where}: tensor {name} has shape {tuple(tensor.shape)}, "
                                 f"architecture {manifest.arch} needs {tuple(expected[name].shape)}")
        if tensor.dtype != expected[name].dtype:
            raise ModelFileError(f"{where}: tensor {name} has dtype {tensor.dtype}, expected {expected[name].dtype}")
        if not torch.isfinite(tensor).all():
            raise ModelFileError(f"{where}: tensor {name} contains NaN or infinity")
    model.load_state_dict(state)
    model.labels = tuple(manifest.labels)
    model.eval()
    return model, manifest


def save_model(model: FeatureModel, path: str | Path, labels: list[int] | tuple[int, ...],
               mode: int = 0o600) -> ModelManifest:
    """Write `path` (safetensors) and `path`.json (manifest with the file's sha256), atomically.
    Owner-only by default: plaintext weights are what a contributor sells."""
    path = Path(path)
    data = model_to_bytes(model, labels)
    manifest = ModelManifest(arch=model.arch, labels=list(labels), sha256=hashlib.sha256(data).hexdigest())
    write_private(path, data, mode=mode)
    write_private(manifest_path(path), manifest.model_dump_json(indent=2), mode=mode)
    return manifest


def manifest_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def load_model(path: str | Path, spec: InputSpec | None = None) -> tuple[FeatureModel, ModelManifest]:
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file")
    data = path.read_bytes()
    mpath = manifest_path(path)
    if mpath.is_file():
        sidecar = _parse_manifest(mpath.read_text(), str(mpath))
        digest = hashlib.sha256(data).hexdigest()
        if sidecar.sha256 and sidecar.sha256 != digest:
            raise ModelFileError(f"{path}: sha256 {digest} does not match manifest {sidecar.sha256}; file was modified")
    model, manifest = model_from_bytes(data, str(path), spec)
    if mpath.is_file() and (sidecar.arch, sidecar.labels) != (manifest.arch, manifest.labels):
        raise ModelFileError(f"{path}: sidecar manifest disagrees with the embedded one")
    return model, manifest

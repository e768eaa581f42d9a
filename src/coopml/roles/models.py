"""A contributor's model as the roles handle it: built from its source, kept on disk, delivered, received.

Sources (ModelSource): a registered architecture, the contributor's own factory given by import
path (its own code, run only on its own node), or a trained ONNX file. What crosses to another
node is never code: a registered architecture travels as safetensors + its name, anything else as
an ONNX graph with `logits` and `features` outputs, checked before onnxruntime runs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load_file
from safetensors.torch import save as st_save

from coopml.data import InputSpec
from coopml.errors import ModelFileError
from coopml.models import (
    FeatureModel,
    OnnxFeatureModel,
    build_model,
    build_user_model,
    export_onnx,
    load_model,
    load_onnx_model,
    save_model,
)
from coopml.models.io import model_from_bytes, model_to_bytes
from coopml.paths import write_private
from coopml.roles.config import ModelSource
from coopml.roles.package import PackageHeader


@dataclass
class ModelRecord:
    model: torch.nn.Module
    labels: list[int]
    source: ModelSource
    spec: InputSpec


def build_trainable(source: ModelSource, spec: InputSpec) -> torch.nn.Module:
    if source.arch:
        return build_model(source.arch, spec=spec)
    if source.factory:
        if not source.feature_layer:
            raise ModelFileError("a factory model needs `feature_layer`: the module whose output fusion uses")
        return build_user_model(source.factory, spec, feature_layer=source.feature_layer,
                                search_path=source.python_path)
    assert source.onnx is not None
    return load_onnx_model(source.onnx, spec)


def _registered(record: ModelRecord) -> FeatureModel:
    """The model of a record built from a registered architecture: always a FeatureModel."""
    if not isinstance(record.model, FeatureModel):
        raise ModelFileError(f"a model of architecture {record.source.arch!r} must be a FeatureModel, "
                             f"got {type(record.model).__name__}")
    return record.model


def save_record(record: ModelRecord, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    src = record.source
    if src.arch:
        save_model(_registered(record), directory / "model.safetensors", record.labels)
    elif src.factory:
        write_private(directory / "weights.safetensors",
                      st_save({k: v.contiguous() for k, v in record.model.state_dict().items()}))
    write_private(directory / "labels.txt", ",".join(map(str, record.labels)))


def load_record(directory: Path, source: ModelSource, spec: InputSpec) -> ModelRecord:
    labels = [int(x) for x in (directory / "labels.txt").read_text().split(",") if x]
    model: torch.nn.Module
    if source.arch:
        model, _ = load_model(directory / "model.safetensors", spec)
    elif source.factory:
        model = build_trainable(source, spec)
        model.load_state_dict(load_file(directory / "weights.safetensors"))
    else:
        model = build_trainable(source, spec)
    model.eval()
    return ModelRecord(model, labels, source, spec)


def model_bytes_for_delivery(record: ModelRecord) -> tuple[bytes, Literal["safetensors", "onnx"], str | None, str | None]:
    """(bytes, format, arch, feature output) of what the buyer receives: never code."""
    src = record.source
    if src.arch:
        return model_to_bytes(_registered(record), record.labels), "safetensors", src.arch, None
    if src.onnx:
        return Path(src.onnx).read_bytes(), "onnx", None, "features"
    return export_onnx(record.model, record.spec, labels=record.labels), "onnx", None, "features"


def load_delivered(header: PackageHeader, body: bytes, spec: InputSpec) -> torch.nn.Module:
    """A model received from another node: tensors into a registered architecture, or a checked ONNX graph."""
    if header.format == "safetensors":
        model, manifest = model_from_bytes(body, "delivered model", spec)
        if manifest.arch != header.arch:
            raise ModelFileError(f"package says architecture {header.arch}, the model file says {manifest.arch}")
        model.eval()
        return model
    return OnnxFeatureModel(body, spec, labels=header.labels, where="delivered model")

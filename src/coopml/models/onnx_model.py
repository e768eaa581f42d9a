"""Models as ONNX files: export with two outputs (logits, features), and load without trust.

Export uses torch's TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``): the
torch.export-based ("dynamo") exporter, the default since torch 2.9, needs the onnxscript package,
which is not part of our stack. The export is traced, so after exporting we check that
onnxruntime reproduces torch's logits and features on a random batch (a model whose forward
branches on data would otherwise be exported for one branch only).

Loading an ONNX model received from another node executes none of the sender's code: the file
is data interpreted by onnxruntime's kernels. Before a session is created, `validate_onnx`
refuses what could reach outside those kernels or outside the task: oversized files, external
data files (a path the sender picks), custom operator domains and model-local functions (custom
ops would need a native library; we never register one), unknown or unbounded-loop operators,
opsets outside the allowed range, and inputs/outputs that do not fit the task's InputSpec.
"""

from __future__ import annotations

import copy
import hashlib
import json
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from coopml.data.spec import InputSpec
from coopml.errors import ModelDefinitionError, ModelFileError
from coopml.models.architectures import FeatureModel
from coopml.models.members import HookedFeatureModel, check_labels
from coopml.paths import write_private

INPUT_NAME = "input"
OUTPUT_NAMES = ("logits", "features")
DEFAULT_OPSET = 17
META_LABELS = "coopml.labels"
META_SPEC = "coopml.input_spec_sha256"
_DEFAULT_DOMAINS = ("", "ai.onnx")


class OnnxLimits(BaseModel):
    """What a received ONNX model may be. Loop/Scan are refused: a sender-chosen trip count
    could keep a verifier busy forever; feature extractors do not need them."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    max_bytes: int = Field(256 * 2**20, ge=1)
    min_opset: int = Field(13, ge=1)
    max_opset: int = Field(21, ge=1)
    max_nodes: int = Field(100_000, ge=1)
    forbidden_ops: frozenset[str] = frozenset({"Loop", "Scan"})


# -- export --------------------------------------------------------------------------------------

class _LogitsAndFeatures(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return logits_and_features(self.model, x)


def logits_and_features(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, features) in one pass for a FeatureModel or HookedFeatureModel."""
    if isinstance(model, HookedFeatureModel):
        return model.logits_and_features(x)
    if isinstance(model, FeatureModel):
        f = model.features(x)
        return model.head(f), f.flatten(1)
    raise ModelDefinitionError(f"cannot export a {type(model).__name__}: wrap it in HookedFeatureModel with its "
                               f"feature layer (or build it from a registered architecture)")


def export_onnx(model: nn.Module, spec: InputSpec, *, labels: Sequence[int] | None = None,
                opset: int = DEFAULT_OPSET, path: str | Path | None = None, atol: float = 1e-4) -> bytes:
    """ONNX bytes with input 'input' [batch, *spec.shape] and outputs 'logits', 'features'.

    `labels` (default: the model's own `labels`) and the spec's digest go into the model's
    metadata. With `path`, the bytes are also written there (atomically).
    """
    labels = labels if labels is not None else getattr(model, "labels", None)
    labs = check_labels(labels, spec.num_classes)
    wrapper = _LogitsAndFeatures(model).eval()
    was_training = model.training
    model.eval()
    workdir = tempfile.TemporaryDirectory(prefix="coopml-onnx-")
    out = Path(workdir.name) / "model.onnx"
    try:
        with warnings.catch_warnings():
            # the TorchScript exporter announces its own deprecation; tracer warnings stay visible
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
            warnings.filterwarnings("ignore", message=".*will be removed.*", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.onnx")
            torch.onnx.export(wrapper, (torch.zeros(2, *spec.shape),), out, dynamo=False,
                              input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                              dynamic_axes={n: {0: "batch"} for n in (INPUT_NAME, *OUTPUT_NAMES)},
                              opset_version=opset, do_constant_folding=True)
        exported: bytes = out.read_bytes()
    except ModelDefinitionError:
        raise
    except Exception as exc:
        raise ModelDefinitionError(f"ONNX export of {type(model).__name__} failed: {type(exc).__name__}: {exc}") from exc
    finally:
        model.train(was_training)
        workdir.cleanup()

    import onnx

    proto = onnx.load_from_string(exported)
    meta = {META_SPEC: spec.digest()}
    if labs is not None:
        meta[META_LABELS] = json.dumps(list(labs))
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "coopml"
    data: bytes = proto.SerializeToString()

    # the exported graph must be one we would accept from a peer, and compute what torch computes
    check = OnnxFeatureModel(data, spec, where=f"export of {type(model).__name__}")
    x = torch.rand(4, *spec.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want_logits, want_feats = logits_and_features(model.eval(), x)
    model.train(was_training)
    got_logits, got_feats = check.logits_and_features(x)
    for name, want, got in (("logits", want_logits, got_logits), ("features", want_feats, got_feats)):
        if want.shape != got.shape or not torch.allclose(want, got, atol=atol, rtol=1e-3):
            raise ModelDefinitionError(f"ONNX export of {type(model).__name__}: onnxruntime's {name} differ from "
                                       f"torch's (does forward branch on the input values?)")
    if path is not None:
        write_private(path, data)          # a model's weights: owner-only, like save_model
    return data


# -- validation ----------------------------------------------------------------------------------

def validate_onnx(data: bytes, spec: InputSpec, *, where: str = "<bytes>", limits: OnnxLimits | None = None) -> Any:
    """The parsed onnx.ModelProto, if `data` is a model we are willing to hand to onnxruntime."""
    import onnx
    from google.protobuf.message import DecodeError

    lim = limits or OnnxLimits()
    if len(data) > lim.max_bytes:
        raise ModelFileError(f"{where}: ONNX model is {len(data)} bytes, the limit is {lim.max_bytes}")
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise ModelFileError(f"{where}: not an ONNX model (protobuf parse failed: {exc})") from None
    if not proto.HasField("graph") or not proto.graph.node:
        raise ModelFileError(f"{where}: not an ONNX model (no graph)")
    if len(proto.functions):
        names = [f"{f.domain}::{f.name}" for f in proto.functions]
        raise ModelFileError(f"{where}: defines model-local functions {names[:5]}; only standard operators are accepted")
    default_opset = None
    for imp in proto.opset_import:
        if imp.domain not in _DEFAULT_DOMAINS:
            raise ModelFileError(f"{where}: imports operator domain {imp.domain!r}; only the default ONNX "
                                 f"domain is accepted (no custom operators)")
        default_opset = imp.version
    if default_opset is None:
        raise ModelFileError(f"{where}: declares no default-domain opset")
    if not lim.min_opset <= default_opset <= lim.max_opset:
        raise ModelFileError(f"{where}: opset {default_opset} is outside the accepted {lim.min_opset}..{lim.max_opset}")
    count = _check_graph(proto.graph, where, lim, [0])
    if count > lim.max_nodes:
        raise ModelFileError(f"{where}: {count} nodes, the limit is {lim.max_nodes}")
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:   # ValidationError, InferenceError
        raise ModelFileError(f"{where}: fails the ONNX checker: {str(exc).splitlines()[0] if str(exc) else exc}") from exc
    _check_io(proto.graph, spec, where)
    return proto


def _check_tensor(t: Any, where: str) -> None:
    import onnx

    if t.data_location == onnx.TensorProto.EXTERNAL or len(t.external_data):
        raise ModelFileError(f"{where}: tensor {t.name!r} refers to an external data file; weights must be "
                             f"inside the model")


def _check_graph(graph: Any, where: str, lim: OnnxLimits, count: list[int]) -> int:
    import onnx

    for t in graph.initializer:
        _check_tensor(t, where)
    for st in graph.sparse_initializer:
        _check_tensor(st.values, where)
        _check_tensor(st.indices, where)
    for i, node in enumerate(graph.node):
        count[0] += 1
        label = f"node {node.name or i} ({node.op_type})"
        if node.domain not in _DEFAULT_DOMAINS:
            raise ModelFileError(f"{where}: {label} uses operator domain {node.domain!r}; custom operators are refused")
        if node.op_type in lim.forbidden_ops:
            raise ModelFileError(f"{where}: {label}: operator {node.op_type} is not accepted "
                                 f"(refused: {', '.join(sorted(lim.forbidden_ops))})")
        if not onnx.defs.has(node.op_type, ""):
            raise ModelFileError(f"{where}: {label}: {node.op_type!r} is not a standard ONNX operator")
        for attr in node.attribute:
            if attr.HasField("t"):
                _check_tensor(attr.t, where)
            for t in attr.tensors:
                _check_tensor(t, where)
            if attr.HasField("sparse_tensor"):
                _check_tensor(attr.sparse_tensor.values, where)
            if attr.HasField("g"):
                _check_graph(attr.g, where, lim, count)
            for g in attr.graphs:
                _check_graph(g, where, lim, count)
    return count[0]


def _dims(value_info: Any) -> list[int | None] | None:
    """Dimensions of a float tensor value (None for a symbolic dim); None if not a float tensor."""
    import onnx

    t = value_info.type
    if not t.HasField("tensor_type") or t.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        return None
    if not t.tensor_type.HasField("shape"):
        return []
    return [d.dim_value if d.HasField("dim_value") else None for d in t.tensor_type.shape.dim]


def _check_io(graph: Any, spec: InputSpec, where: str) -> None:
    inits = {t.name for t in graph.initializer}
    inputs = [v for v in graph.input if v.name not in inits]
    if len(inputs) != 1:
        raise ModelFileError(f"{where}: has {len(inputs)} inputs {[v.name for v in inputs]}; expected one image/feature batch")
    dims = _dims(inputs[0])
    want = [None, *spec.shape]
    if dims is None or len(dims) != len(want) or any(d is not None and w is not None and d != w
                                                     for d, w in zip(dims, want)):
        got = "not float32" if dims is None else str(["?" if d is None else d for d in dims])
        raise ModelFileError(f"{where}: input {inputs[0].name!r} is {got}, the InputSpec needs float32 "
                             f"[batch, {', '.join(map(str, spec.shape))}]")
    outputs = {v.name: v for v in graph.output}
    missing = [n for n in OUTPUT_NAMES if n not in outputs]
    if missing:
        raise ModelFileError(f"{where}: missing output(s) {missing}; a coopml ONNX model has outputs "
                             f"'logits' and 'features' (it has {sorted(outputs)})")
    for name in OUTPUT_NAMES:
        d = _dims(outputs[name])
        if d is None or len(d) != 2:
            raise ModelFileError(f"{where}: output {name!r} must be a float32 [batch, n] matrix")
        if name == "logits" and d[1] is not None and d[1] != spec.num_classes:
            raise ModelFileError(f"{where}: output 'logits' has {d[1]} classes, the task has {spec.num_classes}")


# -- the member ----------------------------------------------------------------------------------

class OnnxFeatureModel(nn.Module):
    """A FeatureExtractor backed by an onnxruntime session over a validated ONNX model.

    No trainable parameters (members are frozen during fusion); `onnx_bytes` is the model as
    received, e.g. to store or forward it. Labels come from the argument, else from the model's
    metadata, else all classes; when both are given they must agree.
    """

    def __init__(self, data: bytes, spec: InputSpec, *, labels: Sequence[int] | None = None,
                 where: str = "<bytes>", limits: OnnxLimits | None = None, threads: int = 1,
                 batch_size: int = 512) -> None:
        super().__init__()
        import onnxruntime as ort

        proto = validate_onnx(data, spec, where=where, limits=limits)
        meta = {p.key: p.value for p in proto.metadata_props}
        if META_SPEC in meta and meta[META_SPEC] != spec.digest():
            raise ModelFileError(f"{where}: exported for InputSpec {meta[META_SPEC][:16]}..., this task's is "
                                 f"{spec.digest()[:16]}... (different classes, shape or preprocessing)")
        meta_labels = _meta_labels(meta, spec, where)
        if labels is not None and meta_labels is not None and check_labels(labels, spec.num_classes) != meta_labels:
            raise ModelFileError(f"{where}: labels {sorted(labels)} disagree with the model's metadata {list(meta_labels)}")
        self.labels: tuple[int, ...] | None = check_labels(labels, spec.num_classes) if labels is not None else meta_labels
        self.spec = spec
        self.num_classes = spec.num_classes
        self.arch = "onnx"
        self.onnx_bytes = data
        self.sha256 = hashlib.sha256(data).hexdigest()
        self.batch_size = batch_size
        self._where, self._limits, self._threads = where, limits, threads
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        opts.add_session_config_entry("session.load_model_format", "ONNX")
        try:   # the validated proto, re-serialised: what was checked is what runs
            self._session = ort.InferenceSession(proto.SerializeToString(), sess_options=opts,
                                                 providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ModelFileError(f"{where}: onnxruntime refuses the model: {exc}") from exc
        self.feature_dim = 0
        try:
            logits, feats = self.logits_and_features(torch.zeros(2, *spec.shape))
        except Exception as exc:
            raise ModelFileError(f"{where}: fails on a batch of the InputSpec's shape: {exc}") from exc
        if tuple(logits.shape) != (2, spec.num_classes) or feats.ndim != 2 or feats.shape[0] != 2:
            raise ModelFileError(f"{where}: returns logits {tuple(logits.shape)} and features {tuple(feats.shape)} "
                                 f"for a batch of 2; expected (2, {spec.num_classes}) and (2, D)")
        self.feature_dim = int(feats.shape[1])

    def logits_and_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if tuple(x.shape[1:]) != self.spec.shape:
            raise ModelDefinitionError(f"input batch {tuple(x.shape)} does not match the InputSpec "
                                       f"[N, {', '.join(map(str, self.spec.shape))}]")
        arr = x.detach().to(torch.float32).cpu().contiguous().numpy()
        if len(arr) == 0:
            return torch.zeros(0, self.num_classes), torch.zeros(0, self.feature_dim)
        parts = [self._session.run(list(OUTPUT_NAMES), {INPUT_NAME: arr[i:i + self.batch_size]})
                 for i in range(0, len(arr), self.batch_size)]
        logits = np.concatenate([p[0] for p in parts])
        feats = np.concatenate([p[1] for p in parts])
        return torch.from_numpy(logits), torch.from_numpy(feats)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits_and_features(x)[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits_and_features(x)[0]

    def __deepcopy__(self, memo: dict[int, Any]) -> OnnxFeatureModel:
        # an InferenceSession cannot be copied; a new one over the same bytes is the copy
        return OnnxFeatureModel(self.onnx_bytes, self.spec, labels=self.labels, where=self._where,
                                limits=copy.deepcopy(self._limits, memo), threads=self._threads,
                                batch_size=self.batch_size)


def _meta_labels(meta: dict[str, str], spec: InputSpec, where: str) -> tuple[int, ...] | None:
    if META_LABELS not in meta:
        return None
    try:
        value = json.loads(meta[META_LABELS])
        if not isinstance(value, list) or not all(isinstance(c, int) for c in value):
            raise ValueError("not a list of integers")
        return check_labels(value, spec.num_classes)
    except (ValueError, ModelDefinitionError) as exc:
        raise ModelFileError(f"{where}: metadata {META_LABELS} is not a valid label set: {exc}") from None


def load_onnx_model(path: str | Path, spec: InputSpec, *, sha256: str | None = None,
                    labels: Sequence[int] | None = None, limits: OnnxLimits | None = None) -> OnnxFeatureModel:
    """An ONNX model file (optionally pinned by sha256), validated against `spec`."""
    path = Path(path)
    lim = limits or OnnxLimits()
    try:
        size = path.stat().st_size
    except OSError:
        raise ModelFileError(f"{path}: no such model file") from None
    if size > lim.max_bytes:
        raise ModelFileError(f"{path}: ONNX model is {size} bytes, the limit is {lim.max_bytes}")
    data = path.read_bytes()
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise ModelFileError(f"{path}: sha256 {hashlib.sha256(data).hexdigest()} does not match the pinned {sha256}")
    return OnnxFeatureModel(data, spec, labels=labels, where=str(path), limits=lim)

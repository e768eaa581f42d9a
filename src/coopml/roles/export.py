"""The initiator's MetaModel as files other programs can use: safetensors and one ONNX graph.

`rebuild_metamodel` needs nothing but the MetaModel file the initiator keeps in its workdir
(`coopml.fusion.load_metamodel`): it carries the members (keyed `model-<on-chain id>`, with their
label sets and tensors), the fusion head and the task manifest, hence the InputSpec -- no chain
node, content store or model keys. `metamodel_onnx` writes ONE self-contained ONNX graph: every
member's graph (the members that were delivered as ONNX stay exactly those bytes; registered
architectures are exported) feeding the fusion head, output `scores` [N, classes], with the task's
InputSpec in the metadata so `coopml predict` needs nothing else. The graph is checked against
the torch MetaModel on random inputs before it is written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from coopml.data import InputSpec
from coopml.errors import CoopmlError
from coopml.fusion import MetaModel, TorchMember
from coopml.roles.config import InitiatorConfig

META_INPUT_SPEC = "coopml.input_spec"
SCORES = "scores"


class ExportError(CoopmlError):
    """The MetaModel cannot be rebuilt or exported (nothing bought yet, a missing key, a mismatch)."""


@dataclass
class ExportedMetaModel:
    meta: MetaModel
    spec: InputSpec
    members: list[dict[str, Any]]       # key, model id, labels, kind


def metamodel_path(cfg: InitiatorConfig) -> Path:
    """Where the initiator of `cfg` keeps its MetaModel file."""
    from coopml.roles.fusing import METAMODEL_FILE
    return cfg.workdir / METAMODEL_FILE


def rebuild_metamodel(path: Path) -> ExportedMetaModel:
    """The MetaModel of the file at `path` (every mismatch a ModelFileError), with the InputSpec
    of the task manifest stored in it and one record per member: key, on-chain model id (None
    for a key not of the form `model-<id>`), labels, kind."""
    from coopml.fusion import metamodel_from_bytes, read_manifest
    from coopml.roles.fusing import model_id_of

    if not path.is_file():
        raise ExportError(f"{path}: no MetaModel yet (run `coopml initiator` until it has fused a bought model)")
    data = path.read_bytes()             # one read: the initiator may be rewriting the file
    manifest = read_manifest(data, str(path))
    meta = metamodel_from_bytes(data, str(path))     # checks the digest; rebuilds members, head, norms
    spec = meta.input_spec
    if spec is None:
        raise ExportError(f"{path}: the MetaModel file names no task (no task manifest with an input spec)")
    if tuple(spec.shape) != meta.input_shape or spec.num_classes != meta.num_classes:
        raise ExportError(f"{path}: the task's inputs {list(spec.shape)} / {spec.num_classes} classes do not match "
                          f"the MetaModel's {list(meta.input_shape or ())} / {meta.num_classes}")
    members = [{"model_id": model_id_of(e.key), "key": e.key, "labels": list(e.labels), "kind": e.kind}
               for e in manifest.members]
    meta.eval()
    return ExportedMetaModel(meta, spec, members)


class _Head(nn.Module):
    """The MetaModel after its members: raw member features in, class scores out."""

    def __init__(self, meta: MetaModel, num_classes: int) -> None:
        super().__init__()
        self.meta, self.k = meta, num_classes

    def forward(self, *features: torch.Tensor) -> torch.Tensor:
        fc = torch.cat([f.flatten(1) for f in features], dim=1)
        if self.meta.cfg.feature_activation == "relu":
            fc = torch.relu(fc)
        fc = (fc - self.meta.feat_mean) / self.meta.feat_std
        return self.meta.head(fc)[:, :self.k]


def metamodel_onnx(exported: ExportedMetaModel, opset: int = 17) -> bytes:
    import io

    import onnx
    from onnx import compose, helper

    from coopml.models import export_onnx

    meta, spec = exported.meta, exported.spec
    graphs = []
    for i, m in enumerate(meta.members):
        delivered = getattr(m, "onnx_bytes", None)       # a member delivered as ONNX: exactly those bytes
        if isinstance(delivered, bytes):
            data = delivered
        elif isinstance(m, TorchMember):
            data = export_onnx(m.model, spec, labels=meta.label_sets[i])
        else:
            raise ExportError(f"member {i} ({type(m).__name__}) is neither a torch model nor an ONNX graph")
        g = compose.add_prefix(onnx.load_from_string(data), f"m{i}_")
        graphs.append(g)
    head_io = io.BytesIO()
    feats = [torch.zeros(2, int(getattr(m, "feature_dim"))) for m in meta.members]  # noqa: B009
    head_model = _Head(meta, spec.num_classes).eval()
    torch.onnx.export(head_model, tuple(feats), head_io, dynamo=False,  # type: ignore[arg-type]
                      input_names=[f"m{i}_features" for i in range(len(feats))], output_names=[SCORES],
                      dynamic_axes={n: {0: "batch"} for n in [*(f"m{i}_features" for i in range(len(feats))), SCORES]},
                      opset_version=opset)
    head = compose.add_prefix(onnx.load_from_string(head_io.getvalue()), "head_", rename_inputs=False,
                              rename_outputs=False)
    nodes, inits = [], []
    for i, g in enumerate(graphs):
        for node in g.graph.node:
            node.input[:] = ["input" if x == f"m{i}_input" else x for x in node.input]
        nodes += list(g.graph.node)
        inits += list(g.graph.initializer)
    nodes += list(head.graph.node)
    inits += list(head.graph.initializer)
    graph = helper.make_graph(nodes, "coopml_metamodel", [helper.make_tensor_value_info(
        "input", onnx.TensorProto.FLOAT, ["batch", *spec.shape])], list(head.graph.output), initializer=inits)
    opsets = {o.domain: o.version for g in [*graphs, head] for o in g.opset_import}
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()],
                              producer_name="coopml")
    model.ir_version = max(g.ir_version for g in [*graphs, head])
    helper.set_model_props(model, {META_INPUT_SPEC: spec.model_dump_json(),
                                   "coopml.members": json.dumps(exported.members)})
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    _check_same(exported, data)
    return data


def _check_same(exported: ExportedMetaModel, data: bytes) -> None:
    import onnxruntime as ort
    spec = exported.spec
    x = torch.randn(8, *spec.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = exported.meta(x)[:, :spec.num_classes].numpy()
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    got = sess.run([SCORES], {"input": x.numpy()})[0]
    if not np.allclose(got, want, rtol=1e-3, atol=1e-3 * max(1.0, float(np.abs(want).max()))):
        raise ExportError(f"the ONNX MetaModel disagrees with the torch one (max diff {np.abs(got - want).max():.3g})")


def save_metamodel_file(exported: ExportedMetaModel, path: Path) -> Path:
    """The fusion layer's self-describing MetaModel file (safetensors + manifest + digest)."""
    from coopml.fusion import save_metamodel
    save_metamodel(exported.meta, path)
    return path


def load_onnx_metamodel(path: Path) -> tuple[Any, InputSpec]:
    """An exported MetaModel graph (onnxruntime session) and the InputSpec from its metadata."""
    import onnx
    import onnxruntime as ort
    try:
        proto = onnx.load(str(path))
    except FileNotFoundError:
        raise ExportError(f"{path}: no such file") from None
    except Exception as exc:  # noqa: BLE001 - protobuf raises several types for garbage
        raise ExportError(f"{path}: not an ONNX file ({type(exc).__name__})") from None
    props = {p.key: p.value for p in proto.metadata_props}
    if META_INPUT_SPEC not in props:
        raise ExportError(f"{path}: not a coopml MetaModel export (no {META_INPUT_SPEC} metadata); "
                          "use `coopml export` to make one")
    spec = InputSpec.model_validate_json(props[META_INPUT_SPEC])
    # one thread, no pool: a MetaModel is small, and a `coopml predict` on a busy machine once ended
    # with "terminate called without an active exception" (SIGABRT) at interpreter exit, after its
    # output; onnxruntime's pool thread is the only extra thread such a process has (not reproduced
    # in 42 further runs, idle and loaded, so this removes the suspect rather than a proven cause)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"]), spec

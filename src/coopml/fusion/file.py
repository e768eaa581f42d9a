"""The MetaModel file: one safetensors file that rebuilds and predicts on its own.

Layout (tensors only, so loading never runs code):

- `head.<j>.<name>`: fusion head j's tensors (A, B, biases, the eqs. 11-12 masks, branches);
- `norm.mean`, `norm.std`: the feature normalisation of the last fit;
- `select.<j>.<name>` (optional): head j before its final refit on train + validation, the
  honest warm start for the next refit when the initiator resumes after a restart;
- `member.<key>.<name>`: every member's own tensors (torch: its state dict; other kinds: what
  their registered `MemberKind` writes, e.g. an ONNX graph as a uint8 blob).

The header's `__metadata__` holds two strings: `coopml-metamodel`, the JSON manifest
(`MetaModelManifest`: format and version, strategy, fusion config, class names, input shape,
the caller's task manifest verbatim, and one entry per member: key, kind, labels, feature
width and shape, the kind's spec), and `coopml-metamodel-sha256`, a digest of the manifest and
every tensor. The digest catches a corrupted or hand-edited file; it is not a signature (anyone
can recompute it) -- authenticity comes from the content hash the chain records.

Every mismatch -- unknown version, digest, missing or extra tensors, wrong shapes, a member that
does not rebuild to what its entry declares -- is a `ModelFileError` naming the file and cause.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from coopml.errors import ModelFileError
from coopml.fusion.members import kind_of, member_kind
from coopml.fusion.metamodel import FusionConfig, MetaModel
from coopml.models.io import safetensors_metadata
from coopml.paths import write_private

METAMODEL_FORMAT = "coopml-metamodel"
METAMODEL_VERSION = 1
MANIFEST_KEY = "coopml-metamodel"
DIGEST_KEY = "coopml-metamodel-sha256"
_KEY = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class MemberEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    key: str = Field(pattern=_KEY.pattern)       # its tensors are `member.<key>.*`
    kind: str                                    # a registered MemberKind ("torch", ...)
    labels: list[int] = Field(min_length=1)
    feature_dim: int = Field(ge=1)
    feature_shape: list[int] | None = None       # (C, H, W) when the features are maps (conv branch)
    spec: dict[str, Any] = Field(default_factory=dict)   # the kind's own description (torch: arch)


class MetaModelManifest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: Literal["coopml-metamodel"] = "coopml-metamodel"
    version: int = METAMODEL_VERSION
    strategy: Literal["I", "II"]
    fusion: FusionConfig
    num_classes: int = Field(ge=2)
    class_names: list[str]
    input_shape: list[int] = Field(min_length=1)
    members: list[MemberEntry] = Field(min_length=1)
    task_manifest: str | None = None             # the caller's opaque JSON, stored verbatim
    val_accuracy: float | None = None            # of the last fit (selection pass), for information


def _digest(manifest_json: str, tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256(manifest_json.encode())
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"\0{name}\0{t.dtype}\0{list(t.shape)}\0".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def metamodel_manifest(meta: MetaModel, member_keys: Sequence[str] | None = None
                       ) -> tuple[MetaModelManifest, dict[str, torch.Tensor]]:
    """The manifest and the tensors of a fitted MetaModel (what `save_metamodel` writes)."""
    if meta.input_shape is None:
        raise ModelFileError("MetaModel was never fitted: nothing to save")
    if member_keys is None:
        member_keys = meta.member_keys
    keys = list(member_keys) if member_keys is not None else [f"m{i}" for i in range(len(meta.members))]
    if len(keys) != len(meta.members) or len(set(keys)) != len(keys) or not all(_KEY.match(k) for k in keys):
        raise ModelFileError(f"member keys must be {len(meta.members)} distinct names of [A-Za-z0-9_-], got {keys}")
    tensors: dict[str, torch.Tensor] = {}
    for j, head in enumerate(meta.fusion_heads):
        for name, t in head.state_dict().items():
            tensors[f"head.{j}.{name}"] = t.detach().contiguous().clone()
        if head.selection_state is not None:   # the warm start of the next refit (fuser.py)
            for name, t in head.selection_state.items():
                tensors[f"select.{j}.{name}"] = t.detach().contiguous().clone()
    tensors["norm.mean"] = meta.feat_mean.detach().contiguous().clone()
    tensors["norm.std"] = meta.feat_std.detach().contiguous().clone()
    entries = []
    for key, member, shape in zip(keys, meta.members, meta.fusion_heads[0].feature_shapes):
        shape = shape if shape is not None else getattr(member, "feature_shape", None)
        kind = kind_of(member)
        spec, member_tensors = kind.encode(member)
        for name, t in member_tensors.items():
            tensors[f"member.{key}.{name}"] = t.detach().contiguous().clone()
        entries.append(MemberEntry(key=key, kind=kind.name, labels=list(member.labels),
                                   feature_dim=member.feature_dim,
                                   feature_shape=list(shape) if shape is not None else None, spec=spec))
    manifest = MetaModelManifest(strategy=meta.strategy, fusion=meta.cfg, num_classes=meta.num_classes,
                                 class_names=list(meta.class_names), input_shape=list(meta.input_shape),
                                 members=entries, task_manifest=meta.task_manifest,
                                 val_accuracy=meta.fit_report.val_accuracy if meta.fit_report else None)
    return manifest, tensors


def metamodel_to_bytes(meta: MetaModel, member_keys: Sequence[str] | None = None) -> bytes:
    manifest, tensors = metamodel_manifest(meta, member_keys)
    text = manifest.model_dump_json()
    return st_save(tensors, metadata={MANIFEST_KEY: text, DIGEST_KEY: _digest(text, tensors)})


def save_metamodel(meta: MetaModel, path: str | Path, member_keys: Sequence[str] | None = None,
                   mode: int = 0o600) -> Path:
    """Write the MetaModel file atomically (a crash leaves the previous file or the new one).
    Members are stored under `member_keys`, else `meta.member_keys`, else m0, m1, ... The file
    holds every member's plaintext weights (models someone paid for): owner-only by default."""
    return write_private(path, metamodel_to_bytes(meta, member_keys), mode=mode)


def load_metamodel(path: str | Path) -> MetaModel:
    """Rebuild a MetaModel, members included, from its file; ModelFileError on any mismatch."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such MetaModel file")
    return metamodel_from_bytes(path.read_bytes(), str(path))


def read_manifest(data: bytes, where: str = "<bytes>") -> MetaModelManifest:
    """The validated manifest of a MetaModel file (digest not checked: see metamodel_from_bytes)."""
    meta = _header_metadata(data, where)
    return _parse(meta, where)


def _header_metadata(data: bytes, where: str) -> dict[str, str]:
    meta = safetensors_metadata(data, where)
    if MANIFEST_KEY not in meta:
        raise ModelFileError(f"{where}: not a MetaModel file (no {MANIFEST_KEY!r} manifest in its metadata)")
    return meta


def _parse(meta: dict[str, str], where: str) -> MetaModelManifest:
    try:
        raw = json.loads(meta[MANIFEST_KEY])
    except json.JSONDecodeError:
        raise ModelFileError(f"{where}: MetaModel manifest is not JSON") from None
    if not isinstance(raw, dict) or raw.get("format") != METAMODEL_FORMAT:
        raise ModelFileError(f"{where}: not a MetaModel manifest (format {raw.get('format') if isinstance(raw, dict) else None!r})")
    if raw.get("version") != METAMODEL_VERSION:
        raise ModelFileError(f"{where}: MetaModel format version {raw.get('version')!r} is not supported "
                             f"(this coopml reads version {METAMODEL_VERSION})")
    try:
        return MetaModelManifest.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ModelFileError(f"{where}: bad MetaModel manifest: {first['msg']} "
                             f"(at {'.'.join(map(str, first['loc']))})") from None


def metamodel_from_bytes(data: bytes, where: str = "<bytes>") -> MetaModel:
    meta_strings = _header_metadata(data, where)
    manifest = _parse(meta_strings, where)
    try:
        tensors = st_load(data)
    except SafetensorError as exc:
        raise ModelFileError(f"{where}: corrupt safetensors data ({exc})") from None
    digest = meta_strings.get(DIGEST_KEY)
    if digest != _digest(meta_strings[MANIFEST_KEY], tensors):
        raise ModelFileError(f"{where}: content does not match its sha256 digest: the file was modified or corrupted")
    return _rebuild(manifest, tensors, where)


def _rebuild(manifest: MetaModelManifest, tensors: dict[str, torch.Tensor], where: str) -> MetaModel:
    used: set[str] = set()
    members = []
    if len({e.key for e in manifest.members}) != len(manifest.members):
        raise ModelFileError(f"{where}: duplicate member keys")
    for entry in manifest.members:
        prefix = f"member.{entry.key}."
        own = {k[len(prefix):]: t for k, t in tensors.items() if k.startswith(prefix)}
        if not own:
            raise ModelFileError(f"{where}: member {entry.key!r} has no tensors in the file")
        used.update(prefix + k for k in own)
        try:
            kind = member_kind(entry.kind)
            member = kind.decode(entry.spec, own, entry.labels)
        except ModelFileError as exc:
            raise ModelFileError(f"{where}: member {entry.key!r}: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - a kind's decoder must not crash the loader
            raise ModelFileError(f"{where}: member {entry.key!r} ({entry.kind}) does not rebuild: {exc}") from None
        if member.feature_dim != entry.feature_dim or sorted(member.labels) != sorted(entry.labels):
            raise ModelFileError(f"{where}: member {entry.key!r} rebuilds with feature_dim {member.feature_dim} and "
                                 f"labels {list(member.labels)}, its entry says {entry.feature_dim} and {entry.labels}")
        members.append((member, entry))
    if any(max(e.labels) >= manifest.num_classes or min(e.labels) < 0 for e in manifest.members):
        raise ModelFileError(f"{where}: a member's labels fall outside 0..{manifest.num_classes - 1}")
    if len(manifest.class_names) != manifest.num_classes:
        raise ModelFileError(f"{where}: {len(manifest.class_names)} class names for {manifest.num_classes} classes")
    meta = MetaModel([m for m, _ in members], [e.labels for _, e in members], manifest.strategy, manifest.fusion,
                     manifest.num_classes, feature_shapes=[e.feature_shape for _, e in members])
    for j, head in enumerate(meta.fusion_heads):
        state = {k: tensors.get(f"head.{j}.{k}") for k in head.state_dict()}
        missing = [k for k, v in state.items() if v is None]
        if missing:
            raise ModelFileError(f"{where}: fusion head {j} lacks tensors {missing[:3]}")
        for k, t in state.items():
            want = head.state_dict()[k]
            assert t is not None
            if tuple(t.shape) != tuple(want.shape) or t.dtype != want.dtype:
                raise ModelFileError(f"{where}: head.{j}.{k} is {t.dtype} {tuple(t.shape)}, the manifest's members "
                                     f"and fusion config need {want.dtype} {tuple(want.shape)}")
            if t.is_floating_point() and not torch.isfinite(t).all():
                raise ModelFileError(f"{where}: head.{j}.{k} contains NaN or infinity")
        head.load_state_dict({k: v for k, v in state.items() if v is not None})
        used.update(f"head.{j}.{k}" for k in state)
        select = {k: tensors[f"select.{j}.{k}"] for k in state if f"select.{j}.{k}" in tensors}
        if select:
            bad = [k for k in state if k not in select or select[k].shape != head.state_dict()[k].shape]
            if bad:
                raise ModelFileError(f"{where}: warm-start tensors select.{j}.* do not match head {j} ({bad[:3]})")
            head.selection_state = {k: v.clone() for k, v in select.items()}
            used.update(f"select.{j}.{k}" for k in select)
    for name, attr in (("norm.mean", "feat_mean"), ("norm.std", "feat_std")):
        t = tensors.get(name)
        if t is None or tuple(t.shape) != (meta.feature_dim,):
            raise ModelFileError(f"{where}: {name} must have shape ({meta.feature_dim},), "
                                 f"got {None if t is None else tuple(t.shape)}")
        setattr(meta, attr, t.float())
        used.add(name)
    extra = sorted(set(tensors) - used)
    if extra:
        raise ModelFileError(f"{where}: unexpected tensors {extra[:3]} (not described by the manifest)")
    meta.input_shape = tuple(manifest.input_shape)
    meta.class_names = list(manifest.class_names)
    meta.task_manifest = manifest.task_manifest
    meta.member_keys = [e.key for e in manifest.members]
    meta.eval()
    try:
        with torch.no_grad():
            out = meta(torch.zeros(2, *manifest.input_shape))
    except Exception as exc:  # noqa: BLE001
        raise ModelFileError(f"{where}: the rebuilt MetaModel does not run on inputs of shape "
                             f"{manifest.input_shape}: {exc}") from None
    if tuple(out.shape) != (2, manifest.num_classes):
        raise ModelFileError(f"{where}: the rebuilt MetaModel outputs {tuple(out.shape)}, expected (2, {manifest.num_classes})")
    return meta


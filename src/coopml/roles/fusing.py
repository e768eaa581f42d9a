"""The initiator's fusion (run off the event loop): bought models + its own data -> the MetaModel file.

One `InitiatorFusion` lives as long as the initiator process. Its `IncrementalFuser` computes each
bought model's features on the initiator's data once, when the model arrives, and every later
refit trains only the small fusion network on cached features, warm-started from the previous one
(strategy II): each newly bought model is a cheap refit, not a fusion from scratch.

The MetaModel is written after every refit as the fusion layer's self-describing file
(`coopml.fusion.save_metamodel`, `workdir/metamodel.safetensors`): architecture, members (keyed
`model-<on-chain id>`, with their label sets and InputSpec), fusion config, class names and this
task's manifest, so `coopml.fusion.load_metamodel` rebuilds and predicts with nothing else. After a
restart the fuser resumes from that file when it was made for this very task and fusion config;
otherwise (missing, damaged, another task) every bought model is fused again from its envelope.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from coopml.data import Dataset
from coopml.errors import ModelFileError
from coopml.fusion import (
    FusionConfig,
    IncrementalFuser,
    MetaModel,
    TorchMember,
    load_metamodel,
    save_metamodel,
)
from coopml.models import FeatureModel, train_model
from coopml.roles.datasets import split
from coopml.roles.models import build_trainable, load_delivered
from coopml.storage import Store
from coopml.task import TaskManifest

if TYPE_CHECKING:
    from coopml.roles.config import InitiatorConfig
    from coopml.roles.initiator import Bought
    from coopml.roles.task import TaskView

METAMODEL_FILE = "metamodel.safetensors"
OWN_MEMBER_KEY = "initiator"     # the initiator's own model inside the MetaModel file (InitiatorConfig.own_model)


def member_key(model_id: int) -> str:
    """How a bought model is named inside the MetaModel file."""
    return f"model-{model_id}"


def holds_own_model(meta: MetaModel | None) -> bool:
    """Whether a MetaModel already fuses the initiator's own model (OWN_MEMBER_KEY)."""
    return meta is not None and OWN_MEMBER_KEY in (meta.member_keys or [])


def model_id_of(key: str) -> int | None:
    prefix, _, rest = key.partition("-")
    return int(rest) if prefix == "model" and rest.isdigit() else None


def fusion_config(cfg: InitiatorConfig, manifest: TaskManifest) -> FusionConfig:
    """The live preset (benchmarks/bench_fusion.py) at the initiator's epochs and augmentation;
    warm-started refits get half the epochs. Augmented copies distort images only."""
    return FusionConfig.live(max_epochs=cfg.fusion_epochs, warm_max_epochs=max(1, cfg.fusion_epochs // 2),
                             augment_copies=cfg.fusion_augment if manifest.input.is_image else 0, seed=cfg.seed)


def task_manifest_json(manifest: TaskManifest) -> str:
    """The task manifest as stored in the MetaModel file: its canonical (hashed) JSON."""
    return manifest.to_bytes().decode()


class InitiatorFusion:
    """The initiator's incremental fuser and the MetaModel file it keeps up to date."""

    def __init__(self, cfg: InitiatorConfig, manifest: TaskManifest, workdir: Path,
                 should_stop: Callable[[], bool] | None = None) -> None:
        spec = manifest.input
        self.spec = spec
        self.manifest_json = task_manifest_json(manifest)
        self.path = Path(workdir) / METAMODEL_FILE
        data = cfg.data.load(spec)
        train, val = split(data, cfg.val_fraction, seed=cfg.seed)
        self.fcfg = fusion_config(cfg, manifest)
        self.fuser = IncrementalFuser(train, val, manifest.fusion.strategy, self.fcfg, num_classes=spec.num_classes,
                                      class_names=list(spec.classes), task_manifest=self.manifest_json)
        self.test = cfg.test_data.load(spec) if cfg.test_data is not None else None
        self.resumed_from: str | None = None
        self.resume_refused: str | None = None
        self._queued: set[int] = set()
        self._ids: dict[int, int] = {}          # id(member) -> on-chain model id
        self._test_features: dict[int, torch.Tensor] = {}   # id(member) -> its features on the test set
        self.own_model_seconds: float | None = None
        self._resume()
        self._add_own_model(cfg, train, val, should_stop)

    def _add_own_model(self, cfg: InitiatorConfig, train: Dataset, val: Dataset,
                       should_stop: Callable[[], bool] | None) -> None:
        """Train the initiator's own model (`InitiatorConfig.own_model`) on the fusion's split and
        queue it as an all-label member under OWN_MEMBER_KEY: it joins the first refit. Not trained
        again when the resumed MetaModel already holds it (its weights are in that file).
        `should_stop` (the node is stopping) ends the training early: TrainingCancelled."""
        if cfg.own_model is None:
            return
        if holds_own_model(self.fuser.current):
            return
        t0 = time.perf_counter()
        model = build_trainable(cfg.own_model, self.spec)
        train_model(model, train, val, cfg.own_train_config(self.spec.is_image), should_stop=should_stop)
        labels = list(range(self.spec.num_classes))
        member: object = TorchMember(model, labels, self.spec) if isinstance(model, FeatureModel) else model
        self.fuser.add(member, labels, key=OWN_MEMBER_KEY)
        self.own_model_seconds = time.perf_counter() - t0

    def _resume(self) -> None:
        """Continue from the MetaModel file of this task, if there is a usable one."""
        if not self.path.is_file():
            return
        try:
            meta = load_metamodel(self.path)
        except ModelFileError as exc:
            self.resume_refused = str(exc)
            return
        why = check_metamodel(meta, self.manifest_json)
        if why is None and meta.cfg != self.fcfg:
            why = "fused with another fusion config"
        if why is None and meta.strategy != self.fuser.strategy:
            why = f"strategy {meta.strategy}, the task asks for {self.fuser.strategy}"
        if why is not None:
            self.resume_refused = f"{self.path}: {why}"
            return
        self.fuser.resume(meta)
        self.resumed_from = str(self.path)

    def fused_ids(self) -> set[int]:
        cur = self.fuser.current
        keys = (cur.member_keys or []) if cur is not None else []
        return {mid for k in keys if (mid := model_id_of(k)) is not None}

    def known(self, model_id: int) -> bool:
        return model_id in self._queued or model_id in self.fused_ids()

    def add(self, model_id: int, model: torch.nn.Module, labels: list[int]) -> None:
        """Queue a bought model (a registered architecture keeps its InputSpec in the file)."""
        member: object = TorchMember(model, labels, self.spec) if isinstance(model, FeatureModel) else model
        queued = self.fuser.add(member, labels, key=member_key(model_id))
        self._queued.add(model_id)
        self._ids[id(queued)] = model_id

    def fit(self, should_stop: Callable[[], bool] | None = None) -> dict[str, Any]:
        """One refit over everything queued (none if nothing new is usable); writes the MetaModel
        file; a JSON-able summary. A model whose features fail (shape, NaN, its own error) is
        listed under `rejected` with the reason and left out. `should_stop()` turning true raises
        FusionCancelled: queued models stay queued, features already computed stay cached."""
        t0 = time.perf_counter()
        before = len(self.fuser.rejected)
        feature_seconds = self.fuser.prepare(should_stop)
        rejected = {self._ids.get(id(m), -1): why for m, why in self.fuser.rejected[before:]}
        self._queued -= set(rejected)
        out: dict[str, Any] = {"rejected": {str(k): v[:300] for k, v in rejected.items()}}
        if self.fuser.pending:
            meta: MetaModel | None = self.fuser.fit(should_stop)
            assert meta is not None
            save_metamodel(meta, self.path)
            timing = self.fuser.history[-1]
            out.update(val_accuracy=timing.val_accuracy, warm_start=timing.warm_start,
                       feature_seconds=round(feature_seconds + timing.feature_seconds, 3),
                       fit_seconds=round(timing.fit_seconds, 3))
        else:
            meta = self.fuser.current
        fused = self.fused_ids()
        self._queued -= fused
        acc = self._test_accuracy(meta) if meta is not None and self.test is not None else None
        out.update(members=sorted(fused), own_model=holds_own_model(meta), test_accuracy=acc,
                   path=str(self.path) if meta is not None else None, seconds=round(time.perf_counter() - t0, 3))
        return out


    def _test_accuracy(self, meta: MetaModel) -> float:
        """The MetaModel's accuracy on the test set (a report only: nothing is chosen on it). Each
        member's test features are computed once, as the fuser's cache computes them (one matrix
        product for an affine member); the same predictions as `evaluate(meta, test)` up to float
        rounding, without running every member over the whole test set after every refit."""
        assert self.test is not None
        x, y = self.test.tensors()
        parts = []
        for m in meta.members:
            if id(m) not in self._test_features:
                self._test_features[id(m)] = self.fuser.cache.features(m, x)
            parts.append(self._test_features[id(m)])
        pred = meta.logits_from_features(torch.cat(parts, 1)).argmax(1)
        return float((pred == y).float().mean())


def check_metamodel(meta: MetaModel, manifest_json: str) -> str | None:
    """Why `meta` is not a MetaModel of the task whose manifest is `manifest_json` (None: it is)."""
    if meta.task_manifest is None:
        return "the MetaModel file names no task"
    if meta.task_manifest != manifest_json:
        try:
            other = TaskManifest.from_bytes(meta.task_manifest.encode()).name
        except Exception:  # noqa: BLE001 - only for the message
            other = "unreadable"
        return f"the MetaModel was fused for another task ({other!r})"
    return None


def open_metamodel(path: str | Path, manifest: TaskManifest | None = None) -> MetaModel:
    """Load a MetaModel file (`load_metamodel`: every mismatch is a ModelFileError) and, given the
    task's manifest, refuse one fused for another task."""
    meta = load_metamodel(path)
    if manifest is not None:
        why = check_metamodel(meta, task_manifest_json(manifest))
        if why is not None:
            raise ModelFileError(f"{path}: {why}")
    return meta


def fuse_members(cfg: InitiatorConfig, view: TaskView, members: list[Bought], keys: dict[int, bytes], store: Store,
                 contract: str, workdir: Path, fusion: InitiatorFusion | None = None,
                 should_stop: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Open each bought model not yet in `fusion` from the store (checked against its on-chain
    envelope hash), queue it and refit; `fusion` None: a fresh one (resumed from the file)."""
    from coopml.roles.verifier import open_committed
    if fusion is None:
        fusion = InitiatorFusion(cfg, view.manifest, workdir)
    spec = view.manifest.input
    for b in members:
        if fusion.known(b.model_id):
            continue
        hdr, body = open_committed(store.get(b.cid), keys[b.model_id], bytes.fromhex(b.envelope_hash), contract,
                                   view.info.task_id)
        fusion.add(b.model_id, load_delivered(hdr, body, spec), list(b.labels))
    return fusion.fit(should_stop)

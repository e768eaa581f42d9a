"""Fusion for models that arrive one at a time: cached member features, warm starts, a worker.

Members are frozen, so each one runs over the initiator's data (and its augmented copies) once,
when it arrives; every refit after that trains the small fusion network on cached tensors.
`IncrementalFuser` keeps the last good MetaModel and grows it by one block per new member
(strategy II keeps the trained blocks as the warm start); a fit that is cancelled or fails
leaves that MetaModel untouched. `FusionWorker` runs the fuser on a background thread so the
initiator's event loop never waits for a fit: arrivals during a fit cancel it and one refit
covers the whole batch.
"""

from __future__ import annotations

import copy
import math
import re
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from coopml.data.augment import random_affine
from coopml.fusion.members import FeatureExtractor, FusionError, as_member
from coopml.fusion.metamodel import (
    Data,
    FeatureSet,
    FusionCancelled,
    FusionConfig,
    MetaModel,
    Strategy,
    data_tensors,
    infer_num_classes,
)

StopCheck = Callable[[], bool]
_KEY = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def is_image_batch(x: torch.Tensor) -> bool:
    """[N, C, H, W] with a few pixels each way: what `random_affine` can distort."""
    return x.dim() == 4 and min(x.shape[2:]) >= 8


@dataclass
class _Entry:
    member: FeatureExtractor
    train: torch.Tensor          # [(1 + copies) * n_train, D], activated
    val: torch.Tensor            # [(1 + val copies) * n_val, D], clean val first
    seconds: float
    affine: tuple[torch.Tensor, torch.Tensor] | None = None     # checked (W, b), see _affine_map


class FeatureCache:
    """The initiator's data (plus augmented copies, drawn once) and each member's features on it.

    The augmented copies are fixed when the cache is made, so a member's features never change
    and a warm start sees exactly the inputs the previous fit saw."""

    def __init__(self, train: Data, val: Data, cfg: FusionConfig, seed: int | None = None) -> None:
        xtr, ytr = data_tensors(train, "train data")
        xva, yva = data_tensors(val, "validation data")
        if len(xtr) == 0 or len(xva) == 0:
            raise FusionError("fusion needs non-empty train and validation data")
        if tuple(xtr.shape[1:]) != tuple(xva.shape[1:]):
            raise FusionError(f"train inputs {tuple(xtr.shape[1:])} and validation inputs "
                              f"{tuple(xva.shape[1:])} differ in shape")
        copies = cfg.augment_copies
        if copies and not is_image_batch(xtr):
            raise FusionError(f"augment_copies={copies} distorts images [N, C, H, W]; these inputs are "
                              f"{list(xtr.shape)}: set augment_copies=0")
        self.input_shape: tuple[int, ...] = tuple(int(s) for s in xtr.shape[1:])
        self.activation = cfg.feature_activation
        self.affine = cfg.affine_features
        gen = torch.Generator().manual_seed(cfg.seed if seed is None else seed)
        self._train_x = [xtr] + [random_affine(xtr, gen) for _ in range(copies)]
        val_copies = copies if cfg.refit_on_all else 0
        self._val_x = [xva] + [random_affine(xva, gen) for _ in range(val_copies)]
        self.train_y = ytr.repeat(1 + copies)
        self.val_y = yva
        self.val_all_y = yva.repeat(1 + val_copies)
        self.max_label = int(max(ytr.max(), yva.max()))
        self._entries: list[_Entry] = []

    def __contains__(self, member: object) -> bool:
        return any(e.member is member for e in self._entries)

    def seconds(self, member: object) -> float:
        return next(e.seconds for e in self._entries if e.member is member)

    def add(self, member: FeatureExtractor, should_stop: StopCheck | None = None) -> float:
        """Run `member` over the cached inputs once; returns the seconds it took (0 if cached)."""
        if member in self:
            return 0.0
        t0 = time.perf_counter()
        amap = self._affine_map(member) if self.affine else None
        parts = []
        for xs in (self._train_x, self._val_x):
            out = []
            for x in xs:
                for i in range(0, len(x), 1000):
                    if should_stop is not None and should_stop():
                        raise FusionCancelled("feature extraction cancelled by the caller")
                    out.append(self._features(member, x[i:i + 1000], amap))
            parts.append(torch.cat(out))
        seconds = time.perf_counter() - t0
        self._entries.append(_Entry(member, parts[0], parts[1], seconds, amap))
        return seconds

    def features(self, member: FeatureExtractor, x: torch.Tensor) -> torch.Tensor:
        """`member`'s activated features on other inputs `x` (e.g. a test set) the way the cache
        computes them: one matrix product when the member's affine map was found and checked."""
        amap = next((e.affine for e in self._entries if e.member is member), None)
        return torch.cat([self._features(member, x[i:i + 1000], amap) for i in range(0, len(x), 1000)])

    def _affine_map(self, member: FeatureExtractor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The member's features as one affine map (`TorchMember.affine_map`), when it has one,
        it pays (more cached inputs than input values) and it agrees with `features` on a few
        inputs; else None (the member runs over every input)."""
        get = getattr(member, "affine_map", None)
        n = sum(len(x) for x in self._train_x + self._val_x)
        if not callable(get) or n <= math.prod(self.input_shape):
            return None
        amap = get(self.input_shape)
        if amap is None or amap[0].shape != (math.prod(self.input_shape), member.feature_dim):
            return None
        probe = self._train_x[0][:64]
        with torch.no_grad():
            want = torch.as_tensor(member.features(probe)).float()
        got = torch.addmm(amap[1], probe.flatten(1), amap[0])
        if want.shape != got.shape or not torch.allclose(got, want, rtol=1e-4, atol=1e-4 * (1 + float(want.abs().max()))):
            return None
        return amap

    def _features(self, member: FeatureExtractor, x: torch.Tensor,
                  amap: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        with torch.no_grad():
            f = (torch.addmm(amap[1], x.flatten(1), amap[0]) if amap is not None
                 else torch.as_tensor(member.features(x)).float())
        if f.dim() != 2 or f.shape != (len(x), member.feature_dim):
            raise FusionError(f"member {member!r} returned features of shape {tuple(f.shape)} for {len(x)} "
                              f"inputs, expected ({len(x)}, {member.feature_dim})")
        if not torch.isfinite(f).all():
            raise FusionError(f"member {member!r} returned NaN or infinite features")
        return torch.relu(f) if self.activation == "relu" else f

    def drop(self, member: object) -> None:
        self._entries = [e for e in self._entries if e.member is not member]

    def feature_set(self, members: Sequence[FeatureExtractor], cfg: FusionConfig
                    ) -> tuple[FeatureSet, torch.Tensor, torch.Tensor]:
        """Concatenated, z-scored features of `members` (in order) and the normalisation stats."""
        if cfg.feature_activation != self.activation:
            raise FusionError("feature cache was built with another feature_activation")
        entries = []
        for m in members:
            e = next((e for e in self._entries if e.member is m), None)
            if e is None:
                raise FusionError(f"member {m!r} has no cached features; add it to the cache first")
            entries.append(e)
        ftr = torch.cat([e.train for e in entries], 1)
        fva = torch.cat([e.val for e in entries], 1)
        if cfg.normalize:
            mean, std = ftr.mean(0), ftr.std(0).clamp_min(1e-3)
            ftr, fva = (ftr - mean) / std, (fva - mean) / std
        else:
            mean, std = torch.zeros(ftr.shape[1]), torch.ones(ftr.shape[1])
        n_val = len(self.val_y)
        return FeatureSet(ftr, self.train_y, fva[:n_val], self.val_y, fva, self.val_all_y), mean, std


@dataclass
class RefitTiming:
    members: int
    new_members: int
    feature_seconds: float       # running the new members over the cached inputs
    fit_seconds: float           # training the fusion heads
    warm_start: bool
    val_accuracy: float
    stages: list[dict] = field(default_factory=list)
    cpu_seconds: float = 0.0     # CPU time of the fitting thread (wall time depends on the load)

    @property
    def seconds(self) -> float:
        return self.feature_seconds + self.fit_seconds


class IncrementalFuser:
    """The initiator's fuser: `add` members as they are bought, `fit` once per batch of arrivals.

    `current` is the last MetaModel that finished fitting; `fit` builds the next one from a copy
    (strategy II: the previous blocks as the warm start, one fresh block per new member), so a
    cancelled or crashed fit loses nothing but itself. `resume(meta)` continues from a MetaModel
    loaded from its file after a restart (its members' features are recomputed on first use)."""

    def __init__(self, train: Data, val: Data, strategy: Strategy = "II", cfg: FusionConfig | None = None,
                 num_classes: int | None = None, class_names: Sequence[str] | None = None,
                 task_manifest: str | None = None) -> None:
        if strategy not in ("I", "II"):
            raise FusionError(f"strategy must be 'I' or 'II', not {strategy!r}")
        self.strategy: Strategy = strategy
        self.cfg = cfg or FusionConfig()
        self.cache = FeatureCache(train, val, self.cfg)
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names is not None else None
        self.task_manifest = task_manifest
        self.current: MetaModel | None = None
        self.history: list[RefitTiming] = []
        self.rejected: list[tuple[FeatureExtractor, str]] = []   # members whose features failed
        self._pending: list[FeatureExtractor] = []
        self._keys: dict[int, str] = {}
        self._lock = threading.Lock()

    @property
    def members(self) -> list[FeatureExtractor]:
        return list(self.current.members) if self.current is not None else []

    @property
    def pending(self) -> list[FeatureExtractor]:
        with self._lock:
            return list(self._pending)

    def add(self, model: object, labels: Sequence[int] | None = None, key: str | None = None) -> FeatureExtractor:
        """Queue a newly verified member for the next fit (thread-safe; no computation here).
        `key` names it in the MetaModel file (e.g. the on-chain model id); default m<index>."""
        member = as_member(model, labels)
        if key is not None and (not _KEY.match(key) or key in self._keys.values()
                                or key in (self.current.member_keys or [] if self.current else [])):
            raise FusionError(f"member key {key!r} must be a new name of 1-64 characters [A-Za-z0-9_-]")
        with self._lock:
            self._pending.append(member)
            if key is not None:
                self._keys[id(member)] = key
        return member

    def resume(self, meta: MetaModel) -> None:
        """Continue from a MetaModel fitted earlier (e.g. `load_metamodel` after a restart)."""
        if meta.strategy != self.strategy:
            raise FusionError(f"cannot resume a strategy {meta.strategy} MetaModel with a strategy {self.strategy} fuser")
        self.current = meta

    def prepare(self, should_stop: StopCheck | None = None) -> float:
        """Compute the features of every member that lacks them (a fit does this too).

        A pending member whose features fail (wrong shape, NaN, an exception of its own) is
        dropped from the queue and listed in `rejected`; the others are kept."""
        total = sum(self.cache.add(m, should_stop) for m in self.members)
        for m in self.pending:
            try:
                total += self.cache.add(m, should_stop)
            except FusionCancelled:
                raise
            except Exception as exc:  # noqa: BLE001 - a member is foreign code (e.g. an ONNX graph)
                with self._lock:
                    self._pending = [p for p in self._pending if p is not m]
                self.rejected.append((m, f"{type(exc).__name__}: {exc}"))
        return total

    def fit(self, should_stop: StopCheck | None = None) -> MetaModel:
        """One refit covering every member added so far; returns (and keeps) the new MetaModel.

        Raises FusionCancelled when `should_stop()` turns true (checked every epoch); the pending
        members then stay pending and `current` is unchanged."""
        c0 = time.thread_time()
        feature_seconds = self.prepare(should_stop)
        with self._lock:
            new = list(self._pending)
        if self.current is None and not new:
            why = f" ({len(self.rejected)} rejected: {self.rejected[-1][1]})" if self.rejected else ""
            raise FusionError("fusion needs at least one verified model" + why)
        t1 = time.perf_counter()
        meta, warm = self._next_model(new)
        report = meta.fit_cached(self.cache, warm=warm, should_stop=should_stop)
        fit_seconds = time.perf_counter() - t1
        with self._lock:
            self._pending = [m for m in self._pending if all(m is not n for n in new)]
            self.current = meta
        self.history.append(RefitTiming(len(meta.members), len(new), feature_seconds, fit_seconds, warm,
                                        report.val_accuracy, report.stages, time.thread_time() - c0))
        return meta

    def _next_model(self, new: list[FeatureExtractor]) -> tuple[MetaModel, bool]:
        """The MetaModel to fit next and whether it is a warm start.

        Strategy II grows a copy of `current`: its heads as they were before their final refit
        on train + val (so early stopping on val stays honest), one fresh block per new member.
        A head without that state (loaded from a file) or strategy I starts cold."""
        warm = False
        if self.current is None:
            num_classes = self.num_classes or max(infer_num_classes(new), self.cache.max_label + 1)
            meta = MetaModel(new, None, self.strategy, self.cfg, num_classes)
        else:
            meta = _copy_meta(self.current, self.cfg)
            heads = meta.fusion_heads
            warm = self.strategy == "II" and (not self.cfg.refit_on_all
                                              or all(h.selection_state is not None for h in heads))
            if warm and self.cfg.refit_on_all:
                for h in heads:
                    assert h.selection_state is not None
                    h.restore(h.selection_state)
            elif not warm:   # same members, fresh heads
                meta = MetaModel(meta.members, None, self.strategy, self.cfg, meta.num_classes)
            for m in new:
                meta._append(m)
        if self.class_names is not None:
            if len(self.class_names) != meta.num_classes:
                raise FusionError(f"{len(self.class_names)} class names for {meta.num_classes} classes")
            meta.class_names = list(self.class_names)
        meta.task_manifest = self.task_manifest if self.task_manifest is not None else meta.task_manifest
        old_keys = list(self.current.member_keys or []) if self.current is not None else []
        keys = old_keys + [f"m{i}" for i in range(len(old_keys), len(meta.members) - len(new))]
        keys += [self._keys.get(id(m), f"m{len(keys) + i}") for i, m in enumerate(new)]
        meta.member_keys = keys
        return meta, warm


def _copy_meta(meta: MetaModel, cfg: FusionConfig) -> MetaModel:
    """A new MetaModel sharing `meta`'s (frozen) members with copies of its trained heads."""
    members, last = meta.members, meta._last_data
    meta.members, meta._last_data = [], None
    try:
        out = copy.deepcopy(meta)
    finally:
        meta.members, meta._last_data = members, last
    out.members = list(members)
    out.cfg = cfg
    for h in out.fusion_heads:
        h.cfg = cfg
    out.fit_report = None
    return out


class FusionWorker:
    """An `IncrementalFuser` on a background thread.

    `submit(model, labels)` queues a member and returns at once; the worker refits once per
    batch of arrivals (a member arriving during a fit cancels it and the next fit covers both).
    `latest()` is the newest finished MetaModel; `on_fit(meta, timing)` is called on the worker
    thread after each fit (e.g. to write the MetaModel file); errors go to `on_error` (the worker
    keeps running and the previous MetaModel stays current)."""

    def __init__(self, fuser: IncrementalFuser, on_fit: Callable[[MetaModel, RefitTiming], None] | None = None,
                 on_error: Callable[[BaseException], None] | None = None, restart_on_arrival: bool = True) -> None:
        self.fuser = fuser
        self.on_fit = on_fit
        self.on_error = on_error
        self.restart_on_arrival = restart_on_arrival
        self.errors: list[str] = []
        self._wake = threading.Condition()
        self._arrived = False
        self._busy = False
        self._closed = False
        self._cancel = threading.Event()
        self._thread = threading.Thread(target=self._run, name="coopml-fusion", daemon=True)
        self._thread.start()

    def submit(self, model: object, labels: Sequence[int] | None = None, key: str | None = None) -> FeatureExtractor:
        member = self.fuser.add(model, labels, key)
        with self._wake:
            self._arrived = True
            if self._busy and self.restart_on_arrival:
                self._cancel.set()
            self._wake.notify_all()
        return member

    def latest(self) -> MetaModel | None:
        return self.fuser.current

    def idle(self) -> bool:
        with self._wake:
            return not self._busy and not self._arrived

    def wait(self, timeout: float | None = None) -> MetaModel | None:
        """Block until every submitted member is fused (or `timeout` seconds); the newest MetaModel."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._wake:
            while (self._busy or self._arrived) and not self._closed:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._wake.wait(left)
        return self.fuser.current

    def cancel(self) -> None:
        """Stop the running fit (its work is lost; pending members stay queued)."""
        self._cancel.set()

    def close(self, timeout: float | None = 30.0) -> None:
        with self._wake:
            self._closed = True
            self._cancel.set()
            self._wake.notify_all()
        self._thread.join(timeout)

    def _run(self) -> None:
        torch.set_num_threads(torch.get_num_threads())
        while True:
            with self._wake:
                while not self._arrived and not self._closed:
                    self._wake.wait()
                if self._closed:
                    return
                self._arrived = False
                self._busy = True
                self._cancel.clear()
            try:
                meta = self.fuser.fit(should_stop=self._cancel.is_set)
                if self.on_fit is not None:
                    self.on_fit(meta, self.fuser.history[-1])
            except FusionCancelled:
                pass
            except Exception as exc:  # noqa: BLE001 - the worker must survive a bad member or fit
                self.errors.append("".join(traceback.format_exception_only(type(exc), exc)).strip())
                if self.on_error is not None:
                    self.on_error(exc)
            finally:
                with self._wake:
                    self._busy = False
                    self._wake.notify_all()

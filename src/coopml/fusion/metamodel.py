"""Feature-level fusion of verified private models into a MetaModel (paper section IV-D).

The private models stay frozen; their upper-layer feature vectors f_i are concatenated into
f_c, a hidden layer h of size sum_i |l_i| (|l_i| = number of classes model i was trained on)
is computed as h = f_c A (eq. 7/11) and the output as softmax(h B) (eq. 8/12).

Strategy I trains A and B from a random start. Strategy II is the paper's gradual fusion:
A starts block-diagonal (block W_i maps f_i to model i's |l_i| hidden units, eq. 9) and B as
the stacked identities (eq. 10) -- with partial label sets, hidden unit k of block i is wired to
the global class l_i[k], which is the identity when l_i is all d classes. Stage 1 (gamma = 0)
trains only the diagonal blocks of A; stage 2 (gamma = 1) trains every weight of A and B.

Because the members are frozen, their features are computed once per fit and the fusion
network trains on cached tensors: a fit costs one forward pass of each member over the
initiator's data plus milliseconds per epoch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field
from torch import nn

from coopml.data.augment import random_affine
from coopml.data.datasets import Dataset
from coopml.errors import CoopmlError
from coopml.models.architectures import FeatureModel

Strategy = Literal["I", "II"]


class FusionError(CoopmlError):
    """Fusion was asked for something impossible: no models, bad label sets, empty data."""


class FusionConfig(BaseModel):
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(50, ge=1)
    max_epochs: int = Field(200, ge=1)          # per stage (strategy II has two stages)
    patience: int = Field(20, ge=1)             # epochs without val-accuracy gain before a stage stops
    weight_decay: float = Field(0.0, ge=0)
    normalize: bool = True                      # z-score each member's features (stats from the fit's train set)
    hidden_activation: Literal["none", "relu"] = "none"   # the paper's eqs. 7/11 are linear
    # applied to each f_i before concatenation: a nonlinearity matters for linear members such as
    # Table IV (linear features and linear eqs. 7-8 make the whole MetaModel a linear classifier)
    feature_activation: Literal["none", "relu"] = "none"
    bias: bool = True                           # eqs. 7-12 have none; a bias per unit costs nothing
    augment_copies: int = Field(0, ge=0)        # extra randomly shifted/rotated copies of the train set
    feature_dropout: float = Field(0.0, ge=0, lt=1)   # dropout on f_c while training (regularises A)
    init_from_heads: bool = False               # strategy II: W_i <- member i's own head rows (else random)
    # after early stopping has chosen each stage's epoch count on `val`, train again from the same
    # start on train + val for those epochs: every labelled image of the initiator ends up used
    refit_on_all: bool = False
    seed: int = 0

    @classmethod
    def tuned(cls, **overrides: object) -> "FusionConfig":
        """The measured best settings (docs/fusion.md, ablation): ReLU'd members' features, 8
        augmented copies, feature dropout 0.3, final refit on train + val. The plain constructor
        keeps the paper's eqs. 7-12 as written."""
        base: dict[str, object] = dict(feature_activation="relu", augment_copies=8, feature_dropout=0.3,
                                       refit_on_all=True)
        return cls(**{**base, **overrides})


@dataclass
class FitReport:
    strategy: str
    stages: list[dict] = field(default_factory=list)  # per stage: epochs, best_epoch, best_val_accuracy
    val_accuracy: float = 0.0


def _restrict_index(labels: Sequence[int] | None, num_classes: int) -> tuple[int, ...]:
    labs = tuple(range(num_classes)) if labels is None else tuple(sorted(int(c) for c in labels))
    if not labs or len(set(labs)) != len(labs) or any(not 0 <= c < num_classes for c in labs):
        raise FusionError(f"label set must be distinct classes in 0..{num_classes - 1}, got {labels}")
    return labs


class MetaModel(nn.Module):
    """Frozen members + the fusion network (A, B). `meta(x)` returns 10 logits."""

    def __init__(self, models: Sequence[FeatureModel], labels: Sequence[Sequence[int] | None] | None = None,
                 strategy: Strategy = "II", cfg: FusionConfig | None = None, num_classes: int = 10) -> None:
        super().__init__()
        if strategy not in ("I", "II"):
            raise FusionError(f"strategy must be 'I' or 'II', not {strategy!r}")
        self.strategy: Strategy = strategy
        self.cfg = cfg or FusionConfig()
        self.num_classes = num_classes
        self.members = nn.ModuleList()
        self.label_sets: list[tuple[int, ...]] = []
        self.gamma = 1.0
        self._gen = torch.Generator().manual_seed(self.cfg.seed)
        self.A = nn.Parameter(torch.zeros(0, 0))
        self.B = nn.Parameter(torch.zeros(0, num_classes))
        self.a_bias = nn.Parameter(torch.zeros(0), requires_grad=self.cfg.bias)
        self.b_bias = nn.Parameter(torch.zeros(num_classes), requires_grad=self.cfg.bias)
        self.register_buffer("mask_A", torch.zeros(0, 0))
        self.register_buffer("mask_B", torch.zeros(0, num_classes))
        self.register_buffer("feat_mean", torch.zeros(0))
        self.register_buffer("feat_std", torch.ones(0))
        self._last_data: tuple[Dataset, Dataset] | None = None
        self.fit_report: FitReport | None = None   # of the last fit
        models = list(models)
        if not models:
            raise FusionError("fusion needs at least one verified model")
        labels = list(labels) if labels is not None else [getattr(m, "labels", None) for m in models]
        if len(labels) != len(models):
            raise FusionError(f"{len(models)} models but {len(labels)} label sets")
        for m, labs in zip(models, labels):
            self._append(m, labs)

    # -- structure ------------------------------------------------------------------------------
    @property
    def feature_dim(self) -> int:
        """|f_c|: the concatenated (activated) feature width."""
        return int(sum(m.feature_dim for m in self.members))

    @property
    def hidden_dim(self) -> int:
        return int(sum(len(ls) for ls in self.label_sets))

    def _append(self, model: FeatureModel, labels: Sequence[int] | None) -> None:
        """Grow A by one diagonal block and B by one 'identity' block, keeping trained weights."""
        labs = _restrict_index(labels, self.num_classes)
        model = model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        f_old, h_old = self.A.shape
        f_new, h_new = model.feature_dim, len(labs)
        A = torch.zeros(f_old + f_new, h_old + h_new)
        mask_A = torch.zeros_like(A)
        A[:f_old, :h_old] = self.A.data
        mask_A[:f_old, :h_old] = self.mask_A
        mask_A[f_old:, h_old:] = 1.0
        B = torch.zeros(h_old + h_new, self.num_classes)
        mask_B = torch.zeros_like(B)
        B[:h_old] = self.B.data
        mask_B[:h_old] = self.mask_B
        bound = 1.0 / max(f_new, 1) ** 0.5
        if self.strategy == "II":
            A[f_old:, h_old:] = torch.empty(f_new, h_new).uniform_(-bound, bound, generator=self._gen)
            for k, c in enumerate(labs):
                B[h_old + k, c] = 1.0
                mask_B[h_old + k, c] = 1.0
        else:  # strategy I: dense random start, no structure
            A = torch.empty_like(A).uniform_(-1 / (f_old + f_new) ** 0.5, 1 / (f_old + f_new) ** 0.5, generator=self._gen)
            B = torch.empty_like(B).uniform_(-1 / (h_old + h_new) ** 0.5, 1 / (h_old + h_new) ** 0.5, generator=self._gen)
            mask_A.fill_(1.0)
            mask_B.fill_(1.0)
        self.members.append(model)
        self.label_sets.append(labs)
        self.A = nn.Parameter(A)
        self.B = nn.Parameter(B)
        self.a_bias = nn.Parameter(torch.cat([self.a_bias.data, torch.zeros(h_new)]), requires_grad=self.cfg.bias)
        self.mask_A, self.mask_B = mask_A, mask_B
        self.feat_mean = torch.cat([self.feat_mean, torch.zeros(f_new)])
        self.feat_std = torch.cat([self.feat_std, torch.ones(f_new)])

    def _init_from_heads(self) -> None:
        """Optional warm start of each diagonal block from the member's own classifier head."""
        f0 = h0 = 0
        for m, labs in zip(self.members, self.label_sets):
            head = m.head
            width = m.feature_dim
            if isinstance(head, nn.Linear) and head.in_features == m.feature_dim:
                w = head.weight.detach()[list(labs)].T  # (|f_i|, |l_i|)
                mean, std = self.feat_mean[f0:f0 + width], self.feat_std[f0:f0 + width]
                # z-scored input: (f - mean) / std @ (std * w) + (mean @ w + b) == f @ w + b
                self.A.data[f0:f0 + width, h0:h0 + len(labs)] = w * std.unsqueeze(1)
                if self.cfg.bias and head.bias is not None:
                    self.a_bias.data[h0:h0 + len(labs)] = mean @ w + head.bias.detach()[list(labs)]
            f0, h0 = f0 + width, h0 + len(labs)

    # -- forward --------------------------------------------------------------------------------
    def member_features(self, x: torch.Tensor) -> torch.Tensor:
        """The concatenated feature layer f_c, normalised with the stats of the last fit."""
        with torch.no_grad():
            fc = self._raw_features(x)
        return (fc - self.feat_mean) / self.feat_std

    def _raw_features(self, x: torch.Tensor) -> torch.Tensor:
        fc = torch.cat([m.features(x) for m in self.members], dim=1)
        return F.relu(fc) if self.cfg.feature_activation == "relu" else fc

    def head(self, fc: torch.Tensor) -> torch.Tensor:
        g = self.gamma
        A = self.A * (self.mask_A + g * (1 - self.mask_A))   # eq. 11
        B = self.B * (self.mask_B + g * (1 - self.mask_B))   # eq. 12
        h = fc @ A + self.a_bias
        if self.cfg.hidden_activation == "relu":
            h = F.relu(h)
        return h @ B + self.b_bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.member_features(x))

    def train(self, mode: bool = True) -> "MetaModel":
        super().train(mode)
        self.members.eval()  # members are frozen: never let dropout/BN state move
        return self

    # -- fitting --------------------------------------------------------------------------------
    @torch.no_grad()
    def _features(self, data: Dataset, copies: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = data.tensors()
        xs, ys = [x], [y]
        for _ in range(copies):
            xs.append(random_affine(x, self._gen))
            ys.append(y)
        feats = []
        for xb in xs:
            feats.append(torch.cat([self._raw_features(xb[i:i + 1000]) for i in range(0, len(xb), 1000)]))
        return torch.cat(feats), torch.cat(ys)

    def fit(self, train: Dataset, val: Dataset) -> FitReport:
        """(Re)train the fusion network on the initiator's data; early-stop on `val` accuracy.

        With `refit_on_all`, a second pass retrains from the same start on train + val for the
        epoch counts the first pass chose (the reported accuracy stays the first pass's)."""
        if len(train) == 0 or len(val) == 0:
            raise FusionError("fusion needs non-empty train and validation data")
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        self._last_data = (train, val)
        ftr, ytr = self._features(train, cfg.augment_copies)
        # the refit also trains on val's augmented copies: one pass of the members over val serves both
        fall, yall = self._features(val, cfg.augment_copies if cfg.refit_on_all else 0)
        yva = yall[:len(val)]
        if cfg.normalize:
            self.feat_mean = ftr.mean(0)
            self.feat_std = ftr.std(0).clamp_min(1e-3)
        else:
            self.feat_mean = torch.zeros(ftr.shape[1])
            self.feat_std = torch.ones(ftr.shape[1])
        ftr = (ftr - self.feat_mean) / self.feat_std
        fall = (fall - self.feat_mean) / self.feat_std
        fva = fall[:len(val)]
        if self.strategy == "II" and cfg.init_from_heads:
            self._init_from_heads()
        start = self._head_state()
        report = FitReport(self.strategy)
        for gamma, params in self._stages():
            self.gamma = gamma
            report.stages.append(self._train_stage(params, ftr, ytr, fva, yva))
        if cfg.refit_on_all:
            ftr, ytr = torch.cat([ftr, fall]), torch.cat([ytr, yall])
            self._load_head_state(start)
            for (gamma, params), stage in zip(self._stages(), report.stages):
                self.gamma = gamma
                self._train_stage(params, ftr, ytr, fva, yva, fixed_epochs=stage["best_epoch"])
        self.gamma = 1.0
        report.val_accuracy = report.stages[-1]["best_val_accuracy"]
        self.fit_report = report
        self.eval()
        return report

    def _stages(self) -> list[tuple[float, list[nn.Parameter]]]:
        """(gamma, trainable parameters) per stage: eqs. 11-12's two stages, or one for strategy I."""
        head = [p for p in (self.A, self.a_bias) if p.requires_grad]
        out = [p for p in (self.B, self.b_bias) if p.requires_grad]
        return [(0.0, head), (1.0, head + out)] if self.strategy == "II" else [(1.0, head + out)]

    def _train_stage(self, params: list[nn.Parameter], ftr: torch.Tensor, ytr: torch.Tensor,
                     fva: torch.Tensor, yva: torch.Tensor, fixed_epochs: int | None = None) -> dict:
        """Adam until `val` accuracy stalls for `patience` epochs, keeping the best weights; or,
        with `fixed_epochs`, exactly that many epochs and the last weights."""
        cfg = self.cfg
        opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        gen = torch.Generator().manual_seed(cfg.seed)
        if fixed_epochs is not None:
            for _ in range(fixed_epochs):
                self._epoch(opt, gen, ftr, ytr)
            return {"gamma": self.gamma, "epochs": fixed_epochs}
        best_acc, best_epoch, best_state = self._accuracy(fva, yva), 0, self._head_state()
        epoch = 0
        for epoch in range(1, cfg.max_epochs + 1):
            self._epoch(opt, gen, ftr, ytr)
            acc = self._accuracy(fva, yva)
            if acc > best_acc:
                best_acc, best_epoch, best_state = acc, epoch, self._head_state()
            if epoch - best_epoch >= cfg.patience:
                break
        self._load_head_state(best_state)
        return {"gamma": self.gamma, "epochs": epoch, "best_epoch": best_epoch, "best_val_accuracy": best_acc}

    def _epoch(self, opt: torch.optim.Optimizer, gen: torch.Generator, ftr: torch.Tensor, ytr: torch.Tensor) -> None:
        self.train()
        perm = torch.randperm(len(ftr), generator=gen)
        for i in range(0, len(ftr), self.cfg.batch_size):
            idx = perm[i:i + self.cfg.batch_size]
            fb = F.dropout(ftr[idx], self.cfg.feature_dropout) if self.cfg.feature_dropout else ftr[idx]
            loss = F.cross_entropy(self.head(fb), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    @torch.no_grad()
    def _accuracy(self, f: torch.Tensor, y: torch.Tensor) -> float:
        self.eval()
        return (self.head(f).argmax(1) == y).float().mean().item()

    def _head_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in (("A", self.A), ("B", self.B), ("a_bias", self.a_bias),
                                                   ("b_bias", self.b_bias))}

    def _load_head_state(self, state: dict[str, torch.Tensor]) -> None:
        for k, v in state.items():
            getattr(self, k).data.copy_(v)

    # -- growth ---------------------------------------------------------------------------------
    def add_model(self, model: FeatureModel, labels: Sequence[int] | None = None,
                  train: Dataset | None = None, val: Dataset | None = None) -> FitReport | None:
        """Extend the MetaModel with a newly verified model and refit (warm start).

        The trained blocks of the existing members are kept; the new member gets a fresh block
        (strategy II) or the whole network a fresh start (strategy I, which has no blocks).
        Refits on `train`/`val`, or on the data of the previous fit; returns None if neither exists.
        """
        self._append(model, labels if labels is not None else getattr(model, "labels", None))
        data = (train, val) if train is not None and val is not None else self._last_data
        return self.fit(*data) if data is not None else None


def fuse(models: Sequence[FeatureModel], train: Dataset, val: Dataset, strategy: Strategy = "II",
         cfg: FusionConfig | None = None, labels: Sequence[Sequence[int] | None] | None = None) -> MetaModel:
    """Build and train a MetaModel from verified private models on the initiator's data.

    `labels[i]` is the label set model i was trained on (default: the model's `labels`
    attribute if any, else all classes). The fit report is kept in `meta.fit_report`.
    """
    meta = MetaModel(models, labels, strategy, cfg)
    meta.fit(train, val)
    return meta


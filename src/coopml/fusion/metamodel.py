"""Feature-level fusion of verified private models into a MetaModel (paper section IV-D).

The private models stay frozen; their upper-layer feature vectors f_i are concatenated into
f_c, a hidden layer h of size sum_i |l_i| (|l_i| = number of classes model i was trained on)
is computed as h = f_c A (eq. 7/11) and the output as softmax(h B) (eq. 8/12).

Strategy I trains A and B from a random start. Strategy II is the paper's gradual fusion:
A starts block-diagonal (block W_i maps f_i to model i's |l_i| hidden units, eq. 9) and B as
the stacked identities (eq. 10) -- with partial label sets, hidden unit k of block i is wired to
the global class l_i[k], which is the identity when l_i is all d classes. Stage 1 (gamma = 0)
trains only the diagonal blocks of A; stage 2 (gamma = 1) trains every weight of A and B.

Extension (`FusionConfig.block_branch`, documented in docs/fusion.md): each member's block may
add a small nonlinear branch g_i(f_i) to its own |l_i| hidden units -- a 3x3 convolution over
the member's feature maps when it has spatial features, a one-hidden-layer MLP otherwise. The
branch's output layer starts at zero, so the initial network is exactly eqs. 9-10; stage 1
trains it with W_i (it belongs to block i), stage 2 with everything.

Because the members are frozen, their features are computed once (`coopml.fusion.fuser`) and
the fusion network trains on cached tensors.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, cast

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field, ValidationError
from torch import nn

from coopml.data.datasets import Dataset
from coopml.data.spec import InputSpec
from coopml.errors import Cancelled
from coopml.fusion.members import FeatureExtractor, FusionError, as_member

if TYPE_CHECKING:
    from coopml.fusion.fuser import FeatureCache

Strategy = Literal["I", "II"]
Data = Dataset | tuple[torch.Tensor, torch.Tensor]


class FusionCancelled(FusionError, Cancelled):
    """A fit was stopped by its caller (`should_stop`); the previous MetaModel is untouched."""


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
    augment_copies: int = Field(0, ge=0)        # extra randomly distorted copies of image inputs
    feature_dropout: float = Field(0.0, ge=0, lt=1)   # dropout on f_c while training (regularises A)
    init_from_heads: bool = False               # strategy II: W_i <- member i's own head rows (else random)
    # after early stopping has chosen each stage's epoch count on `val`, train again from the same
    # start on train + val for those epochs: every labelled image of the initiator ends up used
    refit_on_all: bool = False
    # extension: a nonlinear branch inside each member's block ("auto": conv over spatial features,
    # MLP over flat ones; "maps": conv over spatial features, none for flat ones); its output
    # layer starts at zero so the start is still eqs. 9-10
    block_branch: Literal["none", "auto", "mlp", "maps"] = "none"
    branch_width: int = Field(32, ge=1)
    # extension: one branch over all members' features together, feeding every hidden unit: a
    # conv over their stacked feature maps when all have maps of one H x W ("maps": only then;
    # "auto": else an MLP over f_c); it crosses blocks, so strategy II trains it in stage 2 only
    # (like A's off-diagonal blocks)
    joint_branch: Literal["none", "maps", "auto"] = "none"
    joint_width: int = Field(64, ge=1)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    ensemble: int = Field(1, ge=1)              # independently initialised heads, softmax averaged
    # warm start (IncrementalFuser): epochs per stage when the previous head is kept; None = as cold
    warm_max_epochs: int | None = Field(None, ge=1)
    # members whose body is affine (Table IV) run as one matmul over the cached inputs
    # (`TorchMember.affine_map`): ~10x faster features, equal up to float rounding
    affine_features: bool = False
    seed: int = 0

    @classmethod
    def tuned(cls, **overrides: object) -> FusionConfig:
        """The measured best settings before the block branch (docs/fusion.md, ablation): ReLU'd
        members' features, 8 augmented copies, feature dropout 0.3, final refit on train + val.
        The plain constructor keeps the paper's eqs. 7-12 as written."""
        base: dict[str, object] = {"feature_activation": "relu", "augment_copies": 8, "feature_dropout": 0.3,
                                   "refit_on_all": True}
        return cls.model_validate({**base, **overrides})

    @classmethod
    def spatial(cls, **overrides: object) -> FusionConfig:
        """`tuned()` plus conv branches over members' feature maps (Table IV's 16 x 7 x 7 pooled
        maps: one per member's block and one over all members' maps stacked), 16 augmented
        copies, batches of 200 at lr 2e-3. Chosen on validation accuracy for Case Study II
        (docs/fusion.md, ablation); members with flat features get no branch."""
        base: dict[str, object] = {"block_branch": "maps", "joint_branch": "maps", "augment_copies": 16,
                                   "batch_size": 200, "lr": 2e-3}
        return cls.tuned(**{**base, **overrides})

    @classmethod
    def live(cls, **overrides: object) -> FusionConfig:
        """The initiator's preset for refits inside the task lifecycle (benchmarks/bench_fusion.py):
        fewer augmented copies, batches of 500 at 2.5x the learning rate, 30 epochs per stage with
        patience 4, warm-started refits at most 15, affine members' features as one matmul. Same test
        accuracy as the earlier batch-200 / 40-epoch preset over seeds 0-2, ~3x cheaper refits."""
        base: dict[str, object] = {"feature_activation": "relu", "augment_copies": 4, "feature_dropout": 0.3,
                                   "refit_on_all": True, "batch_size": 500, "lr": 2.5e-3, "max_epochs": 30,
                                   "patience": 4, "warm_max_epochs": 15, "affine_features": True}
        return cls.model_validate({**base, **overrides})


@dataclass
class FitReport:
    strategy: str
    stages: list[dict] = field(default_factory=list)  # per stage: epochs, best_epoch, best_val_accuracy
    val_accuracy: float = 0.0
    seconds: float = 0.0
    warm_start: bool = False


# ----------------------------------------------------------------------------- the head


def _branch(width: int, feature_dim: int, feature_shape: Sequence[int] | None, out: int) -> nn.Sequential:
    """g_i: a 3x3 conv + 2x2 max-pool over (C, H, W) feature maps, else a one-hidden-layer MLP.
    The last layer is zero-initialised: the branch adds nothing until it is trained."""
    if feature_shape is not None and len(feature_shape) == 3 and min(feature_shape[1:]) >= 2:
        c, h, w = (int(s) for s in feature_shape)
        last = nn.Linear(width * math.ceil(h / 2) * math.ceil(w / 2), out)
        layers: list[nn.Module] = [nn.Unflatten(1, (c, h, w)), nn.Conv2d(c, width, 3, padding=1), nn.ReLU(),
                                   nn.MaxPool2d(2, ceil_mode=True), nn.Flatten(), last]
    else:
        last = nn.Linear(width, out)
        layers = [nn.Linear(feature_dim, width), nn.ReLU(), last]
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return nn.Sequential(*layers)


class _NoBranch(nn.Module):
    """The block branch of a member that gets none (`block_branch="maps"`, flat features): zeros."""

    def __init__(self, out: int) -> None:
        super().__init__()
        self.out = out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(len(x), self.out)


def _stacked_maps(shapes: Sequence[tuple[int, ...] | None]) -> tuple[int, int, int] | None:
    """(sum of channels, H, W) when every member's features are (C, H, W) maps of one H x W."""
    if not shapes or any(s is None or len(s) != 3 for s in shapes):
        return None
    hw = {tuple(s[1:]) for s in shapes if s is not None}
    if len(hw) != 1:
        return None
    h, w = hw.pop()
    return (sum(int(s[0]) for s in shapes if s is not None), int(h), int(w)) if min(h, w) >= 2 else None


class JointBranch(nn.Module):
    """g(f_c): a 3x3 conv + 2x2 max-pool over all members' feature maps stacked channel-wise
    (or an MLP over f_c when they are not maps of one size), added to every hidden unit — the
    layers of `_branch`, over all members at once (built here, conv before output layer, so that
    seeded results stay as measured). The output layer starts at zero; `grown` adds input
    channels / hidden units with zero weights, so a warm-started head computes the same function
    after a member joins."""

    def __init__(self, width: int, feature_dims: Sequence[int], shapes: Sequence[tuple[int, ...] | None],
                 out: int) -> None:
        super().__init__()
        self.width = width
        self.maps = _stacked_maps(shapes)
        self.shapes = [tuple(s) if s is not None else None for s in shapes]
        self.feature_dims = list(feature_dims)
        if self.maps is not None:
            c, h, w = self.maps
            self.inner: nn.Conv2d | nn.Linear = nn.Conv2d(c, width, 3, padding=1)
            self.last = nn.Linear(width * math.ceil(h / 2) * math.ceil(w / 2), out)
        else:
            self.inner = nn.Linear(sum(feature_dims), width)
            self.last = nn.Linear(width, out)
        nn.init.zeros_(self.last.weight)
        nn.init.zeros_(self.last.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.maps is None:
            return self.last(F.relu(self.inner(x)))
        z = F.relu(self.inner(x.reshape(len(x), *self.maps)))   # members' maps are contiguous in f_c
        return self.last(torch.flatten(F.max_pool2d(z, 2, ceil_mode=True), 1))

    @torch.no_grad()
    def grown(self, feature_dims: Sequence[int], shapes: Sequence[tuple[int, ...] | None], out: int) -> JointBranch:
        """This branch for more members: same function on the old inputs and hidden units."""
        new = JointBranch(self.width, feature_dims, shapes, out)
        if (self.maps is None) != (new.maps is None) or (self.maps and new.maps and self.maps[1:] != new.maps[1:]):
            return new   # the layout changed (a member without maps joined): restart at zero
        old_in, old_out = self.inner.weight.shape[1], self.last.weight.shape[0]
        new.inner.weight.zero_()
        new.inner.weight[:, :old_in] = self.inner.weight
        if new.inner.bias is not None and self.inner.bias is not None:
            new.inner.bias.copy_(self.inner.bias)
        new.last.weight[:old_out] = self.last.weight
        new.last.bias[:old_out] = self.last.bias
        return new


class FusionHead(nn.Module):
    """The fusion network on normalised f_c: h = f_c A + a (+ g_i(f_i) on block i), y = h B + b.

    Effective weights follow eqs. 11-12: `A * (mask + gamma (1 - mask))`, where the mask marks
    the diagonal blocks (strategy II) or everything (strategy I)."""

    mask_A: torch.Tensor
    mask_B: torch.Tensor

    def __init__(self, strategy: Strategy, num_classes: int, cfg: FusionConfig, seed: int) -> None:
        super().__init__()
        self.strategy: Strategy = strategy
        self.num_classes = num_classes
        self.cfg = cfg
        self.gamma = 1.0
        self._gen = torch.Generator().manual_seed(seed)
        self.A = nn.Parameter(torch.zeros(0, 0))
        self.B = nn.Parameter(torch.zeros(0, num_classes))
        self.a_bias = nn.Parameter(torch.zeros(0), requires_grad=cfg.bias)
        self.b_bias = nn.Parameter(torch.zeros(num_classes), requires_grad=cfg.bias)
        self.register_buffer("mask_A", torch.zeros(0, 0))
        self.register_buffer("mask_B", torch.zeros(0, num_classes))
        self.branches = nn.ModuleList()
        self.joint: JointBranch | None = None
        self.label_sets: list[tuple[int, ...]] = []
        self.feature_dims: list[int] = []
        self.feature_shapes: list[tuple[int, ...] | None] = []
        self.selection_state: dict[str, torch.Tensor] | None = None   # see train_head

    @property
    def hidden_dim(self) -> int:
        return int(sum(len(ls) for ls in self.label_sets))

    def append(self, feature_dim: int, labels: Sequence[int]) -> None:
        """Grow A by one diagonal block and B by one 'identity' block, keeping trained weights.
        The member's branch (if configured) is built by `build_branches` once its feature shape
        is known; it starts at zero, so building it later changes nothing."""
        labs = tuple(labels)
        f_old, h_old = self.A.shape
        f_new, h_new = feature_dim, len(labs)
        C = self.num_classes
        A = torch.zeros(f_old + f_new, h_old + h_new)
        mask_A = torch.zeros_like(A)
        A[:f_old, :h_old] = self.A.data
        mask_A[:f_old, :h_old] = self.mask_A
        mask_A[f_old:, h_old:] = 1.0
        B = torch.zeros(h_old + h_new, C)
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
            fa, hb = (f_old + f_new) ** -0.5, (h_old + h_new) ** -0.5
            A = torch.empty_like(A).uniform_(-fa, fa, generator=self._gen)
            B = torch.empty_like(B).uniform_(-hb, hb, generator=self._gen)
            mask_A.fill_(1.0)
            mask_B.fill_(1.0)
        self.A = nn.Parameter(A)
        self.B = nn.Parameter(B)
        self.a_bias = nn.Parameter(torch.cat([self.a_bias.data, torch.zeros(h_new)]), requires_grad=self.cfg.bias)
        self.mask_A, self.mask_B = mask_A, mask_B
        self.label_sets.append(labs)
        self.feature_dims.append(f_new)
        self.feature_shapes.append(None)

    def build_branches(self, shapes: Sequence[Sequence[int] | None]) -> None:
        """Create the block branches still missing (one per member, in order) and grow the joint
        branch to every member."""
        for i, given in enumerate(shapes[:len(self.feature_dims)]):
            shape = tuple(int(s) for s in given) if given is not None else None
            if shape is not None and math.prod(shape) != self.feature_dims[i]:
                raise FusionError(f"member {i}: feature shape {shape} does not hold {self.feature_dims[i]} features")
            if shape is not None or i >= len(self.branches):
                self.feature_shapes[i] = shape
        joint = self.cfg.joint_branch
        if joint == "maps" and _stacked_maps(self.feature_shapes) is None:
            self.joint = None   # a member without maps of the same size: no joint branch
        elif joint != "none" and (self.joint is None or self.joint.shapes != self.feature_shapes):
            with self._own_rng():
                if self.joint is None:
                    self.joint = JointBranch(self.cfg.joint_width, self.feature_dims, self.feature_shapes,
                                             self.hidden_dim)
                else:
                    self.joint = self.joint.grown(self.feature_dims, self.feature_shapes, self.hidden_dim)
        if self.cfg.block_branch == "none":
            return
        for i in range(len(self.branches), len(self.feature_dims)):
            shape = self.feature_shapes[i]
            if self.cfg.block_branch == "maps" and (shape is None or len(shape) != 3):
                self.branches.append(_NoBranch(len(self.label_sets[i])))   # flat features: no branch
                continue
            use_shape = shape if self.cfg.block_branch in ("auto", "maps") else None
            with self._own_rng():
                self.branches.append(_branch(self.cfg.branch_width, self.feature_dims[i], use_shape,
                                             len(self.label_sets[i])))

    @contextlib.contextmanager
    def _own_rng(self) -> Iterator[None]:
        """Layers built inside draw their init from this head's generator: torch's layer init
        draws from the global RNG, which stays untouched."""
        with torch.random.fork_rng():
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=self._gen)))
            yield

    def effective(self) -> tuple[torch.Tensor, torch.Tensor]:
        g = self.gamma
        if g == 1.0:
            return self.A, self.B
        return self.A * (self.mask_A + g * (1 - self.mask_A)), self.B * (self.mask_B + g * (1 - self.mask_B))

    def forward(self, fc: torch.Tensor, drop_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits for normalised features; `drop_mask` (already scaled by 1/(1-p)) is the
        feature dropout applied while training."""
        A, B = self.effective()     # eqs. 11-12
        x = fc * drop_mask if drop_mask is not None else fc
        h = x @ A + self.a_bias
        if len(self.branches):
            if len(self.branches) != len(self.feature_dims):
                raise FusionError("fusion head has members without a branch: call build_branches first")
            parts, f0 = [], 0
            for br, width in zip(self.branches, self.feature_dims):
                parts.append(br(x[:, f0:f0 + width]))
                f0 += width
            h = h + torch.cat(parts, 1)
        if self.joint is not None:
            h = h + self.joint(x)
        if self.cfg.hidden_activation == "relu":
            h = F.relu(h)
        return h @ B + self.b_bias

    def stages(self) -> list[tuple[float, list[nn.Parameter]]]:
        """(gamma, trainable parameters) per stage: eqs. 11-12's two stages, or one for strategy I.
        A member's branch belongs to its block, so it trains in both stages; the joint branch
        crosses blocks, so it trains in stage 2 only."""
        head = [p for p in (self.A, self.a_bias) if p.requires_grad] + list(self.branches.parameters())
        out = [p for p in (self.B, self.b_bias) if p.requires_grad]
        joint = list(self.joint.parameters()) if self.joint is not None else []
        return [(0.0, head), (1.0, head + out + joint)] if self.strategy == "II" else [(1.0, head + out + joint)]

    def snapshot(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.state_dict().items()}

    def restore(self, state: dict[str, torch.Tensor]) -> None:
        self.load_state_dict(state)

    def init_from_heads(self, heads: Sequence[tuple[torch.Tensor, torch.Tensor | None] | None],
                        mean: torch.Tensor, std: torch.Tensor) -> None:
        """Warm start of each diagonal block from the member's own linear head (weight [C, f_i],
        bias [C]), rewritten for z-scored input: (f - m)/s @ (s w) + (m @ w + b) == f @ w + b."""
        f0 = h0 = 0
        for wb, labs, width in zip(heads, self.label_sets, self.feature_dims):
            if wb is not None and wb[0].shape[1] == width:
                w = wb[0].detach()[list(labs)].T
                self.A.data[f0:f0 + width, h0:h0 + len(labs)] = w * std[f0:f0 + width].unsqueeze(1)
                if self.cfg.bias and wb[1] is not None:
                    self.a_bias.data[h0:h0 + len(labs)] = mean[f0:f0 + width] @ w + wb[1].detach()[list(labs)]
            f0, h0 = f0 + width, h0 + len(labs)


# ----------------------------------------------------------------------------- training


@dataclass
class FeatureSet:
    """Cached, normalised features of the initiator's data: train copies, val (clean) and the
    val copies the final refit also trains on."""

    train: torch.Tensor
    train_y: torch.Tensor
    val: torch.Tensor
    val_y: torch.Tensor
    val_all: torch.Tensor       # clean val first, then its augmented copies (refit_on_all)
    val_all_y: torch.Tensor


def _check(should_stop: Callable[[], bool] | None) -> None:
    if should_stop is not None and should_stop():
        raise FusionCancelled("fit cancelled by the caller")


def train_head(head: FusionHead, data: FeatureSet, cfg: FusionConfig, seed: int, max_epochs: int,
               should_stop: Callable[[], bool] | None = None) -> list[dict]:
    """Both stages (or one) with early stopping on clean val accuracy; with `refit_on_all`,
    retrain from the same start on train + val for the chosen epoch counts."""
    start = head.snapshot()
    reports = []
    for gamma, params in head.stages():
        head.gamma = gamma
        reports.append(_train_stage(head, params, data.train, data.train_y, data.val, data.val_y, cfg, seed,
                                    max_epochs, should_stop=should_stop))
    if cfg.refit_on_all:
        # kept for the next warm start: weights that never trained on val, so early stopping on
        # val stays honest when this head is grown by a new member
        head.selection_state = head.snapshot()
        ftr, ytr = torch.cat([data.train, data.val_all]), torch.cat([data.train_y, data.val_all_y])
        head.restore(start)
        for (gamma, params), stage in zip(head.stages(), reports):
            head.gamma = gamma
            _train_stage(head, params, ftr, ytr, data.val, data.val_y, cfg, seed, max_epochs,
                         fixed_epochs=stage["best_epoch"], should_stop=should_stop)
    head.gamma = 1.0
    head.eval()
    return reports


def _train_stage(head: FusionHead, params: list[nn.Parameter], ftr: torch.Tensor, ytr: torch.Tensor,
                 fva: torch.Tensor, yva: torch.Tensor, cfg: FusionConfig, seed: int, max_epochs: int,
                 fixed_epochs: int | None = None, should_stop: Callable[[], bool] | None = None) -> dict:
    """Adam until `val` accuracy stalls for `patience` epochs, keeping the best weights; or,
    with `fixed_epochs`, exactly that many epochs and the last weights."""
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)
    gen = torch.Generator().manual_seed(seed)
    if fixed_epochs is not None:
        for _ in range(fixed_epochs):
            _check(should_stop)
            _epoch(head, opt, gen, ftr, ytr, cfg)
        return {"gamma": head.gamma, "epochs": fixed_epochs}
    best_acc, best_epoch, best_state = _accuracy(head, fva, yva), 0, head.snapshot()
    epoch = 0
    for epoch in range(1, max_epochs + 1):
        _check(should_stop)
        _epoch(head, opt, gen, ftr, ytr, cfg)
        acc = _accuracy(head, fva, yva)
        if acc > best_acc:
            best_acc, best_epoch, best_state = acc, epoch, head.snapshot()
        if epoch - best_epoch >= cfg.patience:
            break
    head.restore(best_state)
    return {"gamma": head.gamma, "epochs": epoch, "best_epoch": best_epoch, "best_val_accuracy": best_acc}


DROPOUT_BANK = 1024


def _dropout_bank(width: int, p: float, gen: torch.Generator) -> torch.Tensor | None:
    """DROPOUT_BANK inverted-dropout masks; each training example draws one at random per step.
    Per example this is ordinary dropout, at a fraction of the random numbers: drawing a fresh
    [batch, |f_c|] Bernoulli mask every step was a quarter of a refit's time."""
    if p == 0:
        return None
    return (torch.rand(DROPOUT_BANK, width, generator=gen) >= p).float() / (1 - p)


def _epoch(head: FusionHead, opt: torch.optim.Optimizer, gen: torch.Generator, ftr: torch.Tensor,
           ytr: torch.Tensor, cfg: FusionConfig) -> None:
    head.train()
    bank = _dropout_bank(ftr.shape[1], cfg.feature_dropout, gen)
    perm = torch.randperm(len(ftr), generator=gen)
    # the batch and its masks are gathered into buffers reused every step: a fresh multi-MB tensor
    # per gather cost more (page faults) than the copy itself; the values are the same
    size = min(cfg.batch_size, len(ftr))
    xbuf = torch.empty(size, ftr.shape[1], dtype=ftr.dtype)
    mbuf = torch.empty(size, ftr.shape[1], dtype=bank.dtype) if bank is not None else None
    for i in range(0, len(ftr), cfg.batch_size):
        idx = perm[i:i + cfg.batch_size]
        x = torch.index_select(ftr, 0, idx, out=xbuf[:len(idx)])
        if bank is not None and mbuf is not None:
            rows = torch.randint(0, DROPOUT_BANK, (len(idx),), generator=gen)
            x.mul_(torch.index_select(bank, 0, rows, out=mbuf[:len(idx)]))
        loss = F.cross_entropy(head(x), ytr[idx], label_smoothing=cfg.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


@torch.no_grad()
def _accuracy(head: FusionHead, f: torch.Tensor, y: torch.Tensor) -> float:
    head.eval()
    return (head(f).argmax(1) == y).float().mean().item()


# ----------------------------------------------------------------------------- the MetaModel


def data_tensors(data: Data, where: str = "data") -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, integer labels) from a coopml Dataset or a pair of tensors."""
    if isinstance(data, Dataset):
        return data.tensors()
    if isinstance(data, tuple) and len(data) == 2:
        x, y = (torch.as_tensor(v) for v in data)
        if len(x) != len(y) or y.dim() != 1:
            raise FusionError(f"{where}: inputs {tuple(x.shape)} and labels {tuple(y.shape)} do not pair up")
        return x.float(), y.long()
    raise FusionError(f"{where}: expected a Dataset or an (inputs, labels) pair, got {type(data).__name__}")


class MetaModel(nn.Module):
    """Frozen members + the fusion network. `meta(x)` returns `num_classes` logits (with an
    ensemble: log of the mean softmax, which argmax-predicts the same way)."""

    feat_mean: torch.Tensor
    feat_std: torch.Tensor

    def __init__(self, models: Sequence[object], labels: Sequence[Sequence[int] | None] | None = None,
                 strategy: Strategy = "II", cfg: FusionConfig | None = None, num_classes: int | None = None,
                 feature_shapes: Sequence[Sequence[int] | None] | None = None) -> None:
        super().__init__()
        if strategy not in ("I", "II"):
            raise FusionError(f"strategy must be 'I' or 'II', not {strategy!r}")
        self.strategy: Strategy = strategy
        self.cfg = cfg or FusionConfig()
        models = list(models)
        if not models:
            raise FusionError("fusion needs at least one verified model")
        labels = list(labels) if labels is not None else [None] * len(models)
        if len(labels) != len(models):
            raise FusionError(f"{len(models)} models but {len(labels)} label sets")
        members = [as_member(m, labs) for m, labs in zip(models, labels)]
        self.num_classes = num_classes if num_classes is not None else infer_num_classes(members)
        self.members: list[FeatureExtractor] = []
        self.heads = nn.ModuleList([FusionHead(strategy, self.num_classes, self.cfg, self.cfg.seed + 7919 * j)
                                    for j in range(self.cfg.ensemble)])
        self.register_buffer("feat_mean", torch.zeros(0))
        self.register_buffer("feat_std", torch.ones(0))
        self.input_shape: tuple[int, ...] | None = None
        self.class_names: list[str] = [str(c) for c in range(self.num_classes)]
        self.task_manifest: str | None = None
        self.member_keys: list[str] | None = None   # names of the members in the MetaModel file
        self.fit_report: FitReport | None = None   # of the last fit
        self._last_data: tuple[Data, Data] | None = None
        for m in members:
            self._append(m)
        if feature_shapes is not None:
            self.build_branches(feature_shapes)

    # -- structure ------------------------------------------------------------------------------
    @property
    def label_sets(self) -> list[tuple[int, ...]]:
        return [tuple(m.labels) for m in self.members]

    @property
    def feature_dim(self) -> int:
        """|f_c|: the concatenated (activated) feature width."""
        return int(sum(m.feature_dim for m in self.members))

    @property
    def fusion_heads(self) -> list[FusionHead]:
        return [cast(FusionHead, h) for h in self.heads]

    @property
    def hidden_dim(self) -> int:
        return self.fusion_heads[0].hidden_dim

    # the first head's tensors, under the paper's names
    @property
    def A(self) -> nn.Parameter:
        return self.fusion_heads[0].A

    @property
    def B(self) -> nn.Parameter:
        return self.fusion_heads[0].B

    @property
    def a_bias(self) -> nn.Parameter:
        return self.fusion_heads[0].a_bias

    @property
    def b_bias(self) -> nn.Parameter:
        return self.fusion_heads[0].b_bias

    @property
    def mask_A(self) -> torch.Tensor:
        return self.fusion_heads[0].mask_A

    @property
    def gamma(self) -> float:
        return self.fusion_heads[0].gamma

    @gamma.setter
    def gamma(self, g: float) -> None:
        for h in self.fusion_heads:
            h.gamma = g

    def _append(self, model: object, labels: Sequence[int] | None = None) -> None:
        """Add a member: one more diagonal block of A and 'identity' block of B in every head."""
        member = as_member(model, labels)
        if max(member.labels) >= self.num_classes:
            raise FusionError(f"label set {list(member.labels)} has classes outside 0..{self.num_classes - 1}")
        for h in self.fusion_heads:
            h.append(member.feature_dim, member.labels)
        self.members.append(member)
        self.feat_mean = torch.cat([self.feat_mean, torch.zeros(member.feature_dim)])
        self.feat_std = torch.cat([self.feat_std, torch.ones(member.feature_dim)])

    def build_branches(self, shapes: Sequence[Sequence[int] | None] | None = None) -> None:
        """Build the block branches of members that have none yet; a member's feature shape is
        `shapes[i]`, else its `feature_shape` attribute (known once it has run), else flat."""
        if shapes is None:
            shapes = [getattr(m, "feature_shape", None) for m in self.members]
        for h in self.fusion_heads:
            h.build_branches(shapes)

    # -- forward --------------------------------------------------------------------------------
    @torch.no_grad()
    def raw_features(self, x: torch.Tensor) -> torch.Tensor:
        """f_c before normalisation: each member's features (ReLU'd if configured), concatenated."""
        fs = []
        for m in self.members:
            f = m.features(x)
            if f.dim() != 2 or f.shape[1] != m.feature_dim:
                raise FusionError(f"member {m!r} returned features of shape {tuple(f.shape)}, "
                                  f"declared feature_dim {m.feature_dim}")
            fs.append(f.float())
        fc = torch.cat(fs, dim=1)
        return F.relu(fc) if self.cfg.feature_activation == "relu" else fc

    def member_features(self, x: torch.Tensor) -> torch.Tensor:
        """The concatenated feature layer f_c, normalised with the stats of the last fit."""
        return (self.raw_features(x) - self.feat_mean) / self.feat_std

    @torch.no_grad()
    def logits_from_features(self, fc: torch.Tensor) -> torch.Tensor:
        """Logits from f_c as `raw_features` gives it (members' features, activated, concatenated):
        for a caller that already holds the members' features (`FeatureCache.features`)."""
        if fc.dim() != 2 or fc.shape[1] != self.feature_dim:
            raise FusionError(f"features of shape {tuple(fc.shape)}; this MetaModel takes [N, {self.feature_dim}]")
        was = self.training
        self.eval()
        try:
            return self.head((fc - self.feat_mean) / self.feat_std)
        finally:
            self.train(was)

    def head(self, fc: torch.Tensor) -> torch.Tensor:
        heads = self.fusion_heads
        if len(heads) == 1:
            return heads[0](fc)
        probs = torch.stack([h(fc).softmax(1) for h in heads]).mean(0)
        return probs.clamp_min(1e-12).log()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_shape is not None and tuple(x.shape[1:]) != self.input_shape:
            raise FusionError(f"MetaModel expects inputs of shape [N, {', '.join(map(str, self.input_shape))}], "
                              f"got {list(x.shape)}")
        return self.head(self.member_features(x))

    @property
    def input_spec(self) -> InputSpec | None:
        """The task's InputSpec, when the task manifest stored with the MetaModel gives one."""
        if not self.task_manifest:
            return None
        try:
            raw = json.loads(self.task_manifest)
            return InputSpec.model_validate(raw["input"]) if isinstance(raw, dict) and "input" in raw else None
        except (json.JSONDecodeError, ValidationError):
            return None

    @torch.no_grad()
    def predict(self, x: torch.Tensor | np.ndarray, batch_size: int = 1000) -> torch.Tensor:
        """Class indices for a batch. Raw integer samples (e.g. uint8 pixels) are preprocessed as
        the task's InputSpec says (without a task manifest: uint8 scaled to [0, 1], the coopml
        datasets' preprocessing); a missing channel axis of single-channel images is added.
        Float inputs are taken as already preprocessed."""
        spec = self.input_spec
        is_int = (not torch.as_tensor(x[:0]).is_floating_point()) if len(x) else False
        if spec is not None and is_int:
            t = torch.from_numpy(spec.apply(np.asarray(x)))
        else:
            t = torch.as_tensor(x)
        if t.dtype == torch.uint8:
            t = t.float().div_(255.0)
        if self.input_shape is not None and t.dim() == len(self.input_shape) and self.input_shape[0] == 1:
            t = t.unsqueeze(1)
        self.eval()
        out = [self(t[i:i + batch_size]).argmax(1) for i in range(0, len(t), batch_size)]
        return torch.cat(out) if out else torch.empty(0, dtype=torch.long)

    def train(self, mode: bool = True) -> MetaModel:
        super().train(mode)
        for m in self.members:  # members are frozen: never let dropout/BN state move
            if isinstance(m, nn.Module):
                m.eval()
            elif isinstance(getattr(m, "model", None), nn.Module):
                m.model.eval()  # type: ignore[attr-defined]
        return self

    # -- fitting --------------------------------------------------------------------------------
    def fit(self, train: Data, val: Data, should_stop: Callable[[], bool] | None = None) -> FitReport:
        """(Re)train the fusion network on the initiator's data; early-stop on `val` accuracy.

        With `refit_on_all`, a second pass retrains from the same start on train + val for the
        epoch counts the first pass chose (the reported accuracy stays the first pass's)."""
        from coopml.fusion.fuser import FeatureCache
        cache = FeatureCache(train, val, self.cfg)
        for m in self.members:
            cache.add(m)
        self._last_data = (train, val)
        return self.fit_cached(cache, should_stop=should_stop)

    def fit_cached(self, cache: FeatureCache, warm: bool = False,
                   should_stop: Callable[[], bool] | None = None) -> FitReport:
        """Train every head on features already cached for exactly these members."""
        import time
        t0 = time.perf_counter()
        data, mean, std = cache.feature_set(self.members, self.cfg)
        self.build_branches()
        self.input_shape = cache.input_shape
        self.feat_mean, self.feat_std = mean, std
        cfg = self.cfg
        if self.strategy == "II" and cfg.init_from_heads and not warm:
            heads = [_linear_head(m) for m in self.members]
            for h in self.fusion_heads:
                h.init_from_heads(heads, mean, std)
        max_epochs = cfg.warm_max_epochs if warm and cfg.warm_max_epochs else cfg.max_epochs
        report = FitReport(self.strategy, warm_start=warm)
        torch.manual_seed(cfg.seed)
        for j, h in enumerate(self.fusion_heads):
            stages = train_head(h, data, cfg, cfg.seed + 7919 * j, max_epochs, should_stop)
            if j == 0:
                report.stages = stages
        # after a refit on train + val, val is no longer held out: report the selection pass's
        report.val_accuracy = (report.stages[-1]["best_val_accuracy"] if cfg.refit_on_all
                               else _accuracy_meta(self, data.val, data.val_y))
        report.seconds = time.perf_counter() - t0
        self.fit_report = report
        self.eval()
        return report

    # -- growth ---------------------------------------------------------------------------------
    def add_model(self, model: object, labels: Sequence[int] | None = None,
                  train: Data | None = None, val: Data | None = None) -> FitReport | None:
        """Extend the MetaModel with a newly verified model and refit (warm start).

        The trained blocks of the existing members are kept; the new member gets a fresh block
        (strategy II) or the whole network a fresh start (strategy I, which has no blocks).
        Refits on `train`/`val`, or on the data of the previous fit; returns None if neither exists.
        """
        self._append(model, labels)
        data = (train, val) if train is not None and val is not None else self._last_data
        return self.fit(*data) if data is not None else None


@torch.no_grad()
def _accuracy_meta(meta: MetaModel, f: torch.Tensor, y: torch.Tensor) -> float:
    meta.eval()
    return (meta.head(f).argmax(1) == y).float().mean().item()


def _linear_head(member: FeatureExtractor) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    model = getattr(member, "model", None)
    head = getattr(model, "head", None)
    if isinstance(head, nn.Linear):
        return head.weight, head.bias
    return None


def infer_num_classes(members: Sequence[FeatureExtractor]) -> int:
    """The members' own head width when they declare one (all must agree), else the largest
    label any member knows + 1."""
    declared = {int(n) for m in members if isinstance(n := getattr(m, "num_classes", None), int)}
    if len(declared) > 1:
        raise FusionError(f"members disagree on the number of classes: {sorted(declared)}")
    top = max(max(m.labels) for m in members) + 1
    return max(declared.pop(), top) if declared else top


def fuse(models: Sequence[object], train: Data, val: Data, strategy: Strategy = "II",
         cfg: FusionConfig | None = None, labels: Sequence[Sequence[int] | None] | None = None,
         num_classes: int | None = None) -> MetaModel:
    """Build and train a MetaModel from verified members on the initiator's data.

    `models` are torch `FeatureModel`s or any `FeatureExtractor`; `labels[i]` is the label set
    model i was trained on (default: the member's own `labels`, else all its classes). The fit
    report is kept in `meta.fit_report`."""
    meta = MetaModel(models, labels, strategy, cfg, num_classes)
    meta.fit(train, val)
    return meta

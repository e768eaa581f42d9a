"""Case Study III, diverse scenario: can a different fusion head close the gap to FedAvg?

    .venv/bin/python benchmarks/ablation_cs3_fusion.py --seed 0 [--holdout] [--variants tuned ens3]
        [--members plain|tuned] [--fedavg plain augment all augment-all]

Per seed: the scenario's shards (`skewed_shards`, full size), the three contributors trained as in
`run_case_study_3`, then one MetaModel (strategy II, float32 members) per fusion variant, and
FedAvg (fp32, the case study's settings) on the same shards. Prints one line per result.

`--holdout` keeps the second half of the initiator's 1000 verification images out of everything
(the fusion's early stopping and refit use the first half): a choice between variants made on the
holdout's accuracy is not made on the test set. Without it the fusion sees all 2000 images as in
the case study, and only the test figure is meaningful. Variants: `tuned` (the case study's),
`tuned16` (16 augmented copies), `block_mlp` (an MLP branch per member), `ens3` (three heads,
softmax averaged), `own` (`tuned` with the initiator's own `table1-c1`, trained on its 1000
training images with augmentation, as a fourth member), `ownall` (the same, the CNN refit on all
the initiator's images after early stopping, as Case Study II's preset does), `finetune` (`tuned`
without the final refit, then the members' bodies trained end to end under the fitted head on the
initiator's augmented training images at lr 3e-5, early-stopped on the validation images). One torch thread; ~10 min per seed.

`--members tuned`: every contributor trains with the initiator's tuned recipe on its own data
(augmented images, twice the patience, a final refit on both its halves) -- a contributor's own
choice, so FedAvg's clients are offered the same: `--fedavg augment` distorts their images too,
`all` trains them on both halves of their shard (FedAvg has no early stopping, so the paper's
clients leave the verification half unused), `augment-all` both. Each listed FedAvg runs.
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import numpy as np
import torch
import torch.nn.functional as F

from coopml.data import load_dataset
from coopml.data.augment import random_affine
from coopml.fusion import FusionConfig, MetaModel, fuse
from coopml.models import evaluate
from coopml.sim.case_studies import (
    CaseStudyConfig,
    fedavg_clients,
    initiator_model,
    skewed_shards,
    train_contributor,
)
from coopml.sim.fedavg import run_fedavg

VARIANTS = {
    "tuned": FusionConfig.tuned(),
    "tuned16": FusionConfig.tuned(augment_copies=16),
    "block_mlp": FusionConfig.tuned(block_branch="mlp"),
    "ens3": FusionConfig.tuned(ensemble=3),
    "own": FusionConfig.tuned(),
    "ownall": FusionConfig.tuned(),
    "finetune": FusionConfig.tuned(refit_on_all=False),   # val stays unseen: it early-stops the fine-tune
}


class _EndToEnd(torch.nn.Module):
    """The fitted MetaModel's function with its members' bodies trainable: members' features,
    activated, normalised with the fit's statistics, into the fusion head(s)."""

    def __init__(self, meta: MetaModel, models: list[torch.nn.Module]) -> None:
        super().__init__()
        self.meta, self.models = meta, torch.nn.ModuleList(models)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fc = torch.cat([m.features(x).flatten(1).float() for m in self.models], dim=1)
        if self.meta.cfg.feature_activation == "relu":
            fc = F.relu(fc)
        return self.meta.head((fc - self.meta.feat_mean) / self.meta.feat_std)


def finetune(meta: MetaModel, models: list[torch.nn.Module], train, val, seed: int, lr: float = 3e-5,
             max_epochs: int = 30, patience: int = 8) -> tuple[int, float]:
    """After the frozen-member fit: train the members' bodies and the head end to end on the
    initiator's (augmented) training images at a small learning rate, early-stopped on `val`.
    The members are changed in place (the MetaModel's TorchMembers hold the same modules)."""
    net = _EndToEnd(meta, models)
    params = [p for m in net.models for p in m.parameters()]     # the bodies; the fitted head stays
    for p_ in params:
        p_.requires_grad_(True)
    x, y = train.tensors()
    xv, yv = val.tensors()
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(params, lr=lr)

    def accuracy() -> float:
        net.eval()
        with torch.no_grad():
            return float((net(xv).argmax(1) == yv).float().mean())

    best, best_epoch, state = accuracy(), 0, copy.deepcopy(net.state_dict())
    for epoch in range(1, max_epochs + 1):
        net.eval()               # members without dropout/batch statistics changes; gradients still flow
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 50):
            idx = perm[i:i + 50]
            loss = F.cross_entropy(net(random_affine(x[idx], gen)), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        acc = accuracy()
        print(json.dumps({"seed": seed, "kind": "finetune-epoch", "epoch": epoch, "val": round(acc, 4)}), flush=True)
        if acc > best:
            best, best_epoch, state = acc, epoch, copy.deepcopy(net.state_dict())
        elif epoch - best_epoch >= patience:
            break
    net.load_state_dict(state)
    for p_ in params:
        p_.requires_grad_(False)
    return best_epoch, best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--holdout", action="store_true", help="keep half the initiator's verification images out")
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    ap.add_argument("--members", choices=["plain", "tuned"], default="plain",
                    help="contributors' recipe: the case study's, or augmented + refit on both halves")
    ap.add_argument("--fedavg", nargs="*", choices=["plain", "augment", "all", "augment-all"], default=["plain"],
                    help="FedAvg runs: clients' recipe (none: skip FedAvg)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    cfg = CaseStudyConfig.full().model_copy(update={"seed": args.seed})   # seeds the initiator's own CNN
    show = lambda **kw: print(json.dumps({"seed": args.seed, **kw}), flush=True)
    test, pool = load_dataset("mnist", "test"), load_dataset("mnist", "train")
    names = ["verifiers", "contributor1", "contributor2", "contributor3"]
    shards = skewed_shards(pool, 1000, 1000, cfg.skew_alpha, args.seed, names)
    init = shards["verifiers"]
    val, hold = init.verify, None
    if args.holdout:
        val, hold = init.verify.subset(np.arange(500)), init.verify.subset(np.arange(500, 1000))
    members, labels = [], []
    for i, name in enumerate(names[1:]):
        model, row = train_contributor(name, cfg.fedavg_arch, shards[name], cfg, args.seed + i, test,
                                       tuned=args.members == "tuned")
        model.eval()
        members.append(model)
        labels.append(shards[name].spec.labels)
        show(kind="member", name=name, recipe=args.members, epochs=row.epochs, test=round(row.test_all_accuracy, 4))
    for variant in args.variants:
        t0 = time.perf_counter()
        fused, fused_labels = list(members), list(labels)
        if variant in ("own", "ownall"):
            fused.append(initiator_model(cfg.fedavg_arch, init.train, val, cfg, tuned=True, refit=variant == "ownall"))
            fused_labels.append(tuple(range(10)))
        if variant == "finetune":
            fused = [copy.deepcopy(m) for m in fused]
        meta = fuse(fused, init.train, val, "II", VARIANTS[variant], labels=fused_labels)
        if variant == "finetune":
            show(kind="fusion", variant="finetune-before", test=round(evaluate(meta, test), 4),
                 holdout=None if hold is None else round(evaluate(meta, hold), 4))
            epochs, best = finetune(meta, fused, init.train, val, args.seed)
            show(kind="finetune", epochs=epochs, val=round(best, 4))
        show(kind="fusion", variant=variant, test=round(evaluate(meta, test), 4),
             holdout=None if hold is None else round(evaluate(meta, hold), 4),
             seconds=round(time.perf_counter() - t0))
    for recipe in args.fedavg:
        t0 = time.perf_counter()
        clients = fedavg_clients(shards, names, both_halves=recipe in ("all", "augment-all"))
        _, fed = run_fedavg(cfg.fedavg_arch, clients, cfg.fedavg_rounds, cfg.fedavg_local_epochs, test,
                            lr=cfg.contributor_lr, seed=args.seed, augment=recipe.startswith("augment"))
        show(kind="fedavg", recipe=recipe, test=round(fed.accuracy, 4), rounds=[round(a, 4) for a in fed.round_accuracy],
             seconds=round(time.perf_counter() - t0))

if __name__ == "__main__":
    main()

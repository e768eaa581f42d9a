"""Case Study III, diverse scenario: can a different fusion head close the gap to FedAvg?

    .venv/bin/python benchmarks/ablation_cs3_fusion.py --seed 0 [--holdout] [--variants tuned ens3]

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
the initiator's images after early stopping, as Case Study II's preset does). One torch thread; ~10 min per seed.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from coopml.data import load_dataset
from coopml.fusion import FusionConfig, fuse
from coopml.models import TrainConfig, build_model, evaluate, train_model
from coopml.sim.case_studies import CaseStudyConfig, skewed_shards, train_contributor
from coopml.sim.fedavg import run_fedavg

VARIANTS = {
    "tuned": FusionConfig.tuned(),
    "tuned16": FusionConfig.tuned(augment_copies=16),
    "block_mlp": FusionConfig.tuned(block_branch="mlp"),
    "ens3": FusionConfig.tuned(ensemble=3),
    "own": FusionConfig.tuned(),
    "ownall": FusionConfig.tuned(),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--holdout", action="store_true", help="keep half the initiator's verification images out")
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    ap.add_argument("--no-fedavg", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    cfg = CaseStudyConfig.full()
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
        model, row = train_contributor(name, cfg.fedavg_arch, shards[name], cfg, args.seed + i, test)
        model.eval()
        members.append(model)
        labels.append(shards[name].spec.labels)
        show(kind="member", name=name, test=round(row.test_all_accuracy, 4))
    for variant in args.variants:
        t0 = time.perf_counter()
        fused, fused_labels = list(members), list(labels)
        if variant in ("own", "ownall"):
            own = build_model(cfg.fedavg_arch, args.seed + 99)
            train_model(own, init.train, val, TrainConfig(lr=cfg.contributor_lr, max_epochs=cfg.contributor_epochs,
                                                          patience=2 * cfg.contributor_patience, augment=True,
                                                          refit_on_all=variant == "ownall", seed=args.seed + 99))
            own.eval()
            fused.append(own)
            fused_labels.append(tuple(range(10)))
        meta = fuse(fused, init.train, val, "II", VARIANTS[variant], labels=fused_labels)
        show(kind="fusion", variant=variant, test=round(evaluate(meta, test), 4),
             holdout=None if hold is None else round(evaluate(meta, hold), 4),
             seconds=round(time.perf_counter() - t0))
    if not args.no_fedavg:
        _, fed = run_fedavg(cfg.fedavg_arch, [shards[n].train for n in names], cfg.fedavg_rounds,
                            cfg.fedavg_local_epochs, test, lr=cfg.contributor_lr, seed=args.seed)
        show(kind="fedavg", test=round(fed.accuracy, 4), rounds=[round(a, 4) for a in fed.round_accuracy])


if __name__ == "__main__":
    main()

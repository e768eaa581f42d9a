"""Case Study II: does the initiator's own nonlinear model, fused as one more member, lift the MetaModel?

    .venv/bin/python benchmarks/ablation_cs2_own.py --seed 0 [--holdout] [--variants tuned_own spatial]

Per seed: Case Study II's shards and its three Table IV contributors (trained exactly as in
`run_case_study_2`, full size), then MetaModels for the prefixes {1}, {1,2}, {1,2,3} (strategy II)
per variant. The members are linear maps of the image (Table IV is conv + average pooling), so the
fusion net sees only linear projections; the initiator's 2000 labelled all-class images can train
a nonlinear CNN of its own (`table1-c1`, 97.9 % alone with augmentation and a refit on all its
images). Variants: `tuned`, `spatial` (Case Study II's preset, 10-14x the fit cost), `tuned_own` /
`spatial_own` (the same with the initiator's own `table1-c1`, trained with augmentation on its
training images and early-stopped on the validation images, fused as an all-label member), and
`own_alone` (that CNN by itself).

`--holdout` keeps the second half of the initiator's 1000 validation images out of everything (the
own model's and the fusion's early stopping and the fusion's refit use the first half): a choice
between variants made on the holdout's accuracy is not made on the test set. One torch thread.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from coopml.data import TABLE_III, load_dataset, make_shards
from coopml.fusion import FeatureCache, FusionConfig, MetaModel, TorchMember
from coopml.models import evaluate
from coopml.sim.case_studies import INITIATOR, CaseStudyConfig, initiator_model, train_contributor

VARIANTS = ("own_alone", "tuned_own", "tuned_ownall", "tuned", "spatial_own", "spatial")
OWN_ARCH = "table1-c1"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--holdout", action="store_true", help="keep half the initiator's validation images out")
    ap.add_argument("--variants", nargs="+", choices=VARIANTS, default=["own_alone", "tuned_own", "tuned"])
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    cfg = CaseStudyConfig.full().model_copy(update={"seed": args.seed})
    show = lambda **kw: print(json.dumps({"seed": args.seed, **kw}), flush=True)
    test = load_dataset("mnist", "test")
    shards = make_shards(load_dataset("mnist", "train"), (INITIATOR, *TABLE_III), seed=args.seed)
    init = shards["initiator"]
    val, hold = init.verify, None
    if args.holdout:
        val, hold = init.verify.subset(np.arange(500)), init.verify.subset(np.arange(500, 1000))
    members = []
    for i in range(3):
        name = f"contributor{i + 1}"
        model, row = train_contributor(name, "table4", shards[name], cfg, args.seed + i, test)
        model.eval()
        members.append(TorchMember(model, row.labels))
        show(kind="member", name=name, test=round(row.test_all_accuracy, 4), own_labels=round(row.test_own_accuracy, 4))
    own_members: dict[bool, TorchMember] = {}
    for refit in (False, True):
        if not any(v.endswith("ownall" if refit else "own") or (v == "own_alone" and not refit) for v in args.variants):
            continue
        t0 = time.perf_counter()
        own = initiator_model(OWN_ARCH, init.train, val, cfg, tuned=True, refit=refit)
        own_members[refit] = TorchMember(own, tuple(range(10)))
        show(kind="own", variant="own_alone_refit" if refit else "own_alone", test=round(evaluate(own, test), 4),
             holdout=None if hold is None else round(evaluate(own, hold), 4), seconds=round(time.perf_counter() - t0))
    for variant in args.variants:
        if variant == "own_alone":
            continue
        fusion = FusionConfig.spatial() if variant.startswith("spatial") else FusionConfig.tuned()
        cache = FeatureCache(init.train, val, fusion)
        chosen = list(members)
        own_member = own_members.get(variant.endswith("ownall")) if "own" in variant else None
        if own_member is not None:
            cache.add(own_member)
        for k in range(1, 4):
            t0 = time.perf_counter()
            cache.add(chosen[k - 1])
            fused = ([own_member] if own_member is not None else []) + chosen[:k]
            meta = MetaModel(fused, None, "II", fusion)
            meta.fit_cached(cache)
            report = meta.fit_report
            show(kind="fusion", variant=variant, members=k, test=round(evaluate(meta, test), 4),
                 val=None if report is None else round(report.val_accuracy, 4),
                 holdout=None if hold is None else round(evaluate(meta, hold), 4),
                 seconds=round(time.perf_counter() - t0))


if __name__ == "__main__":
    main()

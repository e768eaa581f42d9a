"""Live-lifecycle fusion cost: refit time per arrival at demo sizes, and the accuracy it buys.

    .venv/bin/python benchmarks/bench_fusion.py [--baseline] [--threads 2] [--seeds 0 1 2]

The demo's initiator (the full `sim.lifecycle.table3_plan`: its data slot of 2000 images split
1000 train + 1000 validation, seed 0) buys three Table IV models trained on the Table III label
sets (contributor slots 1-3 of the plan's 7, up to 30 epochs, patience 4, as the contributor
role trains them). For each preset the models arrive
one at a time and an `IncrementalFuser` refits after each arrival; printed per refit: seconds
spent running the new member over the cached inputs, seconds fitting the fusion heads, warm
start or not, and MetaModel accuracy on the full MNIST test set. Then all three are submitted
to a `FusionWorker` at once (one refit covers the batch). `--baseline` also times what the
initiator did before (a from-scratch `fuse` with `FusionConfig.tuned(max_epochs=40,
patience=8)` per arrival; minutes).

`--seeds 0 1 2` repeats everything per seed (the initiator's and contributors' data shards, the
contributors' training and the fusion seed; seed 0 is the single run above) and ends with each
preset's test accuracy as mean +- sd over the seeds for the 1-, 2- and 3-member MetaModels and the
three-at-once fit, with the mean seconds. `--member-cache DIR` keeps the trained contributors.
`--own-model table1-c1 [--own-no-augment] [--own-no-refit]` adds the initiator's own model
(`InitiatorConfig.own_model`, trained on the initiator's split as `default_own_train` says:
augmented, refit on all) as a member from the first refit. `--holdout` keeps the second half of the
initiator's validation images out of every training, early stopping and refit, and prints every
accuracy on it instead of the test set: variants are chosen on that, not on the test set.

Timings depend on the machine's load: the load average is printed with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from coopml.data import TABLE_III, Dataset, load_dataset
from coopml.fusion import (
    FusionConfig,
    FusionWorker,
    IncrementalFuser,
    TorchMember,
    fuse,
)
from coopml.models import TrainConfig, build_model, evaluate, train_model
from coopml.roles.config import default_own_train
from coopml.roles.datasets import split
from coopml.sim.slots import node_data

NODES = 7        # table3_plan: initiator, three contributors, three verifiers
N_TRAIN = 1000


def initiator_data(seed: int = 0) -> tuple[Dataset, Dataset]:
    return split(node_data("mnist", 0, NODES, None, 2 * N_TRAIN, seed), 0.5, seed=seed)


def demo_members(seed: int = 0, cache: Path | None = None) -> list[TorchMember]:
    members = []
    for i, spec in enumerate(TABLE_III):
        model = build_model("table4", seed + i)
        path = cache / f"seed{seed}-member{i}.pt" if cache is not None else None
        if path is not None and path.exists():
            model.load_state_dict(torch.load(path))
        else:
            train, val = split(node_data("mnist", 1 + i, NODES, list(spec.labels), 2 * N_TRAIN, seed), 0.5, seed=i)
            train_model(model, train, val, TrainConfig(max_epochs=30, patience=4, seed=seed + i), labels=spec.labels)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                torch.save(model.state_dict(), path)
        members.append(TorchMember(model, spec.labels))
    return members


def _stages(stages: list[dict]) -> str:
    return " ".join(f"{st['best_epoch']}/{st['epochs']}" for st in stages)


def _mean_sd(xs: list[float]) -> str:
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.fmean(xs):6.2f} +- {sd:4.2f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--baseline", action="store_true", help="also time the old from-scratch refit (slow)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the demo runs each node with 1)")
    ap.add_argument("--presets", nargs="+", default=["live"],
                    help="FusionConfig presets to time: a classmethod name, or name:JSON overrides")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0],
                    help="data shards + contributors + fusion seed per run; a summary over them at the end")
    ap.add_argument("--member-cache", type=Path, default=None, help="directory keeping the trained contributors")
    ap.add_argument("--own-model", default=None, metavar="ARCH",
                    help="the initiator's own model (InitiatorConfig.own_model), trained with its default "
                         "own_train and fused as a member from the first refit on")
    ap.add_argument("--own-no-augment", action="store_true", help="train the own model without augmented images")
    ap.add_argument("--own-no-refit", action="store_true",
                    help="no refit of the own model on the validation split (which the fusion early-stops on)")
    ap.add_argument("--holdout", action="store_true",
                    help="judge on the held-out second half of the initiator's validation images, not the test set")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    test = load_dataset("mnist", "test")
    if args.holdout:
        print("--holdout: every 'test %' below is on the held-out half of the initiator's validation images")
    # per preset: rows of [test % 1, 2, 3 members, test % three at once, last refit s, three-at-once s,
    # val % 1, 2, 3 members (the selection pass's: what a preset may be chosen on)]
    summary: dict[str, list[list[float]]] = {name: [] for name in args.presets}
    for seed in args.seeds:
        t0 = time.perf_counter()
        members = demo_members(seed, args.member_cache)
        train, val = initiator_data(seed)
        judge = test
        if args.holdout:
            half = len(val) // 2
            val, judge = val.subset(np.arange(half)), val.subset(np.arange(half, len(val)))
        print(f"\n=== seed {seed}: 3 Table IV contributors ready in {time.perf_counter() - t0:.0f} s")
        own: list[TorchMember] = []
        if args.own_model:
            t0 = time.perf_counter()
            model = build_model(args.own_model, seed + 99)
            own_train = default_own_train(is_image=not args.own_no_augment, seed=seed).model_copy(
                update={"refit_on_all": not args.own_no_refit})
            train_model(model, train, val, own_train)
            own.append(TorchMember(model, tuple(range(10))))
            print(f"the initiator's own {args.own_model} ({own_train}): {time.perf_counter() - t0:.0f} s, "
                  f"alone {100 * evaluate(model, judge):.2f} % on the {'holdout' if args.holdout else 'test set'}")
        for name in args.presets:
            preset, _, overrides = name.partition(":")
            extra = json.loads(overrides) if overrides else {}
            cfg = getattr(FusionConfig, preset)(**({"seed": seed} if seed else {}), **extra)
            fuser = IncrementalFuser(train, val, "II", cfg)
            for m in own:
                fuser.add(m, key="initiator")
            total = cpu = 0.0
            row: list[float] = []
            vals: list[float] = []
            print(f"\npreset {name}: {cfg.model_dump(exclude_defaults=True)}")
            print("  members  new-member features (s)  fit (s)  total (s)  CPU (s)  warm  val %   test %  "
                  "stages: best/run epochs")
            for m in members:
                fuser.add(m)
                meta = fuser.fit()
                t = fuser.history[-1]
                total += t.seconds
                cpu += t.cpu_seconds
                row.append(100 * evaluate(meta, judge))
                vals.append(100 * t.val_accuracy)
                print(f"  {t.members:7d}  {t.feature_seconds:24.1f}  {t.fit_seconds:7.1f}  {t.seconds:9.1f}  "
                      f"{t.cpu_seconds:7.1f}  {'yes' if t.warm_start else 'no ':4s}  {100 * t.val_accuracy:5.1f}  "
                      f"{row[-1]:6.2f}  {_stages(t.stages)}")
            last = fuser.history[-1].seconds
            print(f"  all three refits: {total:.1f} s wall, {cpu:.1f} s CPU")
            worker = FusionWorker(IncrementalFuser(train, val, "II", cfg))
            t1 = time.perf_counter()
            for m in [*own, *members]:
                worker.submit(m)
            meta = worker.wait()
            worker.close()
            at_once = time.perf_counter() - t1
            assert meta is not None
            row.append(100 * evaluate(meta, judge))
            print(f"  worker, three arrivals at once: {at_once:.1f} s for "
                  f"{len(worker.fuser.history)} fit(s) -> {len(meta.members)} members, test {row[-1]:.2f} %")
            summary[name].append(row + [last, at_once] + vals)
        if args.baseline:
            old = FusionConfig.tuned(max_epochs=40, patience=8, augment_copies=8, **({"seed": seed} if seed else {}))
            print("\nbefore: from-scratch fuse per arrival, FusionConfig.tuned(max_epochs=40, patience=8)")
            for k in range(1, 4):
                t1 = time.perf_counter()
                meta = fuse(members[:k], train, val, "II", old)
                print(f"  {k} member(s): {time.perf_counter() - t1:.1f} s, test {100 * evaluate(meta, judge):.2f} %")
    if len(args.seeds) > 1:
        print(f"\ntest % over seeds {args.seeds} (mean +- sd); seconds: mean")
        print("  preset                 1 member         2 members        3 members        three at once    "
              "3rd refit s  at once s  val % 1 / 2 / 3")
        for name, rows in summary.items():
            cols = list(zip(*rows))
            print(f"  {name[:22]:22s} " + " ".join(f"{_mean_sd(list(c)):16s}" for c in cols[:4])
                  + f" {statistics.fmean(cols[4]):11.1f}  {statistics.fmean(cols[5]):9.1f}  "
                  + " / ".join(f"{statistics.fmean(c):.2f}" for c in cols[6:]))
    print(f"\nload average while measuring: {' / '.join(f'{x:.1f}' for x in os.getloadavg())} "
          f"({os.cpu_count()} cores, torch threads {args.threads})")


if __name__ == "__main__":
    main()

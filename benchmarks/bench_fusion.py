"""Live-lifecycle fusion cost: refit time per arrival at demo sizes, and the accuracy it buys.

    .venv/bin/python benchmarks/bench_fusion.py [--baseline] [--threads 2]

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

Timings depend on the machine's load: the load average is printed with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import time

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
from coopml.roles.datasets import split
from coopml.sim.slots import node_data

NODES = 7        # table3_plan: initiator, three contributors, three verifiers
N_TRAIN = 1000


def initiator_data(seed: int = 0) -> tuple[Dataset, Dataset]:
    return split(node_data("mnist", 0, NODES, None, 2 * N_TRAIN, seed), 0.5, seed=seed)


def demo_members(seed: int = 0) -> list[TorchMember]:
    members = []
    for i, spec in enumerate(TABLE_III):
        train, val = split(node_data("mnist", 1 + i, NODES, list(spec.labels), 2 * N_TRAIN, seed), 0.5, seed=i)
        model = build_model("table4", seed + i)
        train_model(model, train, val, TrainConfig(max_epochs=30, patience=4, seed=seed + i), labels=spec.labels)
        members.append(TorchMember(model, spec.labels))
    return members


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--baseline", action="store_true", help="also time the old from-scratch refit (slow)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the demo runs each node with 1)")
    ap.add_argument("--presets", nargs="+", default=["live"],
                    help="FusionConfig presets to time: a classmethod name, or name:JSON overrides")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    members = demo_members()
    train, val = initiator_data(0)
    test = load_dataset("mnist", "test")
    print(f"3 Table IV contributors trained in {time.perf_counter() - t0:.0f} s")
    for name in args.presets:
        preset, _, overrides = name.partition(":")
        cfg = getattr(FusionConfig, preset)(**(json.loads(overrides) if overrides else {}))
        fuser = IncrementalFuser(train, val, "II", cfg)
        total = cpu = 0.0
        print(f"\npreset {name}: {cfg.model_dump(exclude_defaults=True)}")
        print("  members  new-member features (s)  fit (s)  total (s)  CPU (s)  warm  val %   test %")
        for m in members:
            fuser.add(m)
            meta = fuser.fit()
            t = fuser.history[-1]
            total += t.seconds
            cpu += t.cpu_seconds
            print(f"  {t.members:7d}  {t.feature_seconds:24.1f}  {t.fit_seconds:7.1f}  {t.seconds:9.1f}  {t.cpu_seconds:7.1f}  "
                  f"{'yes' if t.warm_start else 'no ':4s}  {100 * t.val_accuracy:5.1f}  {100 * evaluate(meta, test):6.2f}")
        print(f"  all three refits: {total:.1f} s wall, {cpu:.1f} s CPU")
        worker = FusionWorker(IncrementalFuser(train, val, "II", cfg))
        t1 = time.perf_counter()
        for m in members:
            worker.submit(m)
        meta = worker.wait()
        worker.close()
        assert meta is not None
        print(f"  worker, three arrivals at once: {time.perf_counter() - t1:.1f} s for "
              f"{len(worker.fuser.history)} fit(s) -> {len(meta.members)} members, "
              f"test {100 * evaluate(meta, test):.2f} %")
    if args.baseline:
        old = FusionConfig.tuned(max_epochs=40, patience=8, augment_copies=8)
        print("\nbefore: from-scratch fuse per arrival, FusionConfig.tuned(max_epochs=40, patience=8)")
        for k in range(1, 4):
            t1 = time.perf_counter()
            meta = fuse(members[:k], train, val, "II", old)
            print(f"  {k} member(s): {time.perf_counter() - t1:.1f} s, test {100 * evaluate(meta, test):.2f} %")
    print(f"\nload average while measuring: {' / '.join(f'{x:.1f}' for x in os.getloadavg())} "
          f"({os.cpu_count()} cores, torch threads {args.threads})")


if __name__ == "__main__":
    main()

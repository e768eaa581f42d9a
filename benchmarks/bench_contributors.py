"""Case Study I contributors: accuracy of each Table I CNN on its own labels and on all 10.

Run: .venv/bin/python benchmarks/bench_contributors.py [--epochs 100] [--seeds 3]
Reference (task): about 96-97 % own-label accuracy with 1000 training images each.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from coopml.sim.contributors import train_table1_contributors


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--patience", type=int, default=8)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows: dict[str, list] = {}
    t0 = time.perf_counter()
    for seed in range(args.seeds):
        for r in train_table1_contributors(epochs=args.epochs, seed=seed * 10, patience=args.patience):
            rows.setdefault(r.name, []).append(r)
    elapsed = time.perf_counter() - t0
    print(f"{'contributor':<14}{'arch':<11}{'labels':<12}{'epochs':>7}{'own-label test':>17}{'all-10 test':>13}")
    for name, rs in rows.items():
        own = [r.own_accuracy * 100 for r in rs]
        allc = [r.all_accuracy * 100 for r in rs]
        sd = statistics.stdev(own) if len(own) > 1 else 0.0
        print(f"{name:<14}{rs[0].arch:<11}{','.join(map(str, rs[0].labels)):<12}"
              f"{statistics.mean(r.epochs for r in rs):>7.1f}{statistics.mean(own):>11.2f} ± {sd:4.2f}"
              f"{statistics.mean(allc):>12.2f}")
    print(f"(mean over {args.seeds} seeds; reference own-label ~96-97 %; {elapsed:.0f} s total)")


if __name__ == "__main__":
    main()

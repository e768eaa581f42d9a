"""Full-size Case Studies I-IV (the documented benchmark; CI runs the reduced preset as a test).

    .venv/bin/python benchmarks/bench_case_studies.py [--out bench-out/case-studies] [--seed 0]
    .venv/bin/python benchmarks/bench_case_studies.py --cs2-seeds 0 1 2

The first writes the report (markdown + PNGs + results.json) and prints the headline figures and
ratios (about 40 min on 2 free cores). The second repeats only Case Study II (Table V's 'Original'
column) over several seeds -- new contributors, shards and fusion each time -- and prints the mean
and spread against the paper, since single-seed differences under ~0.5 points are noise
(about 5 min per seed).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from coopml.sim.case_studies import PAPER_TABLE_V_ORIGINAL, CaseStudyConfig, run_all, run_case_study_2
from coopml.sim.report import write_report


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("bench-out/case-studies"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cs2-seeds", type=int, nargs="+", help="only Case Study II, once per seed")
    args = ap.parse_args()
    if args.cs2_seeds:
        cs2_over_seeds(args.cs2_seeds)
        return
    t0 = time.perf_counter()
    res = run_all(CaseStudyConfig.full().model_copy(update={"seed": args.seed}))
    write_report(args.out, res)
    pct = lambda xs: " / ".join(f"{100 * x:.1f}" for x in xs)  # noqa: E731
    print(f"report: {args.out / 'report.md'}  ({time.perf_counter() - t0:.0f} s)")
    print("CS I contributors (local verification):", pct(c.local_accuracy for c in res.cs1.contributors))
    for name, cs in (("CS I", res.cs1), ("CS II", res.cs2)):
        for method, accs in cs.fused.items():
            print(f"{name} {method:12s} {{1}}/{{1,2}}/{{1,2,3}}: {pct(accs)}")
        print(f"{name} initiator only: {100 * cs.initiator_only:.1f}, tuned {100 * cs.initiator_only_tuned:.1f}")
    ours = res.cs2.fused["strategy II"]
    print("CS II strategy II minus paper Table V 'Original' (points):",
          " / ".join(f"{100 * a - p:+.1f}" for a, p in zip(ours, PAPER_TABLE_V_ORIGINAL)))
    for s in res.cs3.scenarios:
        print(f"CS III {s.name}: ours {100 * s.ours_accuracy:.1f} % / {s.ours_bytes / 2**20:.1f} MiB, "
              f"FedAvg {100 * s.fedavg_accuracy:.1f} % / {s.fedavg_bytes / 2**20:.1f} MiB, "
              f"bytes ratio FedAvg/ours {s.fedavg_bytes / s.ours_bytes:.1f}x")
    if res.cs4 is not None:      # details: benchmarks/bench_case_study4.py
        for r8 in res.cs4.table8:
            print(f"CS IV Table VIII {r8.arch} {r8.strategy}: encrypted/plaintext {r8.ratio[1]:.1f}x CPU "
                  f"(vs exact-integer plaintext {r8.ratio_exact[1]:.1f}x)")


def cs2_over_seeds(seeds: list[int]) -> None:
    runs: dict[str, list[list[float]]] = {}
    for seed in seeds:
        t0 = time.perf_counter()
        res = run_case_study_2(CaseStudyConfig.full().model_copy(update={"seed": seed}))
        for method, accs in {**res.fused, "initiator only": [res.initiator_only] * 3,
                            "initiator tuned": [res.initiator_only_tuned] * 3}.items():
            runs.setdefault(method, []).append([100 * a for a in accs])
        print(f"seed {seed} ({time.perf_counter() - t0:.0f} s): contributors own-label "
              + " / ".join(f"{100 * c.test_own_accuracy:.1f}" for c in res.contributors) + "; "
              + "; ".join(f"{m} " + " / ".join(f"{100 * a:.2f}" for a in accs) for m, accs in res.fused.items()),
              flush=True)
    print(f"\nCase Study II over {len(seeds)} seeds, mean +- sd for {{1}} / {{1,2}} / {{1,2,3}} "
          f"(paper Table V 'Original': {' / '.join(map(str, PAPER_TABLE_V_ORIGINAL))})")
    for method, per_seed in runs.items():
        cols = list(zip(*per_seed))
        sd = (lambda c: statistics.stdev(c) if len(c) > 1 else 0.0)  # noqa: E731
        print(f"  {method:15s} " + " / ".join(f"{statistics.mean(c):.2f} +- {sd(c):.2f}" for c in cols))
    ours = [statistics.mean(c) for c in zip(*runs["strategy II"])]
    print("  strategy II minus paper (points): " + " / ".join(f"{a - p:+.2f}" for a, p in zip(ours, PAPER_TABLE_V_ORIGINAL)))


if __name__ == "__main__":
    main()

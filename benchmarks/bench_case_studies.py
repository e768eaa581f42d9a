"""Full-size Case Studies I-III (the documented benchmark; CI runs the reduced preset as a test).

    .venv/bin/python benchmarks/bench_case_studies.py [--out bench-out/case-studies] [--seed 0]

Writes the report (markdown + PNGs + results.json) and prints the headline figures and ratios.
About 30-40 min on 2 free cores.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from coopml.sim.case_studies import PAPER_TABLE_V_ORIGINAL, CaseStudyConfig, run_all
from coopml.sim.report import write_report


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("bench-out/case-studies"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    t0 = time.perf_counter()
    res = run_all(CaseStudyConfig.full().model_copy(update={"seed": args.seed}))
    write_report(args.out, res)
    pct = lambda xs: " / ".join(f"{100 * x:.1f}" for x in xs)  # noqa: E731
    print(f"report: {args.out / 'report.md'}  ({time.perf_counter() - t0:.0f} s)")
    print("CS I contributors (local verification):", pct(c.local_accuracy for c in res.cs1.contributors))
    for name, cs in (("CS I", res.cs1), ("CS II", res.cs2)):
        for method, accs in cs.fused.items():
            print(f"{name} {method:12s} {{1}}/{{1,2}}/{{1,2,3}}: {pct(accs)}")
        print(f"{name} initiator only: {100 * cs.initiator_only:.1f}")
    ours = res.cs2.fused["strategy II"]
    print("CS II strategy II minus paper Table V 'Original' (points):",
          " / ".join(f"{100 * a - p:+.1f}" for a, p in zip(ours, PAPER_TABLE_V_ORIGINAL)))
    for s in res.cs3.scenarios:
        print(f"CS III {s.name}: ours {100 * s.ours_accuracy:.1f} % / {s.ours_bytes / 2**20:.1f} MiB, "
              f"FedAvg {100 * s.fedavg_accuracy:.1f} % / {s.fedavg_bytes / 2**20:.1f} MiB, "
              f"bytes ratio FedAvg/ours {s.fedavg_bytes / s.ours_bytes:.1f}x")


if __name__ == "__main__":
    main()

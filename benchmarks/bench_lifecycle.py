"""Where the demo's time goes: the full lifecycle as separate processes (the `coopml demo` setup),
then a phase breakdown read from the nodes' own event journal.

Prints, per phase, wall time on the critical path; per node, CPU seconds (process user + system,
from each agent's `resources` record) beside its loop's wall time; and the ratio of the run's wall
time to the compute on its critical path (slowest training + encrypted verification of the last
model + the last fusion), i.e. how far the protocol's waiting keeps the run from its floor.

    .venv/bin/python benchmarks/bench_lifecycle.py                 # full demo size, anvil
    .venv/bin/python benchmarks/bench_lifecycle.py --reduced       # the quick size
    .venv/bin/python benchmarks/bench_lifecycle.py --embedded      # the embedded JSON-RPC node
    .venv/bin/python benchmarks/bench_lifecycle.py --journal out/demo/nodes/events.jsonl   # re-read a run
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any


def _first(records: list[dict[str, Any]], node: str | None = None, event: str | None = None,
           model: int | None = None) -> float | None:
    ts = [r["t"] for r in records if (node is None or r["node"] == node) and (event is None or r["event"] == event)
          and (model is None or r.get("model") == model)]
    return min(ts) if ts else None


def breakdown(records: list[dict[str, Any]], t_spawn: float | None, launcher_cpu: float | None = None) -> None:
    nodes = sorted({r["node"] for r in records})
    t_start = t_spawn if t_spawn is not None else min(r["t"] for r in records)
    t_end = max(r["t"] for r in records)
    started = {n: _first(records, n, "started") for n in nodes}
    print(f"\nwall time: {t_end - t_start:.1f} s ({len(nodes)} nodes)")

    print("\nphase (critical path)                         wall s")
    startup = max(v for v in started.values() if v is not None) - t_start if t_spawn is not None else float("nan")
    print(f"  start-up (spawn -> last node running)        {startup:6.1f}")
    if t_spawn is not None and started.get("initiator") is not None:
        print(f"    of which: chain node, contract, node setup -> initiator running  "
              f"{started['initiator'] - t_start:5.1f}")
        pub = _first(records, "initiator", "published")
        if pub is not None:
            print(f"              initiator running -> task published                 {pub - started['initiator']:5.1f}")
    contributors = [n for n in nodes if n.startswith("contributor")]
    train = {}
    for c in contributors:
        a, b = _first(records, c, "registered"), _first(records, c, "trained")
        if a is not None and b is not None:
            train[c] = b - a
    if train:
        print(f"  training (slowest contributor)               {max(train.values()):6.1f}   "
              + ", ".join(f"{c} {s:.1f}" for c, s in sorted(train.items())))
    models = sorted({r["model"] for r in records if r["event"] in ("drawn", "requested", "finalized")
                     and r.get("model") is not None})
    per_model: dict[int, dict[str, float]] = {}
    for m in models:
        ann = _first(records, event="drawn", model=m)
        req = _first(records, event="requested", model=m)
        ev = max((r["t"] for r in records if r["event"] == "evaluated" and r.get("model") == m
                  and "approve" in r.get("fields", {})), default=None)
        fin = _first(records, event="finalized", model=m)
        rec = _first(records, "initiator", "model-received", m)
        per_model[m] = {k: v for k, v in {"announced": ann, "requested": req, "evaluated": ev, "finalized": fin,
                                           "received": rec}.items() if v is not None}
    if per_model:
        print("\n  model  announce->queries  queries->verdict  verdict->finalized  finalized->received (s)")
        for m, t in per_model.items():
            def d(a: str, b: str, t: dict[str, float] = t) -> str:
                return f"{t[b] - t[a]:8.1f}" if a in t and b in t else "       -"
            print(f"  {m:5d}  {d('announced', 'requested'):>14}  {d('requested', 'evaluated'):>16}  "
                  f"{d('evaluated', 'finalized'):>18}  {d('finalized', 'received'):>20}")
    fused = [r for r in records if r["node"] == "initiator" and r["event"] == "fused"]
    received = [r["t"] for r in records if r["node"] == "initiator" and r["event"] == "model-received"]
    last_fusion = 0.0
    if fused and received:
        last = fused[-1]["t"]
        before = [t for t in received if t <= last]
        last_fusion = last - max(before) if before else 0.0
        print(f"\n  fusion (last refit, receive -> fused)        {last_fusion:6.1f}   ({len(fused)} refits)")

    print("\nnode            CPU s   loop wall s   max RSS MB")
    total_cpu = 0.0
    for n in nodes:
        res = [r for r in records if r["node"] == n and r["event"] == "resources"]
        if res:
            f = res[-1]["fields"]
            total_cpu += f["cpu_s"]
            print(f"  {n:12s}  {f['cpu_s']:6.1f}   {f['loop_wall_s']:11.1f}   {f['max_rss_mb']:10.1f}")
        else:
            print(f"  {n:12s}  (no resources record: killed or an older agent)")
    if launcher_cpu is not None:
        total_cpu += launcher_cpu
        print(f"  launcher      {launcher_cpu:6.1f}   (the preloaded image every node is forked from: shared imports)")
    print(f"  all agents    {total_cpu:6.1f} CPU s (the chain node and store are not counted)")

    verify = [t["evaluated"] - t["requested"] for t in per_model.values() if "evaluated" in t and "requested" in t]
    floor = (max(train.values()) if train else 0.0) + (max(verify) if verify else 0.0) + last_fusion
    if floor > 0:
        print(f"\ncritical-path compute ~ {floor:.1f} s (slowest training + slowest verification + last fusion); "
              f"wall / floor = {(t_end - t_start) / floor:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reduced", action="store_true")
    ap.add_argument("--embedded", action="store_true", help="the embedded JSON-RPC node instead of anvil")
    ap.add_argument("--journal", type=Path, help="only re-read an events.jsonl of an earlier run")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.journal:
        records = [json.loads(line) for line in args.journal.read_text().splitlines() if line.strip()]
        breakdown(records, None)
        return
    from coopml.sim.launcher import warm_up
    t_spawn = time.time()       # as `coopml demo`: the nodes' image loads while this process imports
    warm_up()
    from coopml.sim.lifecycle import run_processes, table3_plan
    out = args.out or Path(tempfile.mkdtemp(prefix="coopml-bench-lifecycle-"))
    result = run_processes(table3_plan(reduced=args.reduced), out, backend="embedded" if args.embedded else "anvil")
    records = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines() if line.strip()]
    print(f"task {result.task_id}: " + ", ".join(f"model {m.model_id} {m.status}" for m in result.models))
    for h in result.fusion_history:
        if h.get("test_accuracy") is not None:
            print(f"MetaModel with {len(h['members'])} model(s): {h['test_accuracy']:.2%}")
    breakdown(records, t_spawn, result.launcher_cpu_seconds)
    print(f"\nrun directory: {out}")


if __name__ == "__main__":
    main()

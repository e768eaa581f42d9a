"""Scale: the real task lifecycle on anvil with N contributors and max(3, N // 2) verifiers
(3 drawn per model), for N in 3, 10, 50; prints per N wall time, models bought/rejected, gas
(total, per model, per action — summed from the receipts of every transaction sent to the
contract), CPU seconds per agent and per wall-minute, and the growth against the smallest N.

    nice -n 10 .venv/bin/python benchmarks/bench_scale.py                 # N = 3 10 50
    nice -n 10 .venv/bin/python benchmarks/bench_scale.py --n 3 10        # a quicker pass
    .venv/bin/python benchmarks/bench_scale.py --processes 1              # every agent a thread of one process

Small data per node: each contributor 120 training images (+120 held out for early stopping)
of 5 classes, up to 8 epochs (patience 5) of the Table IV CNN; each verifier 150 of its own images (+16 audit
images) per encrypted CKKS evaluation; the initiator fuses with 2 epochs on 200 images.

Every agent is the production role class with its own keystore, config, chain connection
(`Chain.rpc`, its own transaction manager), store handle, state and workdir lock, exactly as
`coopml contributor|verifier|initiator` builds it (`roles.runner.open_node`), and runs its own
`Agent.run` loop (the real idle wait: `cursor.wait_for_block`, a step only when due) — but as a thread of this
one process, not as 1 + N + V processes: each agent process costs ~277 MB RSS and ~5 CPU-s just
to import torch and the roles (measured: `/usr/bin/time -v python -c "import coopml.roles...,
torch"`), so N = 50 (76 processes) would need ~21 GB and ~6 CPU-minutes of start-up on a 2-core
machine with ~21 GB free and shared. `--processes P` is the middle ground: the contributors and
verifiers are dealt round-robin over P processes (the initiator and the first share in this one;
each other process builds its agents from their config files, runs them as threads and writes
their figures as JSON), so P interpreter locks instead of one. The default is 2, the cores here:
with one process, N = 50 ran on about one core (TenSEAL holds the lock during its calls) in
1,102 s; with two, in 388 s (docs/chain.md, "Scale"). Threads share one interpreter (the GIL: agents' Python
work is serialised, their numpy/torch/CKKS work is not) and BLAS/torch are pinned to one thread,
as `run_processes` pins its children. CPU per agent is measured per thread
(`time.thread_time`): the agent's loop thread plus its job thread (training, encrypted
evaluation, fusion); "loop" is the event loop alone (polling, chain reads, transactions,
messages), i.e. what an agent costs while it waits.

The runner does what `sim.lifecycle.run_processes` does and nothing else: anvil sealing a block
per second, `skip_used_windows` as the only clock shortcut. Two concessions to one 2-core box
standing in for 76 machines: at most `--ckks-slots` (3) CKKS computations run at once (each
holds up to ~1 GB while it runs; N = 10 unthrottled peaked at 9.8 GB RSS, N = 50 passed 20 GB
while its 50 contributors ran their pre-payment check at once), and the verify window is
30 min (the dev default, 5 min, is shorter than this machine needs to run 150 encrypted
evaluations; verifiers vote as soon as they have judged, so a long window costs no time). N = 50
fits it on the idle machine since 2026-11-30 (1,076 s, every model judged; it once needed
`--verify-window 3600`: TenSEAL holds the interpreter lock during its calls, so the one process
runs all 150 evaluations on about one core; docs/chain.md, "Scale").
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def scale_plan(n: int, epochs: int = 8, n_train: int = 120, n_verify: int = 150, verify_s: int = 1800) -> Any:
    from coopml.sim.lifecycle import ContributorPlan, InitiatorPlan, LifecyclePlan, VerifierPlan, dev_windows
    contributors = [ContributorPlan(labels=sorted((i + k) % 10 for k in range(5)), n_train=n_train,
                                    epochs=epochs, seed=i) for i in range(n)]
    verifiers = [VerifierPlan(n_verify=n_verify) for _ in range(max(3, n // 2))]
    initiator = InitiatorPlan(n_train=200, n_audit=32, fusion_epochs=2, fusion_augment=0, n_test=500)
    overrides: dict[str, dict[str, Any]] = {
        "windows": dev_windows(verify_s), "criterion": {"min_accuracy": 0.6},
        "economics": {"verifiers_per_model": 3},
        "verification": {"queries": n_verify, "max_queries": n_verify + 16, "audit_per_request": 16}}
    return LifecyclePlan(contributors=contributors, verifiers=verifiers, initiator=initiator, overrides=overrides)


@dataclass
class AgentRun:
    name: str
    loop_cpu: float = 0.0
    idle_cpu: float = 0.0     # loop CPU in rounds that did nothing + waiting for chain activity
    job_cpu: float = 0.0
    wall: float = 0.0
    rounds: int = 0           # loop rounds (each drains the new events)
    steps: int = 0            # of which stepped (the role's chain reads and actions)
    rpcs: int = 0             # JSON-RPC requests over the agent's own connection (all threads)
    error: BaseException | None = None
    done: bool = False
    summary: str = ""
    thread: threading.Thread | None = field(default=None, repr=False)


def _run_agent(run: AgentRun, setup: Any, task_id: int | None, sink: Any) -> None:
    from coopml.roles.config import ContributorConfig, InitiatorConfig, VerifierConfig, load_config
    from coopml.roles.log import EventLog
    from coopml.roles.runner import load_agent_class, open_node
    t_cpu, t0 = time.thread_time(), time.monotonic()
    node = None
    try:
        cls = load_agent_class(setup.agents[run.name])
        cfg_type = {"initiator": InitiatorConfig, "contributor": ContributorConfig, "verifier": VerifierConfig}[
            cls.role.value]
        cfg = load_config(cfg_type, setup.paths[run.name], **({"task_id": task_id} if task_id is not None else {}))
        node = open_node(cfg)
        agent = cls(cfg, client=node.client, store=node.store, state=node.state,
                    log=EventLog(cls.role, run.name, lambda rec: sink(run.name, rec)))
        submit = agent.jobs.submit

        def timed_submit(key: str, fn: Any) -> None:
            def job() -> Any:
                c = time.thread_time()
                try:
                    return fn()
                finally:
                    run.job_cpu += time.thread_time() - c
            submit(key, job)
        agent.jobs.submit = timed_submit  # type: ignore[method-assign]
        manager = agent.chain.w3.manager      # web3 caches the provider's make_request: count here
        make_request, step = manager._make_request, agent.step

        def counted_request(*a: Any, **k: Any) -> Any:
            run.rpcs += 1
            return make_request(*a, **k)

        def counted_step() -> bool:
            run.steps += 1
            return step()
        manager._make_request = counted_request  # type: ignore[method-assign]
        agent.step = counted_step  # type: ignore[method-assign]
        # the idle wait `Agent.run` uses (wait_for_activity before the loop stepped only when due)
        wait_name = "wait_for_block" if hasattr(agent.cursor, "wait_for_block") else "wait_for_activity"
        run_once, wait = agent.run_once, getattr(agent.cursor, wait_name)

        def timed_run_once(**kw: Any) -> bool:
            run.rounds += 1
            c = time.thread_time()
            progressed = run_once(**kw)
            if not progressed:
                run.idle_cpu += time.thread_time() - c
            return progressed

        def timed_wait(*a: Any, **k: Any) -> bool:
            c = time.thread_time()
            try:
                return wait(*a, **k)
            finally:
                run.idle_cpu += time.thread_time() - c
        agent.run_once = timed_run_once  # type: ignore[method-assign]
        setattr(agent.cursor, wait_name, timed_wait)
        run.summary = agent.run()
        run.done = True
    except BaseException as exc:  # noqa: BLE001 - reported by the runner
        run.error = exc
    finally:
        if node is not None:
            node.close()
        run.loop_cpu = time.thread_time() - t_cpu
        run.wall = time.monotonic() - t0


def serialize_ast_parse() -> None:
    """CPython 3.11 can fail `ast.parse` run from several threads at once ("SystemError: AST
    constructor recursion depth mismatch", seen in np.load's header parsing when 30 agents load
    their data together): one parse at a time. Separate processes never share this."""
    import ast
    lock = threading.Lock()
    parse = ast.parse

    def locked(*a: Any, **k: Any) -> Any:
        with lock:
            return parse(*a, **k)
    ast.parse = locked  # type: ignore[assignment]


def limit_ckks(slots: int) -> None:
    """At most `slots` CKKS computations (a contributor's pre-payment check and parameter offer,
    query encryption, encrypted evaluation, decryption) at once in this process: on separate
    machines they overlap freely, here 50 contributors would each hold one's working memory at
    the same time (the check alone peaks at ~1 GB RSS and ~2 CPU-s for Table IV)."""
    from coopml.roles import evaluation
    gate = threading.BoundedSemaphore(slots)
    held = threading.local()

    def limited(fn: Any) -> Any:
        def call(*a: Any, **k: Any) -> Any:
            if getattr(held, "depth", 0):            # check_evaluable calls offer_params: one slot
                return fn(*a, **k)
            with gate:
                held.depth = 1
                try:
                    return fn(*a, **k)
                finally:
                    held.depth = 0
        return call
    for name in ("check_evaluable", "offer_params", "compile_scores", "encrypt_queries", "evaluate_encrypted",
                 "decrypt_scores"):
        setattr(evaluation, name, limited(getattr(evaluation, name)))


STATS_FIELDS = ("loop_cpu", "idle_cpu", "job_cpu", "wall", "rounds", "steps", "rpcs", "done", "summary")


def prepare_process(ckks_slots: int) -> None:
    """What every process of the bench sets before its agents start: one torch thread, the CKKS
    gate, one `ast.parse` at a time."""
    import torch
    torch.set_num_threads(1)
    limit_ckks(ckks_slots)
    serialize_ast_parse()


class EventJournal:
    """The agents' log records of one process, appended to a JSONL file (and kept in memory when
    the runner reads them: the initiator's publication and checks)."""

    def __init__(self, path: Path, keep: bool) -> None:
        self.records: list[tuple[str, Any]] = []
        self.lock = threading.Lock()
        self._keep = keep
        self._file = open(path, "a")  # noqa: SIM115 - closed by close()

    def sink(self, name: str, rec: Any) -> None:
        with self.lock:
            if self._keep:
                self.records.append((name, rec))
            self._file.write(json.dumps({"node": name, **rec.model_dump(mode="json")}) + "\n")
            self._file.flush()

    def close(self) -> None:
        self._file.close()


def start_agent(name: str, setup: Any, task_id: int | None, sink: Any) -> AgentRun:
    run = AgentRun(name)
    run.thread = threading.Thread(target=_run_agent, args=(run, setup, task_id, sink), name=name, daemon=True)
    run.thread.start()
    return run


def run_worker(spec_path: Path) -> int:
    """A child of `run_threads(processes > 1)`: run the agents named in the spec as threads of this
    process until each has finished, then write their figures (and this process's CPU and peak
    RSS) to the spec's `stats` file. JSON in and out; the agents build themselves from their
    config files exactly as in the parent."""
    from types import SimpleNamespace
    spec = json.loads(spec_path.read_text())
    prepare_process(spec["ckks_slots"])
    setup = SimpleNamespace(agents=spec["agents"], paths={k: Path(v) for k, v in spec["paths"].items()})
    journal = EventJournal(Path(spec["events"]), keep=False)
    runs = [start_agent(name, setup, spec["task_id"], journal.sink) for name in spec["agents"]]
    while any(r.thread.is_alive() for r in runs if r.thread) and not any(r.error for r in runs):
        time.sleep(0.25)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    stats = {"runs": {r.name: {**{f: getattr(r, f) for f in STATS_FIELDS},
                               "error": None if r.error is None else repr(r.error)} for r in runs},
             "process_cpu": usage.ru_utime + usage.ru_stime, "max_rss_mb": usage.ru_maxrss / 1024}
    Path(spec["stats"]).write_text(json.dumps(stats, default=str))
    journal.close()
    return 1 if any(r.error for r in runs) else 0


def run_threads(plan: Any, workdir: Path, timeout: float, processes: int = 1, ckks_slots: int = 3) -> dict[str, Any]:
    """Run the lifecycle with every agent a thread of this process (`processes` = 1), or with the
    contributors and verifiers dealt round-robin over `processes` processes (the initiator and the
    first share stay here): a deployment runs one process per node; this shows what the one
    shared interpreter lock costs without paying 1 + N + V imports of torch."""
    from coopml.chain import Chain, deploy
    from coopml.chain.processes import start_anvil
    from coopml.errors import CoopmlError
    from coopml.roles.log import LogEvent
    from coopml.sim.lifecycle import checked_by_initiator, prepare, read_outcome, skip_used_windows

    workdir.mkdir(parents=True, exist_ok=True)
    journal = EventJournal(workdir / "events.jsonl", keep=True)
    node = start_anvil(block_time=1.0)
    runs: dict[str, AgentRun] = {}
    children: list[subprocess.Popen[bytes]] = []
    try:
        chain = Chain.rpc(node.url)
        coop = deploy(chain, chain.dev_accounts()[0])
        setup = prepare(plan, workdir, chain, coop, node.url, str(workdir / "store"))
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        load0 = os.getloadavg()
        t0 = time.monotonic()

        def start(name: str, task_id: int | None) -> None:
            runs[name] = start_agent(name, setup, task_id, journal.sink)

        start("initiator", None)
        task_id = None
        while task_id is None:
            if runs["initiator"].error is not None:
                raise CoopmlError(f"initiator failed: {runs['initiator'].error!r}")
            with journal.lock:
                task_id = next((r.task for n, r in journal.records
                                if n == "initiator" and r.event == LogEvent.PUBLISHED), None)
            time.sleep(0.1)
        others = [name for name in setup.agents if name != "initiator"]
        shares = [others[i::processes] for i in range(processes)]
        for name in shares[0]:
            start(name, task_id)
        for i, share in enumerate(shares[1:], 1):
            spec = {"agents": {n: setup.agents[n] for n in share}, "paths": {n: str(setup.paths[n]) for n in share},
                    "task_id": task_id, "ckks_slots": ckks_slots, "events": str(workdir / f"events-{i}.jsonl"),
                    "stats": str(workdir / f"stats-{i}.json")}
            spec_path = workdir / f"worker-{i}.json"
            spec_path.write_text(json.dumps(spec))
            children.append(subprocess.Popen([sys.executable, __file__, "--worker", str(spec_path)]))
        settled: set[int] = set()
        while True:
            if time.monotonic() - t0 > timeout:
                raise CoopmlError(f"not finished within {timeout} s; still running: "
                                  f"{[n for n, r in runs.items() if r.thread and r.thread.is_alive()]}")
            failed = [r for r in runs.values() if r.error is not None]
            if failed:
                raise CoopmlError(f"{failed[0].name} failed: {failed[0].error!r}")
            bad = [i for i, c in enumerate(children, 1) if c.poll() not in (None, 0)]
            if bad:
                raise CoopmlError(f"worker process {bad[0]} exited with {children[bad[0] - 1].returncode}: "
                                  f"see {workdir / f'stats-{bad[0]}.json'}")
            if all(not r.thread.is_alive() for r in runs.values() if r.thread) and \
                    all(c.poll() is not None for c in children):
                break
            with journal.lock:
                checked = checked_by_initiator(journal.records)
            skip_used_windows(chain, coop, task_id, checked, settled)
            time.sleep(0.25)
        wall = time.monotonic() - t0
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        process_cpu = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
        max_rss = [cpu1.ru_maxrss / 1024]
        for i in range(1, len(shares)):
            stats = json.loads((workdir / f"stats-{i}.json").read_text())
            process_cpu += stats["process_cpu"]
            max_rss.append(stats["max_rss_mb"])
            for name, fig in stats["runs"].items():
                runs[name] = AgentRun(name, **{f: fig[f] for f in STATS_FIELDS})
        result = read_outcome(chain, coop, task_id, setup, wall)
        gas, failed = gas_by_action(chain, coop)
        return {"wall": wall, "result": result, "gas": gas, "failed": failed, "runs": runs,
                "load": (load0, os.getloadavg()), "processes": len(shares),
                "process_cpu": process_cpu, "max_rss_mb": sum(max_rss),
                "blocks": chain.block_number() - coop.deploy_block}
    finally:
        for c in children:
            if c.poll() is None:
                c.terminate()
                c.wait(30)
        node.stop()
        journal.close()


def gas_by_action(chain: Any, coop: Any) -> tuple[dict[str, list[int]], dict[str, int]]:
    """gasUsed of every transaction sent to the contract after its deployment, by function name
    (reverted ones included: they were paid for), and how many of them reverted."""
    contract = chain.contract(coop.address)
    gas: dict[str, list[int]] = defaultdict(list)
    failed: dict[str, int] = defaultdict(int)
    for b in range(coop.deploy_block + 1, chain.block_number() + 1):
        block = chain.w3.eth.get_block(b, full_transactions=True)
        for tx in block["transactions"]:
            if tx["to"] is None or tx["to"].lower() != coop.address.lower():
                continue
            receipt = chain.w3.eth.get_transaction_receipt(tx["hash"])
            fn, _ = contract.decode_function_input(tx["input"])
            gas[fn.fn_name].append(int(receipt["gasUsed"]))
            if receipt["status"] != 1:
                failed[fn.fn_name] += 1
    return gas, dict(failed)


def summarise(n: int, out: dict[str, Any]) -> dict[str, Any]:
    result, runs, wall = out["result"], out["runs"], out["wall"]
    statuses = [m.status for m in result.models]
    total_gas = sum(sum(v) for v in out["gas"].values())
    roles: dict[str, list[AgentRun]] = defaultdict(list)
    for r in runs.values():
        roles[r.name.rstrip("0123456789")].append(r)
    per_role = {}
    for role, rs in roles.items():
        tot = [r.loop_cpu + r.job_cpu for r in rs]
        loop = [r.loop_cpu for r in rs]
        per_role[role] = {"n": len(rs), "cpu_mean": statistics.mean(tot), "cpu_max": max(tot),
                          "loop_mean": statistics.mean(loop), "loop_max": max(loop),
                          "loop_per_min": statistics.mean(r.loop_cpu / (r.wall / 60) for r in rs if r.wall > 0),
                          "idle_mean": statistics.mean(r.idle_cpu for r in rs),
                          "idle_per_min": statistics.mean(r.idle_cpu / (r.wall / 60) for r in rs if r.wall > 0),
                          "wall_mean": statistics.mean(r.wall for r in rs),
                          "rounds_mean": statistics.mean(r.rounds for r in rs),
                          "steps_mean": statistics.mean(r.steps for r in rs),
                          "rpcs_per_min": statistics.mean(r.rpcs / (r.wall / 60) for r in rs if r.wall > 0)}
    return {"N": n, "verifiers": len(roles["verifier"]), "wall_s": wall, "models": len(statuses),
            "bought": statuses.count("RELEASED"), "rejected": statuses.count("REJECTED"),
            "other": len(statuses) - statuses.count("RELEASED") - statuses.count("REJECTED"),
            "statuses": statuses,
            "gas_total": total_gas, "gas_per_model": total_gas / max(1, len(statuses)),
            "gas_by_action": {k: {"count": len(v), "mean": statistics.mean(v)} for k, v in sorted(out["gas"].items())},
            "txs": sum(len(v) for v in out["gas"].values()), "blocks": out["blocks"], "reverted": out["failed"],
            "load": out["load"],
            "agents_cpu": sum(r.loop_cpu + r.job_cpu for r in runs.values()),
            "process_cpu": out["process_cpu"], "max_rss_mb": out["max_rss_mb"], "per_role": per_role,
            "processes": out.get("processes", 1),
            "fusion": [(len(h["members"]), h.get("test_accuracy")) for h in result.fusion_history]}


# which contract actions belong to one model's verification, to its delivery, or to a participant
VERIFY_ACTIONS = ("announceModel", "drawVerifiers", "commitVote", "revealVote", "finalizeModel", "settleVote",
                  "postMessage")
DELIVERY_ACTIONS = ("deliverKey", "finalizeDelivery")


def gas_split(s: dict[str, Any]) -> dict[str, float]:
    """Gas per announced model for its verification (announce, draw, votes, finalization, ballots,
    every message — offers, requests, responses, audit reports), per bought model for its delivery,
    and per participant for joining, leaving and withdrawing; from the per-action totals."""
    g = s["gas_by_action"]

    def total(names: tuple[str, ...]) -> float:
        return sum(g[k]["count"] * g[k]["mean"] for k in names if k in g)
    other = set(g) - set(VERIFY_ACTIONS) - set(DELIVERY_ACTIONS)
    participants = 1 + s["N"] + s["verifiers"]
    return {"verify_per_model": total(VERIFY_ACTIONS) / max(1, s["models"]),
            "delivery_per_bought": total(DELIVERY_ACTIONS) / max(1, s["bought"]),
            "other_per_participant": total(tuple(other)) / participants}


def print_row(s: dict[str, Any]) -> None:
    print(f"\n=== N = {s['N']} contributors, {s['verifiers']} verifiers (3 per model) ===")
    print(f"wall {s['wall_s']:.1f} s; models {s['models']}: bought {s['bought']}, rejected {s['rejected']}, "
          f"other {s['other']}; {s['txs']} contract txs in {s['blocks']} blocks; reverted (races, paid): "
          f"{s['reverted'] or 'none'}")
    print(f"load average (1, 5, 15 min) at start {s['load'][0]}, at end {s['load'][1]}")
    split = gas_split(s)
    print(f"gas total {s['gas_total']:,}; per model {s['gas_per_model']:,.0f} (verification per model "
          f"{split['verify_per_model']:,.0f}, delivery per bought model {split['delivery_per_bought']:,.0f}, "
          f"publish/join/leave/withdraw/close per participant {split['other_per_participant']:,.0f})")
    for k, v in s["gas_by_action"].items():
        print(f"  {k:22s} x{v['count']:4d}  mean {v['mean']:>11,.0f}")
    procs = s.get("processes", 1)
    print(f"CPU: agents {s['agents_cpu']:.1f} s, " + (f"whole process {s['process_cpu']:.1f} s; max RSS "
          if procs == 1 else f"{procs} processes {s['process_cpu']:.1f} s; sum of their max RSS ")
          + f"{s['max_rss_mb']:.0f} MB")
    print("  role          n   CPU-s mean (max)   loop CPU-s mean (max)   CPU-s per wall-min   "
          "idle CPU-s   idle CPU-s per wall-min   wall s   rounds   steps   RPCs per wall-min")
    for role, p in sorted(s["per_role"].items()):
        print(f"  {role:11s} {p['n']:3d}   {p['cpu_mean']:7.1f} ({p['cpu_max']:6.1f})   {p['loop_mean']:9.2f} "
              f"({p['loop_max']:6.2f})   {p['cpu_mean'] / (p['wall_mean'] / 60):18.2f}   {p['idle_mean']:10.2f}   "
              f"{p['idle_per_min']:23.3f}   {p['wall_mean']:6.1f}   {p.get('rounds_mean', 0):6.0f}   "
              f"{p.get('steps_mean', 0):5.0f}   {p.get('rpcs_per_min', 0):17.0f}")
    if s["fusion"]:
        k, acc = s["fusion"][-1]
        print(f"  MetaModel: {k} models fused, test accuracy {acc if acc is None else f'{acc:.2%}'}")


def print_growth(rows: list[dict[str, Any]]) -> None:
    base = rows[0]
    print(f"\n=== growth vs N = {base['N']} ===")
    print("   N   V   wall s  x      gas/model  x   verify gas/model  x     agents CPU-s  x    CPU-s/agent  "
          "verifier idle CPU-s/min  contributor idle CPU-s/min  bought/models")
    for s in rows:
        n_agents = 1 + s["N"] + s["verifiers"]
        b_agents = 1 + base["N"] + base["verifiers"]
        vl, cl = s["per_role"]["verifier"]["idle_per_min"], s["per_role"]["contributor"]["idle_per_min"]
        print(f"  {s['N']:2d}  {s['verifiers']:2d}  {s['wall_s']:7.1f} {s['wall_s'] / base['wall_s']:4.1f}  "
              f"{s['gas_per_model']:11,.0f} {s['gas_per_model'] / base['gas_per_model']:4.2f}  "
              f"{gas_split(s)['verify_per_model']:14,.0f} "
              f"{gas_split(s)['verify_per_model'] / gas_split(base)['verify_per_model']:4.2f}  "
              f"{s['agents_cpu']:9.1f} {s['agents_cpu'] / base['agents_cpu']:5.1f}  "
              f"{s['agents_cpu'] / n_agents:8.1f} ({s['agents_cpu'] / n_agents / (base['agents_cpu'] / b_agents):3.1f}x)  "
              f"{vl:13.3f}  {cl:26.3f}  {s['bought']:9d}/{s['models']}")
    print("(x: ratio to the first N; agents grow x" + "/".join(
        f"{(1 + s['N'] + s['verifiers']) / (1 + base['N'] + base['verifiers']):.1f}" for s in rows) + ")")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[3, 10, 50])
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--timeout", type=float, default=5400)
    ap.add_argument("--ckks-slots", type=int, default=3, help="CKKS computations at once in this process")
    ap.add_argument("--verify-window", type=int, default=1800,
                    help="seconds verifiers have per model (N = 50 on the idle 2-core box: 1800 is enough since 2026-11-30)")
    ap.add_argument("--report", type=Path, nargs="+", help="only print the tables of earlier runs' nN.json files")
    ap.add_argument("--processes", type=int, default=2,
                    help="deal the contributors and verifiers over this many processes (1: all threads of one, "
                         "as the rows before 2026-11-30's eighth session)")
    ap.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:          # exit without joining the agents' job threads (as the parent does on errors)
        code = run_worker(args.worker)
        sys.stdout.flush()
        os._exit(code)
    if args.report:
        rows = sorted((json.loads(p.read_text()) for p in args.report), key=lambda s: s["N"])
        for s in rows:
            print_row(s)
        if len(rows) > 1:
            print_growth(rows)
        return
    prepare_process(args.ckks_slots)
    out = args.out or Path(tempfile.mkdtemp(prefix="coopml-bench-scale-"))
    rows = []
    for n in args.n:
        t = time.monotonic()
        s = summarise(n, run_threads(scale_plan(n, verify_s=args.verify_window), out / f"n{n}", args.timeout,
                                     args.processes, args.ckks_slots))
        rows.append(s)
        (out / f"n{n}.json").write_text(json.dumps(s, indent=1, default=str))
        print_row(s)
        print(f"  (N = {n} took {time.monotonic() - t:.0f} s including setup)", flush=True)
    if len(rows) > 1:
        print_growth(sorted(rows, key=lambda s: s["N"]))
    print(f"\nrun directory: {out}")


if __name__ == "__main__":
    try:
        main()
    except SystemExit as stop:          # --help, argument errors: argparse has said why
        if stop.code is not None and not isinstance(stop.code, int):
            print(stop.code, file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0 if stop.code is None else stop.code if isinstance(stop.code, int) else 1)
    except BaseException:  # noqa: BLE001 - report, then exit without joining threads
        import traceback
        traceback.print_exc()
        os._exit(1)      # agent and job threads may still run: do not wait for them at exit

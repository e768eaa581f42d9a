"""The full decentralized task lifecycle as a scenario: 1 initiator, N contributors, V verifiers.

Two runners share one plan and one way of reading the outcome from the chain:
- `run_in_process`: every agent in this process on one embedded EVM, stepped round-robin
  (fast; used by tests of protocol outcomes);
- `run_processes`: every agent its own OS process (`coopml initiator|contributor|verifier`)
  against a chain node and a store on 127.0.0.1 (the demo; used by the kill -9 test).

On a dev chain the runners mine a block every second (so chain time moves) and, once every
announced model is settled, fast-forward the clock past the announce deadline so the task can
close; on a real chain the task would simply wait for its deadline.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

from eth_account import Account
from pydantic import BaseModel, Field

from coopml.chain import ETHER, Chain, EventCursor, ModelStatus, TaskClient, deploy
from coopml.data import TABLE_III
from coopml.errors import CoopmlError
from coopml.roles.agent import FINAL
from coopml.roles.config import ContributorBehaviour, VerifierBehaviour


class ContributorPlan(BaseModel):
    labels: list[int]
    slot: int = Field(ge=1, le=7)
    behaviour: ContributorBehaviour = "honest"
    epochs: int = 30
    n_train: int = 1000
    n_val: int = 1000


class LifecyclePlan(BaseModel):
    contributors: list[ContributorPlan]
    verifiers: list[VerifierBehaviour] = ["honest", "honest", "honest"]
    initiator: dict = Field(default_factory=dict)   # InitiatorConfig fields (windows, fees, sizes, ...)
    dataset: str = "mnist"
    seed: int = 0
    fund_eth: int = 100


def table3_plan(reduced: bool = False, **initiator: object) -> LifecyclePlan:
    """Case Study II: three contributors with the Table III label sets and the Table IV CNN."""
    n = 400 if reduced else 1000
    contributors = [ContributorPlan(labels=list(spec.labels), slot=i + 1, epochs=6 if reduced else 30,
                                    n_train=n, n_val=n // 2 if reduced else n)
                    for i, spec in enumerate(TABLE_III)]
    base = dict(n_train=n, n_verify=n // 2 if reduced else 1000, fusion_epochs=8 if reduced else 40,
                fusion_augment=1 if reduced else 8,
                min_accuracy=0.7 if reduced else 0.85)
    base.update(initiator)
    return LifecyclePlan(contributors=contributors, initiator=base)


# ------------------------------------------------------------------------------ outcome

@dataclass
class ModelOutcome:
    model_id: int
    contributor: str          # node name
    behaviour: str
    status: str
    yes: int
    no: int
    votes: dict[str, bool]    # verifier name -> revealed vote


@dataclass
class LifecycleResult:
    task_id: int
    models: list[ModelOutcome]
    withdrawn_eth: dict[str, float]
    slashed: dict[str, str]                  # name -> reason
    fusion_history: list[dict]
    elapsed: float
    workdir: Path
    names: dict[str, str] = field(default_factory=dict)     # address -> name
    restarts: dict[str, int] = field(default_factory=dict)  # node -> times killed and restarted

    def approved(self) -> list[ModelOutcome]:
        return [m for m in self.models if m.status == "RELEASED"]

    def to_json(self) -> dict:
        return {"task_id": self.task_id, "elapsed_s": round(self.elapsed, 1),
                "models": [m.__dict__ for m in self.models], "withdrawn_eth": self.withdrawn_eth,
                "slashed": self.slashed, "fusion_history": self.fusion_history}


def read_outcome(chain: Chain, coop: TaskClient, task_id: int, names: dict[str, str],
                 behaviours: dict[str, str], workdir: Path, elapsed: float) -> LifecycleResult:
    cursor = EventCursor(chain, coop.address)
    votes: dict[int, dict[str, bool]] = {}
    withdrawn: dict[str, float] = {}
    slashed: dict[str, str] = {}
    for ev in cursor.poll():
        a = ev.args
        if ev.name == "VoteRevealed":
            votes.setdefault(a["modelId"], {})[names.get(a["verifier"], a["verifier"])] = a["approve"]
        elif ev.name == "Withdrawn":
            who = names.get(a["account"], a["account"])
            withdrawn[who] = withdrawn.get(who, 0.0) + a["amount"] / ETHER
        elif ev.name == "Slashed" and a["taskId"] == task_id:
            slashed[names.get(a["account"], a["account"])] = a["reason"]
    models = []
    for mid in range(1, coop.model_count() + 1):
        m = coop.model(mid)
        if m.task_id != task_id:
            continue
        who = names.get(m.contributor, m.contributor)
        models.append(ModelOutcome(mid, who, behaviours.get(who, "?"), m.status.name, m.yes, m.no,
                                   votes.get(mid, {})))
    summary_path = workdir / "initiator" / "summary.json"
    history = json.loads(summary_path.read_text())["fusion_history"] if summary_path.is_file() else []
    return LifecycleResult(task_id, models, withdrawn, slashed, history, elapsed, workdir, names)


# ------------------------------------------------------------------------------ shared setup

@dataclass
class Nodes:
    """Accounts and configs for every node of a plan (keys are dev keys made for this run)."""

    configs: dict[str, dict]
    names: dict[str, str]
    behaviours: dict[str, str]


def make_nodes(plan: LifecyclePlan, chain: Chain, coop: TaskClient, workdir: Path, chain_url: str,
               store: str) -> Nodes:
    configs, names, behaviours = {}, {}, {}
    node_list = [("initiator", "initiator", None)]
    node_list += [(f"verifier{i + 1}", "verifier", b) for i, b in enumerate(plan.verifiers)]
    node_list += [(f"contributor{i + 1}", "contributor", c) for i, c in enumerate(plan.contributors)]
    for name, role, extra in node_list:
        acct = Account.create()
        chain.fund(acct.address, plan.fund_eth * ETHER)
        names[acct.address] = name
        cfg = {"chain": chain_url, "contract": coop.address, "from_block": coop.deploy_block, "store": store,
               "key": acct.key.hex(),
               "workdir": str(workdir / name), "dataset": plan.dataset, "seed": plan.seed}
        if role == "initiator":
            cfg.update(plan.initiator)
            behaviours[name] = "honest"
        elif role == "verifier":
            cfg["behaviour"] = extra
            behaviours[name] = extra
        else:
            cfg.update(extra.model_dump())
            behaviours[name] = extra.behaviour
        configs[name] = cfg
    return Nodes(configs, names, behaviours)


def skip_idle_windows(chain: Chain, coop: TaskClient, task_id: int, margin: int = 60) -> None:
    """Dev-chain shortcut: once every selected verifier has committed (revealed), jump the clock to
    the end of the commit (reveal) window instead of waiting it out. Nothing else changes:
    nodes still act only on what the chain says. (Auto-mining also moves block time forward one
    second per block, so windows are sized generously.)"""
    now = chain.now()
    wants, limits = [], []
    for mid in range(1, coop.model_count() + 1):
        m = coop.model(mid)
        if m.task_id != task_id or m.status != ModelStatus.VOTING:
            continue
        v = len(coop.selected_verifiers(mid))
        if now <= m.commit_deadline:
            (wants if m.commits == v else limits).append(m.commit_deadline)
        elif now <= m.reveal_deadline:
            (wants if m.reveals == v else limits).append(m.reveal_deadline)
    if wants:
        target = min(wants) + 1
        if all(target + margin <= limit for limit in limits):  # never cut short a window someone needs
            chain.increase_time(target - now)


def _all_settled(coop: TaskClient, task_id: int, expected: int, initiator_workdir: Path) -> bool:
    """Every expected model announced and final, and every bought model fused by the initiator."""
    models = [coop.model(m) for m in range(1, coop.model_count() + 1)]
    models = [m for m in models if m.task_id == task_id]
    if len(models) < expected or any(m.status not in FINAL for m in models):
        return False
    from coopml.roles.state import AgentState
    state = AgentState(initiator_workdir / "state.sqlite")
    try:
        return all(state.fact("fused", m.model_id) is not None for m in models if m.status == ModelStatus.RELEASED)
    finally:
        state.close()


# ------------------------------------------------------------------------------ in-process

def run_in_process(plan: LifecyclePlan, workdir: Path, log: Callable | None = None,
                   timeout: float = 900) -> LifecycleResult:
    from coopml.roles.config import ContributorConfig, InitiatorConfig, VerifierConfig
    from coopml.roles.contributor import Contributor
    from coopml.roles.initiator import Initiator
    from coopml.roles.verifier import Verifier

    t0 = time.monotonic()
    workdir = Path(workdir)
    chain = Chain.embedded()
    coop = deploy(chain, chain.dev_accounts()[0])
    nodes = make_nodes(plan, chain, coop, workdir, "embedded", str(workdir / "store"))
    def logger(name):
        return (lambda event, fields: log(name, event, fields)) if log else (lambda event, fields: None)

    ini = Initiator(InitiatorConfig(**nodes.configs["initiator"]), chain=chain, log=logger("initiator"))
    ini.run_once()
    task_id = ini.task_id
    agents = [ini]
    for name, cfg in nodes.configs.items():
        if name.startswith("verifier"):
            agents.append(Verifier(VerifierConfig(**cfg, task_id=task_id), chain=chain, log=logger(name)))
        elif name.startswith("contributor"):
            agents.append(Contributor(ContributorConfig(**cfg, task_id=task_id), chain=chain, log=logger(name)))
    for a in agents[1:]:
        a.run_once()                       # register
    for a in agents:
        if isinstance(a, Contributor) and a.cfg.behaviour in ("honest", "random", "withhold"):
            a._train()                     # in one process, train up front so nobody blocks the others
    expected = len(plan.contributors)
    forwarded = False
    last_block = time.monotonic()
    while not all(a.done for a in agents):
        if time.monotonic() - t0 > timeout:
            raise CoopmlError(f"lifecycle did not finish within {timeout} s")
        for a in agents:
            if not a.done:
                a.run_once()
        if time.monotonic() - last_block >= 1.0:  # chain time should move with wall time, not loop speed
            chain.mine()
            last_block = time.monotonic()
        skip_idle_windows(chain, coop, task_id)
        if not forwarded and _all_settled(coop, task_id, expected, workdir / "initiator"):
            chain.increase_time(ini.cfg.announce_window + 1)
            forwarded = True
        time.sleep(0.05)
    for a in agents:
        a.close()
    return read_outcome(chain, coop, task_id, nodes.names, nodes.behaviours, workdir, time.monotonic() - t0)


# ------------------------------------------------------------------------------ processes

@dataclass
class _Proc:
    name: str
    cmd: list[str]
    popen: subprocess.Popen
    log_path: Path
    restarts: int = 0


def _spawn(name: str, cmd: list[str], workdir: Path, on_line: Callable[[str, dict], None]) -> _Proc:
    log_path = workdir / name / "stderr.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    err = open(log_path, "ab")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    popen = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, env=env, text=True)
    err.close()
    proc = _Proc(name, cmd, popen, log_path)

    def pump(p=popen):
        for line in p.stdout:
            try:
                on_line(name, json.loads(line))
            except json.JSONDecodeError:
                on_line(name, {"event": "output", "text": line.rstrip()})
    threading.Thread(target=pump, daemon=True).start()
    return proc


def run_processes(plan: LifecyclePlan, workdir: Path, backend: Literal["embedded", "anvil"] = "embedded",
                  storage: Literal["local", "ipfs"] = "local", on_line: Callable[[str, dict], None] | None = None,
                  kill_at: dict[str, str] | None = None, timeout: float = 900) -> LifecycleResult:
    """Every node its own process. `kill_at[name] = event`: SIGKILL that node right after it logs
    `event` (once), then start it again with the same config: it must resume from chain state."""
    from coopml.chain.processes import start_anvil, start_embedded_node

    t0 = time.monotonic()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    kill_at = dict(kill_at or {})
    events: list[tuple[str, dict]] = []
    lock = threading.Lock()

    journal = open(workdir / "events.jsonl", "a")

    def record(name: str, msg: dict) -> None:
        with lock:
            events.append((name, msg))
            journal.write(json.dumps({"node": name, **msg}) + "\n")
            journal.flush()
        if on_line:
            on_line(name, msg)

    node = start_anvil() if backend == "anvil" else start_embedded_node()
    daemon = None
    procs: dict[str, _Proc] = {}
    try:
        if storage == "ipfs":
            from coopml.storage.daemon import start_daemon
            daemon = start_daemon(workdir / "ipfs-repo")
            store = daemon.api_url
        else:
            store = str(workdir / "store")
        chain = Chain.rpc(node.url)
        coop = deploy(chain, chain.dev_accounts()[0])
        nodes = make_nodes(plan, chain, coop, workdir, node.url, store)
        exe = [sys.executable, "-m", "coopml.cli.main"]
        paths = {}
        for name, cfg in nodes.configs.items():
            path = workdir / name / "config.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch(mode=0o600)
            path.write_text(json.dumps(cfg, indent=1))
            paths[name] = path
        procs["initiator"] = _spawn("initiator", exe + ["initiator", "--config", str(paths["initiator"])],
                                    workdir, record)
        task_id = None
        while task_id is None:
            if time.monotonic() - t0 > 120:
                raise CoopmlError("the initiator did not publish a task within 120 s")
            if procs["initiator"].popen.poll() not in (None, 0):
                raise CoopmlError(f"initiator exited: {procs['initiator'].log_path.read_text()[-1500:]}")
            with lock:
                task_id = next((m["task"] for n, m in events if n == "initiator" and m.get("event") == "published"),
                               None)
            time.sleep(0.1)
        for name in paths:
            if name != "initiator":
                role = "verifier" if name.startswith("verifier") else "contributor"
                procs[name] = _spawn(name, exe + [role, "--config", str(paths[name]), "--task-id", str(task_id)],
                                     workdir, record)
        expected = len(plan.contributors)
        forwarded, seen = False, 0
        ini_cfg = nodes.configs["initiator"]
        while True:
            if time.monotonic() - t0 > timeout:
                raise CoopmlError(f"lifecycle did not finish within {timeout} s")
            with lock:
                fresh, seen = events[seen:], len(events)
            for name, msg in fresh:
                if kill_at.get(name) == msg.get("event"):
                    del kill_at[name]
                    p = procs[name]
                    os.kill(p.popen.pid, signal.SIGKILL)
                    p.popen.wait()
                    record(name, {"event": "killed", "after": msg.get("event")})
                    restarted = _spawn(name, p.cmd, workdir, record)
                    restarted.restarts = p.restarts + 1
                    procs[name] = restarted
                    record(name, {"event": "restarted"})
            failed = {n: p for n, p in procs.items() if p.popen.poll() not in (None, 0)}
            if failed:
                n, p = next(iter(failed.items()))
                raise CoopmlError(f"{n} exited with code {p.popen.returncode}: {p.log_path.read_text()[-1500:]}")
            if all(p.popen.poll() == 0 for p in procs.values()):
                break
            chain.mine()
            skip_idle_windows(chain, coop, task_id)
            if not forwarded and _all_settled(coop, task_id, expected, workdir / "initiator"):
                chain.increase_time(int(ini_cfg.get("announce_window", 600)) + 1)
                forwarded = True
            time.sleep(1.0)
        result = read_outcome(chain, coop, task_id, nodes.names, nodes.behaviours, workdir, time.monotonic() - t0)
        result.restarts = {n: p.restarts for n, p in procs.items() if p.restarts}
        return result
    finally:
        for p in procs.values():
            if p.popen.poll() is None:
                p.popen.kill()
                p.popen.wait()
        if daemon is not None:
            daemon.stop()
        node.stop()
        journal.close()


def write_report(result: LifecycleResult, out: Path) -> Path:
    """report.md + summary.json + accuracy-vs-models figure."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(result.to_json(), indent=2))
    lines = ["# coopml task lifecycle", "", f"Task {result.task_id}, {result.elapsed:.0f} s wall time.", "",
             "| model | contributor | behaviour | outcome | yes | no | votes |", "|---|---|---|---|---|---|---|"]
    for m in result.models:
        votes = ", ".join(f"{v}:{'yes' if a else 'no'}" for v, a in sorted(m.votes.items()))
        lines.append(f"| {m.model_id} | {m.contributor} | {m.behaviour} | {m.status} | {m.yes} | {m.no} | {votes} |")
    lines += ["", "| node | withdrawn (ETH) |", "|---|---|"]
    lines += [f"| {n} | {v:.3f} |" for n, v in sorted(result.withdrawn_eth.items())]
    if result.slashed:
        lines += ["", "Slashed: " + ", ".join(f"{n} ({r})" for n, r in result.slashed.items())]
    if result.fusion_history:
        lines += ["", "| models fused | MetaModel test accuracy |", "|---|---|"]
        lines += [f"| {h['models']} | {h['test_accuracy']:.2%} |" for h in result.fusion_history]
        fig, ax = plt.subplots(figsize=(4, 3))
        ax.plot([h["models"] for h in result.fusion_history], [100 * h["test_accuracy"] for h in result.fusion_history],
                marker="o")
        ax.set_xlabel("verified models fused")
        ax.set_ylabel("MetaModel test accuracy (%)")
        ax.set_xticks([h["models"] for h in result.fusion_history])
        fig.tight_layout()
        fig.savefig(out / "metamodel_accuracy.png", dpi=120)
        plt.close(fig)
        lines += ["", "![MetaModel accuracy](metamodel_accuracy.png)"]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return out

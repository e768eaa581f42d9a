"""The full decentralized task lifecycle as a scenario: 1 initiator, N contributors, V verifiers.

A simulation sets nodes up the way real operators would — an encrypted keystore per node, each
node's data as a pinned file, a task manifest, one JSON config per node (no keys in configs) —
and then runs them:
- `run_in_process`: every agent in this process on one chain (the embedded EVM, or an
  auto-mining anvil), stepped round-robin (fast; used by tests of protocol outcomes); agents get
  their dependencies directly;
- `run_processes`: every agent its own OS process (`coopml initiator|contributor|verifier`,
  forked from a preloaded image: `coopml.sim.launcher`) against a chain node (anvil by default,
  or the embedded node) and a store on 127.0.0.1 (the demo; used by the kill -9 test).
Misbehaving nodes are different agent classes (coopml.sim.behaviours), named by import path.

Dev-chain shortcuts, two, both on the clock only (nodes still act only on what the chain says):
- `run_in_process`: when every agent is idle, waiting for the clock, chain time moves to the next
  deadline instead of waiting it out (`fast_forward`);
- `run_processes` (and the network testbed): chain time moves past windows nobody has anything
  left to do in -- a reveal window once every drawn verifier revealed, a dispute window once the
  buyer checked the model -- only when every unsettled model is in such a window
  (`skip_used_windows`).
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from coopml.chain import (
    ETHER,
    Chain,
    EventCursor,
    Keystore,
    ModelStatus,
    TaskClient,
    Vote,
    deploy,
)
from coopml.data import TABLE_III
from coopml.errors import CoopmlError
from coopml.paths import write_private
from coopml.roles.initiator import audit_wait_ends, finalize_backstop_delay
from coopml.roles.log import LogEvent, LogRecord
from coopml.roles.verifier import verifier_wait_ends
from coopml.sim import slots
from coopml.task import TaskManifest, builtin_manifest

TERMINAL = {ModelStatus.RELEASED, ModelStatus.REJECTED, ModelStatus.INCONCLUSIVE, ModelStatus.CANCELLED,
            ModelStatus.FORFEITED, ModelStatus.REFUNDED}
SCRYPT_N = 2 ** 12   # simulated keystores: the real format, a cheap KDF (nodes start in milliseconds)


class ContributorPlan(BaseModel):
    labels: list[int]
    agent: str = "coopml.roles.contributor:Contributor"
    arch: str = "table4"
    n_train: int = 1000          # training samples (another n_train held out for early stopping)
    epochs: int = 30
    seed: int = 0
    same_data_as: int | None = Field(None, description="index of another contributor whose data (and seed) "
                                     "this one gets; a CopyingContributor copies that contributor's model")


class VerifierPlan(BaseModel):
    agent: str = "coopml.roles.verifier:Verifier"
    n_verify: int = 1000


class InitiatorPlan(BaseModel):
    agent: str = "coopml.roles.initiator:Initiator"
    n_train: int = 1000          # the initiator's own data for the fusion head (plus as many held out)
    n_audit: int = 64
    fusion_epochs: int = 30      # FusionConfig.live: warm-started refits get half
    fusion_augment: int = 4
    n_test: int | None = None    # MNIST test images to report the MetaModel on (None: all)
    own_model: str | None = None  # InitiatorConfig.own_model: a registered arch fused as the initiator's own member


class LifecyclePlan(BaseModel):
    contributors: list[ContributorPlan]
    verifiers: list[VerifierPlan] = Field(default_factory=lambda: [VerifierPlan() for _ in range(3)])
    initiator: InitiatorPlan = InitiatorPlan()
    manifest: str = "mnist-case-study-2"
    overrides: dict[str, dict[str, Any]] = Field(default_factory=dict, description="manifest sections to override")
    dataset: str = "mnist"
    seed: int = 0
    fund_eth: int = 100


def dev_windows(verify_s: int = 300) -> dict[str, int]:
    """Windows for a dev chain with 1 s blocks; idle waits are skipped by the runners."""
    return {"announce_s": 3600, "verify_s": verify_s, "reveal_s": 60, "delivery_s": 120, "dispute_s": 60}


def table3_plan(reduced: bool = False, **manifest: dict[str, Any]) -> LifecyclePlan:
    """Case Study II: three contributors with the Table III label sets and the Table IV CNN."""
    n = 400 if reduced else 1000
    contributors = [ContributorPlan(labels=list(spec.labels), n_train=n, epochs=6 if reduced else 30, seed=i)
                    for i, spec in enumerate(TABLE_III)]
    verifiers = [VerifierPlan(n_verify=500 if reduced else 1000) for _ in range(3)]
    initiator = InitiatorPlan(n_train=n, fusion_epochs=8 if reduced else 30, fusion_augment=1 if reduced else 4,
                              n_test=2000 if reduced else None)
    overrides: dict[str, dict[str, Any]] = {"windows": dev_windows(),
                                            "criterion": {"min_accuracy": 0.7 if reduced else 0.85}}
    if reduced:
        overrides["verification"] = {"queries": 500, "max_queries": 600}
    overrides.update(manifest)
    return LifecyclePlan(contributors=contributors, verifiers=verifiers, initiator=initiator, overrides=overrides)


def tiny_plan(contributors: list[ContributorPlan], verifiers: list[VerifierPlan] | None = None,
              initiator: InitiatorPlan | None = None, **manifest: dict[str, Any]) -> LifecyclePlan:
    """A small but real task for adversarial tests: few samples and epochs, the real contract, real
    agents, real CKKS verification."""
    overrides: dict[str, dict[str, Any]] = {"windows": dev_windows(), "criterion": {"min_accuracy": 0.6},
                                            "verification": {"queries": 300, "max_queries": 400,
                                                             "audit_per_request": 16}}
    for k, v in manifest.items():
        overrides[k] = {**overrides.get(k, {}), **v}
    return LifecyclePlan(contributors=contributors,
                         verifiers=verifiers or [VerifierPlan(n_verify=300) for _ in range(3)],
                         initiator=initiator or InitiatorPlan(n_train=300, n_audit=32, fusion_epochs=3,
                                                              fusion_augment=0, n_test=1000),
                         overrides=overrides)


def manifest_for(plan: LifecyclePlan) -> TaskManifest:
    m = builtin_manifest(plan.manifest)
    econ = {"max_models": len(plan.contributors), "verifiers_per_model": _odd(len(plan.verifiers))}
    changes: dict[str, Any] = {"economics": {**m.economics.model_dump(), **econ}}
    for section, values in plan.overrides.items():
        base = changes.get(section, getattr(m, section).model_dump())
        changes[section] = {**base, **values}
    return m.replace(**changes)


def _odd(v: int) -> int:
    return v if v % 2 else v - 1


# ------------------------------------------------------------------------------ node setup

@dataclass
class Setup:
    """Everything a simulated deployment wrote: per node a keystore, a password file, data files and
    a config file; the task manifest file."""

    workdir: Path
    configs: dict[str, dict[str, Any]]          # node name -> config (as written to its config.json)
    paths: dict[str, Path]                      # node name -> config.json
    agents: dict[str, str]                      # node name -> agent class import path
    names: dict[str, str]                       # address -> node name
    keys: dict[str, bytes] = field(repr=False, default_factory=dict)   # in-process runs only
    manifest: TaskManifest | None = None


def prepare(plan: LifecyclePlan, workdir: Path, chain: Chain, coop: TaskClient, chain_url: str, store: str,
            keep_keys: bool = False) -> Setup:
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    manifest = manifest_for(plan)
    manifest_path = workdir / "manifest.json"
    manifest_path.write_bytes(manifest.to_bytes())
    keystore = Keystore(workdir / "keystores", scrypt_n=SCRYPT_N)
    data_dir = workdir / "data"
    nc, nv = len(plan.contributors), len(plan.verifiers)
    total = 1 + nc + nv
    setup = Setup(workdir, {}, {}, {}, {}, manifest=manifest)
    funds: dict[str, int] = {}

    def node(name: str, agent: str, extra: dict[str, Any]) -> None:
        password = secrets.token_hex(16)
        account = keystore.create(password)
        (workdir / name).mkdir(parents=True, exist_ok=True, mode=0o700)     # the node's private workdir
        pw_file = workdir / name / "password"
        write_private(pw_file, password)
        address = account.address
        funds[address] = plan.fund_eth * ETHER
        if keep_keys:
            setup.keys[name] = keystore.unlock(address, password).key
        cfg = {"chain": chain_url, "contract": coop.address, "from_block": coop.deploy_block, "store": store,
               "workdir": str(workdir / name), "account": {"keystore": str(account.path), "password_file": str(pw_file),
                                                           "password_env": None},
               "log_format": "json", **extra}
        path = write_private(workdir / name / "config.json", json.dumps(cfg, indent=1))
        setup.configs[name], setup.paths[name], setup.agents[name] = cfg, path, agent
        setup.names[address] = name

    ini = plan.initiator
    own = slots.node_data(plan.dataset, 0, total, None, 2 * ini.n_train, plan.seed)
    test = slots.test_images(plan.dataset, ini.n_test)
    full_test = slots.test_images(plan.dataset)
    audit = full_test.subset(__import__("numpy").arange(len(full_test) - ini.n_audit, len(full_test)))
    node("initiator", ini.agent, {
        "manifest": str(manifest_path),
        "data": slots.write_npz(own, data_dir / "initiator.npz").model_dump(mode="json"),
        "test_data": slots.write_npz(test, data_dir / "test.npz").model_dump(mode="json"),
        "audit_data": slots.write_npz(audit, data_dir / "audit.npz").model_dump(mode="json"),
        "n_audit": ini.n_audit, "fusion_epochs": ini.fusion_epochs, "fusion_augment": ini.fusion_augment,
        "close_when_models": nc, "seed": plan.seed,
        **({"own_model": {"arch": ini.own_model}} if ini.own_model else {})})
    for j, v in enumerate(plan.verifiers):
        data = slots.node_data(plan.dataset, 1 + nc + j, total, None, v.n_verify, plan.seed)
        node(f"verifier{j + 1}", v.agent, {"data": slots.write_npz(data, data_dir / f"verifier{j + 1}.npz")
                                           .model_dump(mode="json")})
    for i, c in enumerate(plan.contributors):
        src = plan.contributors[c.same_data_as] if c.same_data_as is not None else c
        idx = c.same_data_as if c.same_data_as is not None else i
        data = slots.node_data(plan.dataset, 1 + idx, total, src.labels, 2 * src.n_train, plan.seed)
        if c.same_data_as is not None:      # a re-seller: the sim tells it whose model to take
            (workdir / f"contributor{i + 1}").mkdir(parents=True, exist_ok=True)
            (workdir / f"contributor{i + 1}" / "copy_of").write_text(str(workdir / f"contributor{c.same_data_as + 1}"))
        node(f"contributor{i + 1}", c.agent, {
            "data": slots.write_npz(data, data_dir / f"contributor{i + 1}.npz").model_dump(mode="json"),
            "model": {"arch": c.arch}, "labels": sorted(src.labels),
            "train": {"max_epochs": src.epochs, "patience": 5, "seed": src.seed}})
    chain.fund_many(funds)
    return setup


# ------------------------------------------------------------------------------ outcome

@dataclass
class ModelOutcome:
    model_id: int
    contributor: str
    agent: str
    status: str
    approve: int
    reject: int
    abstain: int
    votes: dict[str, str]     # verifier name -> revealed vote


@dataclass
class LifecycleResult:
    task_id: int
    models: list[ModelOutcome]
    withdrawn_eth: dict[str, float]
    burnt: dict[str, list[str]]                # name -> reasons its money was burnt
    fusion_history: list[dict[str, Any]]
    elapsed: float
    workdir: Path
    names: dict[str, str] = field(default_factory=dict)
    restarts: dict[str, int] = field(default_factory=dict)
    summaries: dict[str, str] = field(default_factory=dict)   # node -> its one human line
    total_burnt_eth: float = 0.0
    launcher_cpu_seconds: float | None = None   # run_processes: the fork server's shared imports

    def by_contributor(self, name: str) -> ModelOutcome:
        return next(m for m in self.models if m.contributor == name)

    def to_json(self) -> dict[str, Any]:
        return {"task_id": self.task_id, "elapsed_s": round(self.elapsed, 1),
                "models": [m.__dict__ for m in self.models], "withdrawn_eth": self.withdrawn_eth,
                "burnt": self.burnt, "total_burnt_eth": self.total_burnt_eth, "fusion_history": self.fusion_history,
                "summaries": self.summaries}


def read_outcome(chain: Chain, coop: TaskClient, task_id: int, setup: Setup, elapsed: float,
                 summaries: dict[str, str] | None = None) -> LifecycleResult:
    names = setup.names
    cursor = EventCursor(chain, coop.address, from_block=coop.deploy_block)
    votes: dict[int, dict[str, str]] = {}
    withdrawn: dict[str, float] = {}
    burnt: dict[str, list[str]] = {}
    from coopml.chain.client import BurnReason
    for ev in cursor.poll():
        a = ev.args
        if ev.name == "VoteRevealed":
            votes.setdefault(a["modelId"], {})[names.get(a["verifier"], a["verifier"])] = Vote(a["vote"]).name
        elif ev.name == "Withdrawn":
            who = names.get(a["account"], a["account"])
            withdrawn[who] = withdrawn.get(who, 0.0) + a["amount"] / ETHER
        elif ev.name == "Burnt" and a["taskId"] == task_id:
            burnt.setdefault(names.get(a["from"], a["from"]), []).append(BurnReason(a["reason"]).name)
    models = []
    for mid in range(1, coop.model_count() + 1):
        m = coop.model(mid)
        if m.task_id != task_id:
            continue
        who = names.get(m.contributor, m.contributor)
        models.append(ModelOutcome(mid, who, setup.agents.get(who, "?").rsplit(":", 1)[-1], m.status.name, m.approve,
                                   m.reject, m.abstain, votes.get(mid, {})))
    history: list[dict[str, Any]] = []
    state_path = setup.workdir / "initiator" / "state.sqlite"
    if state_path.is_file():
        from coopml.roles.state import AgentState
        st = AgentState(state_path)
        history = st.get("fusion_history", []) or []
        st.close()
    return LifecycleResult(task_id, models, withdrawn, burnt, history, elapsed, setup.workdir, names,
                           summaries=summaries or {}, total_burnt_eth=coop.total_burnt() / ETHER)


# ------------------------------------------------------------------------------ shared clock logic

def next_deadline(coop: TaskClient, task_id: int) -> int | None:
    """The earliest future chain time at which something in the task becomes due."""
    now = coop.chain.now()
    task = coop.task(task_id)            # read once (was once per model in play, and once more)
    terms = task.terms
    due: list[int] = []
    for mid in range(1, coop.model_count() + 1):
        m = coop.model(mid)
        if m.task_id != task_id or m.status in TERMINAL:
            continue
        late = verifier_wait_ends(m.verify_deadline, terms.verify_window)   # verifiers stop waiting
        audit = audit_wait_ends(m.dispute_deadline, terms.dispute_window)   # the buyer stops waiting for reports
        backstop = m.dispute_deadline + finalize_backstop_delay(terms.dispute_window) + 1   # the buyer finalizes
        due += [t for t in (late, audit, backstop, *(d + 1 for d in m.deadlines)) if t > now]
    if not task.closed:
        due.append(task.terms.announce_deadline + 1)
    return min(due) if due else None


def fast_forward(chain: Chain, coop: TaskClient, task_id: int) -> bool:
    target = next_deadline(coop, task_id)
    if target is None:
        return False
    chain.increase_time(max(1, target - chain.now()))
    return True


def checked_by_initiator(records: Iterable[tuple[str, LogRecord]]) -> set[int]:
    """Models the initiator has checked after delivery (received, or disputed): the `checked` that
    `skip_used_windows` takes, from the (node name, record) log every runner collects."""
    return {r.model for n, r in records if n == "initiator" and r.model is not None
            and r.event in (LogEvent.MODEL_RECEIVED, LogEvent.DISPUTED)}


def skip_used_windows(chain: Chain, coop: TaskClient, task_id: int, checked: set[int],
                      settled: set[int] | None = None) -> bool:
    """Dev-chain shortcut: move the clock past windows nobody has anything left to do in — a
    model's reveal window once every drawn verifier has revealed (the contract would already
    accept its finalization; the agents wait for the window's end), a delivered model's dispute
    window once the buyer has checked it (`checked`: model ids) — but only when every unsettled
    model of the task is in such a window and no more models can be announced, so the jump takes
    no time from anybody (another model's vote, delivery or check). True if the clock moved.
    Checking every other model matters: with two models delivered together, skipping the first
    one's dispute window alone would end the second's before the buyer checked it.
    `settled` (the runner keeps it between calls): model ids of the task known to be in a terminal
    status, which never changes — not read again, so a call costs the models in play, not all.
    One jump moves at most half the shorter of the delivery and dispute windows: the agents run
    while this reads, so a model read as fully revealed may be finalized (its delivery window
    opened) before the jump lands; a longer jump once took a whole delivery window from its
    contributor (kill -9 test: the model forfeited). Long windows take several calls."""
    now = chain.now()
    task = coop.task(task_id)
    ends: list[int] = []
    n_models = 0
    for mid in range(1, coop.model_count() + 1):
        if settled is not None and mid in settled:
            n_models += 1
            continue
        m = coop.model(mid)
        if m.task_id != task_id:
            continue
        n_models += 1
        if m.status in TERMINAL:
            if settled is not None:
                settled.add(mid)
            continue
        if m.status == ModelStatus.VERIFYING and m.reveals >= task.terms.verifiers_per_model:
            ends.append(m.reveal_deadline)
        elif m.status == ModelStatus.DELIVERED and mid in checked:
            ends.append(m.dispute_deadline)
        else:
            return False                         # somebody still needs this model's time
    announcing = not task.closed and n_models < task.terms.max_models and now <= task.terms.announce_deadline
    if announcing or not ends or min(ends) < now:
        return False
    cap = now + max(1, min(task.terms.delivery_window, task.terms.dispute_window) // 2)
    chain.increase_time(min(min(ends) + 1, cap) - now)
    return True



# ------------------------------------------------------------------------------ in-process

def run_in_process(plan: LifecyclePlan, workdir: Path, log: Callable[[LogRecord], None] | None = None,
                   max_rounds: int = 20_000, node: Literal["embedded", "anvil"] = "embedded") -> LifecycleResult:
    """Every agent in this process, stepped round-robin on one chain: the in-process py-evm chain
    (`node="embedded"`), or an auto-mining anvil on 127.0.0.1 (`node="anvil"`: the same contract
    and agents, a Rust EVM behind JSON-RPC; the role scenarios spend much less CPU on the chain)."""
    if node == "anvil":
        from coopml.chain.processes import start_anvil

        with start_anvil() as proc:
            return _run_in_process(plan, workdir, Chain.rpc(proc.url), proc.url, log, max_rounds)
    return _run_in_process(plan, workdir, Chain.embedded(), "embedded", log, max_rounds)


def _run_in_process(plan: LifecyclePlan, workdir: Path, chain: Chain, chain_url: str,
                    log: Callable[[LogRecord], None] | None, max_rounds: int) -> LifecycleResult:
    from coopml.roles.config import ContributorConfig, InitiatorConfig, NodeConfig, VerifierConfig, load_config
    from coopml.roles.log import EventLog, Role
    from coopml.roles.runner import load_agent_class
    from coopml.roles.state import AgentState
    from coopml.storage import open_store

    t0 = time.monotonic()
    workdir = Path(workdir)
    coop = deploy(chain, chain.dev_accounts()[0])
    store_spec = str(workdir / "store")
    setup = prepare(plan, workdir, chain, coop, chain_url, store_spec, keep_keys=True)
    cfg_types: dict[Role, type[NodeConfig]] = {Role.INITIATOR: InitiatorConfig, Role.CONTRIBUTOR: ContributorConfig,
                                               Role.VERIFIER: VerifierConfig}
    sink = log or (lambda rec: None)
    agents: dict[str, Any] = {}

    def make(name: str, task_id: int | None) -> Any:
        cls = load_agent_class(setup.agents[name])
        overrides = {"task_id": task_id} if task_id is not None else {}
        cfg = load_config(cfg_types[cls.role], setup.paths[name], **overrides)
        client = TaskClient(chain, coop.address, chain.add_key(setup.keys[name]), deploy_block=coop.deploy_block,
                            payment_intents=True)
        return cls(cfg, client=client, store=open_store(store_spec), state=AgentState(Path(cfg.workdir) / "state.sqlite"),
                   log=EventLog(cls.role, name, sink))

    agents["initiator"] = make("initiator", None)
    agents["initiator"].run_once()
    task_id = agents["initiator"].task_id
    for name in setup.agents:
        if name != "initiator":
            agents[name] = make(name, task_id)
    idle_rounds = 0
    for _ in range(max_rounds):
        if all(a.done for a in agents.values()):
            break
        progressed = False
        for a in agents.values():
            if not a.done:
                progressed = a.run_once() or progressed
        busy = any(a.jobs.busy() for a in agents.values())
        chain.mine()
        if progressed or busy:
            idle_rounds = 0
            if busy and not progressed:
                time.sleep(0.05)
        else:
            idle_rounds += 1
            if idle_rounds >= 3 and fast_forward(chain, coop, task_id):
                idle_rounds = 0
    else:
        raise CoopmlError(f"lifecycle did not finish in {max_rounds} rounds; stuck: "
                          f"{[n for n, a in agents.items() if not a.done]}")
    summaries = {n: a.summary for n, a in agents.items()}
    for a in agents.values():
        a.close()
    return read_outcome(chain, coop, task_id, setup, time.monotonic() - t0, summaries)


# ------------------------------------------------------------------------------ processes

def run_processes(plan: LifecyclePlan, workdir: Path, backend: Literal["anvil", "embedded"] = "anvil",
                  storage: Literal["local", "ipfs"] = "local", on_record: Callable[[str, LogRecord], None] | None = None,
                  kill_at: dict[str, str] | None = None, block_time: float = 1.0, timeout: float = 3600) -> LifecycleResult:
    """Every node its own process. `kill_at[name] = event`: SIGKILL that node right after it logs
    `event` (once), then start it again with the same config: it must resume from chain state.
    `timeout` only guards the test harness; the nodes themselves follow the chain's deadlines."""
    from coopml.chain.processes import start_anvil, start_embedded_node
    from coopml.sim.launcher import AgentProcess, launcher_cpu_seconds, start_agent, warm_up

    t0 = time.monotonic()
    warm_up()   # the nodes' shared imports load while the chain node starts and the task is prepared
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    kill_at = dict(kill_at or {})
    records: list[tuple[str, LogRecord]] = []
    lock = threading.Lock()
    journal = open(workdir / "events.jsonl", "a")  # noqa: SIM115 -- closed in the `finally` below

    def record(name: str, rec: LogRecord) -> None:
        with lock:
            records.append((name, rec))
            journal.write(json.dumps({"node": name, **rec.model_dump(mode="json")}) + "\n")
            journal.flush()
        if on_record:
            on_record(name, rec)

    node = start_anvil(block_time=block_time) if backend == "anvil" else start_embedded_node(block_time=block_time)
    daemon = None
    procs: dict[str, AgentProcess] = {}
    try:
        if storage == "ipfs":
            from coopml.storage.daemon import start_daemon
            daemon = start_daemon(workdir / "ipfs-repo")
            store = daemon.api_url
        else:
            store = str(workdir / "store")
        chain = Chain.rpc(node.url)
        coop = deploy(chain, chain.dev_accounts()[0])
        setup = prepare(plan, workdir, chain, coop, node.url, store)

        def command(name: str, task_id: int | None) -> list[str]:
            role = "initiator" if name == "initiator" else name.rstrip("0123456789")
            cmd = [role, "--config", str(setup.paths[name]), "--agent", setup.agents[name], "--name", name]
            return cmd + (["--task-id", str(task_id)] if task_id is not None else [])

        procs["initiator"] = start_agent("initiator", command("initiator", None), workdir / "initiator", record)
        task_id = None
        while task_id is None:
            if procs["initiator"].poll() not in (None, 0):
                raise CoopmlError(f"initiator exited: {procs['initiator'].stderr_tail()}")
            if time.monotonic() - t0 > 300:
                raise CoopmlError("the initiator did not publish a task within 300 s")
            with lock:
                task_id = next((r.task for n, r in records if n == "initiator" and r.event == LogEvent.PUBLISHED), None)
            time.sleep(0.1)
        for name in setup.agents:
            if name != "initiator":
                procs[name] = start_agent(name, command(name, task_id), workdir / name, record)
        seen = 0
        settled: set[int] = set()
        while True:
            if time.monotonic() - t0 > timeout:
                raise CoopmlError(f"lifecycle did not finish within {timeout} s")
            with lock:
                fresh, seen = records[seen:], len(records)
            for name, rec in fresh:
                if kill_at.get(name) == rec.event.value:
                    del kill_at[name]
                    p = procs[name]
                    p.kill()    # a real SIGKILL of the node's process
                    procs[name] = start_agent(name, p.argv, workdir / name, record, restarts=p.restarts + 1)
            failed = {n: p for n, p in procs.items() if p.poll() not in (None, 0)}
            if failed:
                n, p = next(iter(failed.items()))
                raise CoopmlError(f"{n} exited with code {p.poll()}: {p.stderr_tail()}")
            if all(p.poll() == 0 for p in procs.values()):
                break
            with lock:
                checked = checked_by_initiator(records)
            skip_used_windows(chain, coop, task_id, checked, settled)
            time.sleep(0.25)
        summaries = {}
        with lock:
            for n, r in records:
                if r.event == LogEvent.DONE and r.human:
                    summaries[n] = r.human
        result = read_outcome(chain, coop, task_id, setup, time.monotonic() - t0, summaries)
        result.restarts = {n: p.restarts for n, p in procs.items() if p.restarts}
        result.launcher_cpu_seconds = launcher_cpu_seconds()
        return result
    finally:
        for p in procs.values():
            p.kill()
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
             "| model | contributor | agent | outcome | approve | reject | abstain | votes |",
             "|---|---|---|---|---|---|---|---|"]
    for m in result.models:
        votes = ", ".join(f"{v}:{a.lower()}" for v, a in sorted(m.votes.items()))
        lines.append(f"| {m.model_id} | {m.contributor} | {m.agent} | {m.status} | {m.approve} | {m.reject} | "
                     f"{m.abstain} | {votes} |")
    lines += ["", "| node | withdrawn (ETH) | its last word |", "|---|---|---|"]
    for n in sorted(set(result.withdrawn_eth) | set(result.summaries)):
        lines.append(f"| {n} | {result.withdrawn_eth.get(n, 0.0):.3f} | {result.summaries.get(n, '')} |")
    if result.burnt:
        lines += ["", f"Burnt (never paid to anyone): {result.total_burnt_eth:.3f} ETH — "
                  + ", ".join(f"{n} ({', '.join(r)})" for n, r in result.burnt.items())]
    if result.fusion_history:
        lines += ["", "| models fused | MetaModel test accuracy | refit (s) | warm start |", "|---|---|---|---|"]
        lines += [f"| {len(h['members'])} | {h['test_accuracy']:.2%} | {h.get('seconds', float('nan')):.1f} | "
                  f"{'yes' if h.get('warm_start') else 'no'} |" for h in result.fusion_history
                  if h.get("test_accuracy") is not None]
        last = result.fusion_history[-1]
        lines += ["", f"MetaModel file: `{last.get('path')}`"]
        fig, ax = plt.subplots(figsize=(4, 3))
        xs = [len(h["members"]) for h in result.fusion_history if h.get("test_accuracy") is not None]
        ys = [100 * h["test_accuracy"] for h in result.fusion_history if h.get("test_accuracy") is not None]
        ax.plot(xs, ys, marker="o")
        ax.set_xlabel("bought models fused")
        ax.set_ylabel("MetaModel test accuracy (%)")
        ax.set_xticks(xs)
        fig.tight_layout()
        fig.savefig(out / "metamodel_accuracy.png", dpi=120)
        plt.close(fig)
        lines += ["", "![MetaModel accuracy](metamodel_accuracy.png)"]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return out

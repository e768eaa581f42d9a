"""The one module of the testbed that knows the coopml agents (roles): who the hosts are, what
config each agent gets, which command starts it, how the task is driven and read back, which
log events mark the phases of each role, and what data FedAvg clients hold for "the same task".
Everything else in coopml.testbed is agent-agnostic; port this module when the agents change.

Today it uses the `coopml initiator|contributor|verifier --config FILE` commands and
`coopml.sim.lifecycle.make_nodes` configs. The driver (`python -m coopml.testbed.workload
SPEC.json`) runs as its own process inside the operator's namespace: it deploys the contract
over the emulated network, starts every agent in its host's namespace (`ip netns exec`), merges
their JSON logs into one journal the orchestrator tails, and writes the outcome when all agents
have exited.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Literal, cast

from pydantic import BaseModel, Field

from coopml.errors import CoopmlError

PUBLISHED_TIMEOUT = 300.0
IPFS_API = "http://127.0.0.1:5001"   # each agent's own daemon, on its namespace's loopback

# Phases of each role: (phase name, event that ends it, first or last occurrence). A phase starts
# where the previous one ended (the first at the agent's start).
PHASES: dict[str, list[tuple[str, str, Literal["first", "last"]]]] = {
    "initiator": [("publish", "published", "first"), ("share data", "verification-data-sent", "last"),
                  ("await models", "model-decrypted", "first"), ("decrypt+fuse", "fused", "last"),
                  ("close+settle", "done", "last")],
    "contributor": [("join", "registered", "first"), ("train", "trained", "first"),
                    ("encrypt+announce", "announced", "first"), ("verification", "key-released", "first"),
                    ("settle", "done", "last")],
    "verifier": [("join", "registered", "first"), ("verify", "evaluated", "last"),
                 ("vote", "revealed", "last"), ("settle", "done", "last")],
}


# Events worth a line in the orchestrator's progress log.
PROGRESS_EVENTS = frozenset({event for phases in PHASES.values() for _, event, _ in phases} | {"failed"})
FEDAVG_SERVER = "initiator"      # FedAvg's server runs on the initiator's host, clients on the contributors'


def measure_pair(n_contributors: int) -> tuple[str, str]:
    """Two agent hosts to measure the links between (ping, iperf3)."""
    return "contributor1", ("contributor2" if n_contributors > 1 else "initiator")


def testbed_hosts(n_contributors: int, n_verifiers: int) -> list[tuple[str, str]]:
    """(host name, role) for every host: the chain node, the operator's console, the agents."""
    if not 1 <= n_contributors <= 7:
        raise CoopmlError(f"contributors must be 1..7 (data slots), got {n_contributors}")
    if n_verifiers < 1:
        raise CoopmlError(f"need at least one verifier, got {n_verifiers}")
    return ([("chain", "chain"), ("operator", "operator"), ("initiator", "initiator")]
            + [(f"contributor{i + 1}", "contributor") for i in range(n_contributors)]
            + [(f"verifier{i + 1}", "verifier") for i in range(n_verifiers)])


def storage_hosts(hosts: list[tuple[str, str]]) -> list[str]:
    """Hosts whose agent needs an IPFS daemon of its own."""
    return [n for n, role in hosts if role in ("initiator", "contributor", "verifier")]


DataSize = Literal["tiny", "reduced", "full"]


def make_plan(n_contributors: int, n_verifiers: int, data: DataSize, block_time: float, seed: int = 0) -> Any:
    """The Case Study II task (Table III label sets, cycled), sized for the testbed. `tiny` is
    for CI (200 images, 3 epochs): it checks the plumbing, not the accuracy."""
    from coopml.sim.lifecycle import ContributorPlan, table3_plan
    reduced = data != "full"
    slow = max(1.0, block_time)
    per_model = n_verifiers if n_verifiers % 2 else n_verifiers - 1
    plan = table3_plan(reduced=reduced, commit_window=int(max(120, 16 * slow)), reveal_window=int(max(30, 6 * slow)),
                       release_window=int(max(120, 12 * slow)), announce_window=3600,
                       verifiers_per_model=max(1, per_model), max_models=n_contributors,
                       close_when_models=n_contributors)
    base = plan.contributors
    plan.contributors = [ContributorPlan(**{**base[i % len(base)].model_dump(), "slot": i + 1})
                         for i in range(n_contributors)]
    if data == "tiny":
        plan.contributors = [c.model_copy(update={"n_train": 200, "n_val": 100, "epochs": 3}) for c in plan.contributors]
        plan.initiator.update(n_train=200, n_verify=200, fusion_epochs=3, fusion_augment=0, min_accuracy=0.5)
    plan.verifiers = ["honest"] * n_verifiers
    plan.seed = seed
    return plan


class WorkloadSpec(BaseModel):
    """Everything the driver process needs (written by the orchestrator as JSON)."""

    plan: dict[str, Any]
    chain_url: str
    workdir: str
    netns: dict[str, str]                 # agent name -> its host's namespace
    poll_interval: float = 0.5
    agent_timeout: float = 1800
    shortcuts: bool = True                # skip idle commit/reveal windows on the dev chain
    timeout: float = 3600
    python: str = Field(default_factory=lambda: sys.executable)
    pythonpath: str = ""


# ------------------------------------------------------------------------------ driver process

class Driver:
    def __init__(self, spec: WorkloadSpec) -> None:
        self.spec = spec
        self.workdir = Path(spec.workdir)
        self.journal_path = self.workdir / "events.jsonl"
        self.journal = open(self.journal_path, "a")  # noqa: SIM115 - the driver's whole life
        self.offsets: dict[str, int] = {}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.events: list[tuple[str, dict[str, Any]]] = []

    def note(self, node: str, msg: dict[str, Any]) -> None:
        msg = {"t": round(time.time(), 3), **msg} if "t" not in msg else msg
        self.events.append((node, msg))
        self.journal.write(json.dumps({"node": node, **msg}) + "\n")
        self.journal.flush()

    def spawn(self, name: str, args: list[str]) -> None:
        from coopml.testbed.netns import proc_start_ticks
        d = self.workdir / name
        d.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        if self.spec.pythonpath:
            env["PYTHONPATH"] = self.spec.pythonpath
        cmd = ["ip", "netns", "exec", self.spec.netns[name], self.spec.python, "-m", "coopml.cli.main", *args]
        with open(d / "stdout.jsonl", "ab") as out, open(d / "stderr.log", "ab") as err:
            p = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        self.procs[name] = p
        self.offsets.setdefault(name, 0)
        self.note(name, {"event": "spawned", "pid": p.pid, "start_ticks": proc_start_ticks(p.pid),
                         "netns": self.spec.netns[name], "cmd": cmd})

    def pump(self) -> None:
        """Move complete new lines of every agent's stdout into the journal."""
        for name in list(self.procs):
            path = self.workdir / name / "stdout.jsonl"
            with open(path, "rb") as f:
                f.seek(self.offsets[name])
                data = f.read()
            end = data.rfind(b"\n") + 1
            self.offsets[name] += end
            for line in data[:end].decode(errors="replace").splitlines():
                try:
                    msg = json.loads(line)
                except json.JSONDecodeError:
                    msg = {"event": "output", "text": line[:500]}
                if isinstance(msg, dict):
                    self.note(name, msg)

    def run(self) -> dict[str, Any]:
        from coopml.chain import Chain, deploy
        from coopml.sim.lifecycle import (
            LifecyclePlan,
            _all_settled,
            make_nodes,
            read_outcome,
            skip_idle_windows,
        )

        spec = self.spec
        t0 = time.monotonic()
        plan = LifecyclePlan.model_validate(spec.plan)
        chain = Chain.rpc(spec.chain_url)
        deployer = chain.dev_accounts()[0]
        coop = deploy(chain, deployer)
        self.note("driver", {"event": "deployed", "contract": coop.address, "block": coop.deploy_block})
        nodes = make_nodes(plan, cast(Any, _GenesisFunding(chain)), coop, self.workdir, spec.chain_url, IPFS_API)
        paths = {}
        for name, cfg in nodes.configs.items():
            cfg.update(poll_interval=spec.poll_interval, timeout=spec.agent_timeout)
            path = self.workdir / name / "config.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch(mode=0o600)
            path.write_text(json.dumps(cfg, indent=1))
            paths[name] = path
        self.spawn("initiator", ["initiator", "--config", str(paths["initiator"])])
        task_id = None
        while task_id is None:
            self.pump()
            task_id = next((m["task"] for n, m in self.events if n == "initiator" and m.get("event") == "published"),
                           None)
            self._check_failures()
            if time.monotonic() - t0 > PUBLISHED_TIMEOUT:
                raise CoopmlError(f"the initiator did not publish a task within {PUBLISHED_TIMEOUT:.0f} s")
            time.sleep(0.2)
        for name, path in paths.items():
            if name != "initiator":
                role = "verifier" if name.startswith("verifier") else "contributor"
                self.spawn(name, [role, "--config", str(path), "--task-id", str(task_id)])
        forwarded = False
        ini_cfg = nodes.configs["initiator"]
        while True:
            self.pump()
            self._check_failures()
            if all(p.poll() == 0 for p in self.procs.values()):
                break
            if time.monotonic() - t0 > spec.timeout:
                raise CoopmlError(f"the task did not finish within {spec.timeout:.0f} s")
            try:
                if spec.shortcuts:
                    skip_idle_windows(chain, coop, task_id)
                if not forwarded and _all_settled(coop, task_id, len(plan.contributors), self.workdir / "initiator"):
                    if spec.shortcuts:
                        chain.increase_time(int(ini_cfg.get("announce_window", 600)) + 1)
                    forwarded = True
            except (CoopmlError, OSError) as exc:   # the operator's own link may be busy: try again
                self.note("driver", {"event": "retry", "error": str(exc)[:200]})
            time.sleep(1.0)
        self.pump()
        result = read_outcome(chain, coop, task_id, nodes.names, nodes.behaviours, self.workdir,
                              time.monotonic() - t0)
        out = result.to_json()
        out["contract"] = coop.address
        out["block_number"] = chain.block_number()
        self.note("driver", {"event": "finished", "elapsed_s": out["elapsed_s"]})
        return out

    def _check_failures(self) -> None:
        for name, p in self.procs.items():
            if p.poll() not in (None, 0):
                self.pump()
                tail = (self.workdir / name / "stderr.log").read_text(errors="replace")[-1500:]
                raise CoopmlError(f"{name} exited with code {p.returncode}: {tail}")

    def stop_agents(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
        for p in self.procs.values():
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


class _GenesisFunding:
    """make_nodes funds every account with a transaction; on a 15 s block chain that is one block
    per node. Like the paper's PoA genesis ("all sealers are initialized with a small number of
    tokens"), set the balances directly instead (anvil_setBalance)."""

    def __init__(self, chain: Any) -> None:
        self.chain = chain

    def fund(self, address: str, amount_wei: int) -> None:
        self.chain.w3.provider.make_request("anvil_setBalance", [address, hex(amount_wei)])


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m coopml.testbed.workload SPEC.json", file=sys.stderr)
        return 2
    spec = WorkloadSpec.model_validate_json(Path(args[0]).read_text())
    driver = Driver(spec)
    out_path = Path(spec.workdir) / "outcome.json"
    try:
        outcome = driver.run()
        out_path.write_text(json.dumps(outcome, indent=1))
        return 0
    except CoopmlError as exc:
        driver.note("driver", {"event": "failed", "error": str(exc)[:2000]})
        out_path.write_text(json.dumps({"error": str(exc)}, indent=1))
        return 3
    finally:
        driver.stop_agents()


# ------------------------------------------------------------------------------ reading a run back

def node_phases(role: str, events: list[dict[str, Any]], started: float) -> list[tuple[str, float, float]]:
    """[(phase, start, end)] for one node from its journal events (unix times)."""
    out = []
    start = started
    for phase, event, which in PHASES.get(role, []):
        times = [e["t"] for e in events if e.get("event") == event and "t" in e]
        if not times:
            continue
        end = times[0] if which == "first" else times[-1]
        if end < start:
            continue
        out.append((phase, start, end))
        start = end
    return out


# ------------------------------------------------------------------------------ FedAvg on the same task

def fedavg_job(plan: Any, rounds: int, local_epochs: int, n_test: int) -> dict[str, Any]:
    """The FedAvg counterpart of `plan`: the contributors' private data as clients, the task's
    model architecture, evaluated on the test set."""
    from coopml.roles.config import InitiatorConfig
    arch = plan.initiator.get("arch", InitiatorConfig.model_fields["arch"].default)
    clients = {f"contributor{i + 1}": {"slot": c.slot, "labels": list(c.labels), "n_train": c.n_train, "n_val": c.n_val}
               for i, c in enumerate(plan.contributors)}
    return {"arch": arch, "dataset": plan.dataset, "seed": plan.seed, "rounds": rounds, "local_epochs": local_epochs,
            "clients": clients, "n_test": n_test}


def fedavg_client_data(job: dict[str, Any], client: str) -> Any:
    """The training data `client` holds: exactly the contributor's private shard."""
    from coopml.roles.data import contributor_data
    c = job["clients"][client]
    return contributor_data(job["dataset"], job["seed"], c["slot"], c["labels"], c["n_train"], c["n_val"]).train


if __name__ == "__main__":
    sys.exit(main())

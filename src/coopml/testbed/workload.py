"""The one module of the testbed that knows the coopml agents (roles): who the hosts are, what
config each agent gets, which command starts it, how the task is driven and read back, which
log events mark the phases of each role, and what data FedAvg clients hold for "the same task".
Everything else in coopml.testbed is agent-agnostic; port this module when the agents change.

The agents are the production ones (`coopml initiator|contributor|verifier --config FILE`, JSON
log records on stdout), set up exactly as `coopml.sim.lifecycle.prepare` sets up a simulated
deployment (an encrypted keystore, a 0600 password file, pinned npz data and a config per node,
the task manifest); only the chain URL and the store differ: the chain host's anvil over the
emulated network, and each agent's own IPFS daemon on its namespace's loopback. The driver
(`python -m coopml.testbed.workload SPEC.json`) runs as its own process inside the operator's
namespace: it deploys the contract over the emulated network, starts every agent in its host's
namespace (`ip netns exec`), merges their JSON logs into one journal the orchestrator tails, and
writes the outcome when all agents have exited.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from coopml.chain import Chain
from coopml.errors import CoopmlError
from coopml.roles.log import LogEvent

if TYPE_CHECKING:
    from coopml.sim.lifecycle import LifecyclePlan

PUBLISHED_TIMEOUT = 300.0
IPFS_API = "http://127.0.0.1:5001"   # each agent's own daemon, on its namespace's loopback

# Phases of each role: (phase name, event that ends it, first or last occurrence). A phase starts
# where the previous one ended (the first at the agent's start).
PHASES: dict[str, list[tuple[str, str, Literal["first", "last"]]]] = {
    "initiator": [("publish", "published", "first"), ("await models", "model-received", "first"),
                  ("check+fuse", "fused", "last"), ("close+settle", "done", "last")],
    "contributor": [("join", "registered", "first"), ("train+encrypt", "trained", "first"),
                    ("announce", "announced", "first"), ("verification", "delivered", "first"),
                    ("settle", "done", "last")],
    "verifier": [("join", "registered", "first"), ("verify", "evaluated", "last"),
                 ("vote", "revealed", "last"), ("settle", "done", "last")],
}

# Events that need the chain: the agent logs them only after its transaction was mined.
CHAIN_EVENTS = frozenset({"registered", "published", "announced", "drawn", "delivered", "revealed", "committed",
                          "settled", "withdrawn", "closed", "finalized"})

# Every event an agent logs (coopml.roles.log.LogEvent), e.g. to trigger a link cut on.
AGENT_EVENTS = frozenset(e.value for e in LogEvent)

# Events worth a line in the orchestrator's progress log.
PROGRESS_EVENTS = frozenset({event for phases in PHASES.values() for _, event, _ in phases} | {"failed"})
FEDAVG_SERVER = "initiator"      # FedAvg's server runs on the initiator's host, clients on the contributors'


def measure_pair(n_contributors: int) -> tuple[str, str]:
    """Two agent hosts to measure the links between (ping, iperf3)."""
    return "contributor1", ("contributor2" if n_contributors > 1 else "initiator")


def testbed_hosts(n_contributors: int, n_verifiers: int) -> list[tuple[str, str]]:
    """(host name, role) for every host: the chain node, the operator's console, the agents."""
    if not 1 <= n_contributors <= 7:
        raise CoopmlError(f"contributors must be 1..7, got {n_contributors}")
    if n_verifiers < 1:
        raise CoopmlError(f"need at least one verifier, got {n_verifiers}")
    return ([("chain", "chain"), ("operator", "operator"), ("initiator", "initiator")]
            + [(f"contributor{i + 1}", "contributor") for i in range(n_contributors)]
            + [(f"verifier{i + 1}", "verifier") for i in range(n_verifiers)])


def storage_hosts(hosts: list[tuple[str, str]]) -> list[str]:
    """Hosts whose agent needs an IPFS daemon of its own."""
    return [n for n, role in hosts if role in ("initiator", "contributor", "verifier")]


DataSize = Literal["tiny", "reduced", "full"]


def windows_for(block_time: float) -> dict[str, int]:
    """The task's windows (chain seconds), long enough for several blocks of `block_time`."""
    from coopml.sim.lifecycle import dev_windows
    slow = max(1.0, block_time)
    base = dev_windows()
    return {"announce_s": base["announce_s"], "verify_s": int(max(base["verify_s"], 40 * slow)),
            "reveal_s": int(max(base["reveal_s"], 8 * slow)), "delivery_s": int(max(base["delivery_s"], 16 * slow)),
            "dispute_s": int(max(base["dispute_s"], 8 * slow))}


def make_plan(n_contributors: int, n_verifiers: int, data: DataSize, block_time: float, seed: int = 0
              ) -> LifecyclePlan:
    """The Case Study II task (Table III label sets, cycled over the contributors), sized for the
    testbed: `full` and `reduced` as `coopml.sim.lifecycle.table3_plan`; `tiny` is for CI (200
    training images, 3 epochs, 300 CKKS queries): it checks the plumbing, not the accuracy."""
    from coopml.data import TABLE_III
    from coopml.sim.lifecycle import (
        ContributorPlan,
        VerifierPlan,
        table3_plan,
        tiny_plan,
    )
    table3 = table3_plan(reduced=data != "full")
    n_train, epochs = (200, 3) if data == "tiny" else (table3.contributors[0].n_train, table3.contributors[0].epochs)
    contributors = [ContributorPlan(labels=list(TABLE_III[i % len(TABLE_III)].labels), n_train=n_train, epochs=epochs,
                                    seed=i, same_data_as=None) for i in range(n_contributors)]
    if data == "tiny":
        plan = tiny_plan(contributors, criterion={"min_accuracy": 0.5})
        verifier = VerifierPlan(n_verify=300)
    else:
        plan = table3.model_copy(update={"contributors": contributors})
        verifier = table3.verifiers[0]
    plan.verifiers = [verifier.model_copy() for _ in range(n_verifiers)]
    plan.overrides["windows"] = windows_for(block_time)
    plan.seed = seed
    return plan


class WorkloadSpec(BaseModel):
    """Everything the driver process needs (written by the orchestrator as JSON)."""

    plan: dict[str, Any]
    chain_url: str
    workdir: str
    netns: dict[str, str]                 # agent name -> its host's namespace
    poll_interval: float = 0.2            # how often the driver reads the agents' logs (s)
    shortcuts: bool = True                # skip reveal and dispute windows nobody needs (dev chain)
    timeout: float = 3600
    python: str = Field(default_factory=lambda: sys.executable)
    pythonpath: str = ""


class GenesisFundedChain(Chain):
    """`prepare` funds every account with a transaction; on a 15 s block chain that is one block
    per node. Like the paper's PoA genesis ("all sealers are initialized with a small number of
    tokens"), set the balances directly instead (anvil_setBalance)."""

    def fund(self, address: str, amount_wei: int, sender: str | None = None) -> None:
        from web3.types import RPCEndpoint
        reply = self.w3.provider.make_request(RPCEndpoint("anvil_setBalance"), [address, hex(amount_wei)])
        if reply.get("error"):
            raise CoopmlError(f"anvil_setBalance failed: {reply['error']}")


# ------------------------------------------------------------------------------ driver process

class Driver:
    def __init__(self, spec: WorkloadSpec) -> None:
        from coopml.roles.log import LogRecord
        self.spec = spec
        self.workdir = Path(spec.workdir)
        self.journal_path = self.workdir / "events.jsonl"
        self.journal = open(self.journal_path, "a")  # noqa: SIM115 - the driver's whole life
        self.offsets: dict[str, int] = {}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.records: list[tuple[str, LogRecord]] = []     # the agents' typed log records
        self.lock = threading.Lock()

    def note(self, node: str, msg: dict[str, Any]) -> None:
        msg = {"t": round(time.time(), 3), **msg} if "t" not in msg else msg
        self.events.append((node, msg))
        self.journal.write(json.dumps({**msg, "node": node}) + "\n")
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
        from coopml.roles.log import parse_record
        for name in list(self.procs):
            path = self.workdir / name / "stdout.jsonl"
            with open(path, "rb") as f:
                f.seek(self.offsets[name])
                data = f.read()
            end = data.rfind(b"\n") + 1
            self.offsets[name] += end
            for line in data[:end].decode(errors="replace").splitlines():
                rec = parse_record(line)
                if rec is None:
                    if line.strip():
                        self.note(name, {"event": "output", "text": line[:500]})
                    continue
                with self.lock:
                    self.records.append((name, rec))
                self.note(name, rec.model_dump(mode="json"))

    def run(self) -> dict[str, Any]:
        from coopml.chain import deploy
        from coopml.sim.lifecycle import (
            LifecyclePlan,
            checked_by_initiator,
            prepare,
            read_outcome,
            skip_used_windows,
        )

        spec = self.spec
        t0 = time.monotonic()
        plan = LifecyclePlan.model_validate(spec.plan)
        chain = GenesisFundedChain.rpc(spec.chain_url)
        coop = deploy(chain, chain.dev_accounts()[0])
        self.note("driver", {"event": "deployed", "contract": coop.address, "block": coop.deploy_block})
        setup = prepare(plan, self.workdir, chain, coop, spec.chain_url, IPFS_API)

        def command(name: str, task_id: int | None) -> list[str]:
            role = name.rstrip("0123456789")
            args = [role, "--config", str(setup.paths[name]), "--agent", setup.agents[name], "--name", name]
            return args + (["--task-id", str(task_id)] if task_id is not None else [])

        self.spawn("initiator", command("initiator", None))
        task_id = None
        while task_id is None:
            self.pump()
            task_id = next((r.task for n, r in self.records if n == "initiator" and r.event == LogEvent.PUBLISHED),
                           None)
            self._check_failures()
            if time.monotonic() - t0 > PUBLISHED_TIMEOUT:
                raise CoopmlError(f"the initiator did not publish a task within {PUBLISHED_TIMEOUT:.0f} s")
            time.sleep(spec.poll_interval)
        self.note("driver", {"event": "task", "task": task_id})
        for name in setup.agents:
            if name != "initiator":
                self.spawn(name, command(name, task_id))
        while True:
            self.pump()
            self._check_failures()
            if all(p.poll() == 0 for p in self.procs.values()):
                break
            if time.monotonic() - t0 > spec.timeout:
                raise CoopmlError(f"the task did not finish within {spec.timeout:.0f} s")
            if spec.shortcuts:
                try:
                    with self.lock:
                        checked = checked_by_initiator(self.records)
                    skip_used_windows(chain, coop, task_id, checked)
                except (CoopmlError, OSError) as exc:   # the operator's own link may be busy: try again
                    self.note("driver", {"event": "retry", "error": str(exc)[:200]})
            time.sleep(spec.poll_interval)
        self.pump()
        summaries = {n: r.human for n, r in self.records if r.event == LogEvent.DONE and r.human}
        result = read_outcome(chain, coop, task_id, setup, time.monotonic() - t0, summaries)
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

def fedavg_job(plan: LifecyclePlan, rounds: int, local_epochs: int, n_test: int) -> dict[str, Any]:
    """The FedAvg counterpart of `plan`: the contributors' private data as clients, the task's
    model architecture, evaluated on the test set. Each client is described by what `prepare`
    draws for that contributor (its data slot among all nodes, its labels and sample count) and
    how the contributor holds part of it out (fraction and seed of the split)."""
    from coopml.roles.config import ContributorConfig
    val_fraction = ContributorConfig.model_fields["val_fraction"].default
    total = 1 + len(plan.contributors) + len(plan.verifiers)
    clients = {}
    for i, c in enumerate(plan.contributors):
        if c.same_data_as is not None:
            raise CoopmlError(f"contributor{i + 1} re-sells another's data: FedAvg has no counterpart for it")
        clients[f"contributor{i + 1}"] = {"index": 1 + i, "total": total, "labels": sorted(c.labels),
                                          "n": 2 * c.n_train, "val_fraction": val_fraction, "split_seed": c.seed}
    return {"arch": plan.contributors[0].arch, "dataset": plan.dataset, "seed": plan.seed, "rounds": rounds,
            "local_epochs": local_epochs, "clients": clients, "n_test": n_test}


def fedavg_client_data(job: dict[str, Any], client: str) -> Any:
    """The training data `client` holds: exactly the part of the contributor's private data that
    the contributor trains on (`coopml.sim.slots.node_data`, then the contributor's own split)."""
    from coopml.roles.datasets import split
    from coopml.sim import slots
    c = job["clients"][client]
    data = slots.node_data(job["dataset"], int(c["index"]), int(c["total"]), list(c["labels"]), int(c["n"]),
                           int(job["seed"]))
    return split(data, float(c["val_fraction"]), seed=int(c["split_seed"]))[0]


if __name__ == "__main__":
    sys.exit(main())

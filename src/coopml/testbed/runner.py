"""One testbed run, end to end: build the network, start the chain and the private IPFS swarm,
measure the links, run the coopml task (agents from coopml.testbed.workload), cut links on cue,
run FedAvg on the same task and links, write the report, tear everything down.

Teardown happens in a `finally` (and on SIGTERM), so a failed or interrupted run leaves nothing;
a run killed with SIGKILL leaves its state file, from which `coopml testbed down` removes it.
"""

from __future__ import annotations

import json
import re
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from coopml.testbed import workload
from coopml.testbed.errors import TestbedError
from coopml.testbed.measure import (
    CounterSampler,
    delta,
    matrix_delta,
    measure_path,
    split_by_peer,
)
from coopml.testbed.presets import Preset, get_preset
from coopml.testbed.state import ProcRecord
from coopml.testbed.topology import SRC_DIR, Testbed

Log = Callable[[str], None]
FEDAVG_PORT = 7070


class LinkCut(BaseModel):
    """Take `host`'s link down right after it logs `after_event`, for `seconds`."""

    host: str
    after_event: str
    seconds: float = Field(gt=0, le=600)

    @classmethod
    def parse(cls, text: str) -> LinkCut:
        m = re.fullmatch(r"([\w-]+)@([\w-]+):([\d.]+)", text.strip())
        if not m:
            raise TestbedError(f"bad --cut {text!r}: expected HOST@EVENT:SECONDS, e.g. verifier1@registered:5")
        return cls(host=m.group(1), after_event=m.group(2), seconds=float(m.group(3)))


class RunOptions(BaseModel):
    preset: str = "ci"
    contributors: int = Field(3, ge=1, le=7)
    verifiers: int = Field(3, ge=1, le=15)
    switch: str = "auto"
    data: str | None = None               # override the preset's data size (tiny, reduced, full)
    measure: bool = True
    fedavg: bool = True
    shortcuts: bool = True
    cuts: list[LinkCut] = Field(default_factory=list)
    seed: int = 0
    keep: bool = False
    task_timeout: float = 3600


def bring_up(opts: RunOptions, run_dir: Path, log: Log = print) -> tuple[Testbed, Any]:
    """Network, chain and IPFS swarm; returns (testbed, IPFS peers). Tears down on failure."""
    from concurrent.futures import ThreadPoolExecutor

    from coopml.storage.daemon import generate_swarm_key
    from coopml.testbed.services import init_repos, start_chain, start_ipfs

    preset = get_preset(opts.preset)
    hosts = workload.testbed_hosts(opts.contributors, opts.verifiers)
    swarm_key = generate_swarm_key()
    with ThreadPoolExecutor(1) as pool:
        # IPFS repos need no network: initialise them while the network is being built
        inits = pool.submit(init_repos, Path(run_dir).resolve(), workload.storage_hosts(hosts), swarm_key)
        tb = Testbed.build(run_dir, preset, hosts, switch=opts.switch, log=log)
        try:
            inits.result()
        except BaseException:
            tb.down()
            raise
    try:
        t = time.monotonic()
        url = start_chain(tb, "chain", preset.block_time, probe_from="operator")
        log(f"chain: anvil at {url}, --block-time {preset.block_time:g} ({time.monotonic() - t:.1f} s)")
        t = time.monotonic()
        peers = start_ipfs(tb, workload.storage_hosts(hosts), swarm_key)
        log(f"ipfs: {len(peers)} daemons in a private swarm (swarm key), fully meshed ({time.monotonic() - t:.1f} s)")
        tb.state.phase = "up"
        tb.sf.save()
        return tb, peers
    except BaseException:
        tb.down()
        raise


def check_cuts(opts: RunOptions) -> None:
    """A cut naming a host the run does not have, or an event no agent logs, would never fire."""
    hosts = {name for name, role in workload.testbed_hosts(opts.contributors, opts.verifiers)
             if role not in ("chain", "operator")}
    for cut in opts.cuts:
        if cut.host not in hosts:
            raise TestbedError(f"--cut {cut.host}@{cut.after_event}: no agent host {cut.host!r} in this run "
                               f"(hosts: {', '.join(sorted(hosts))})")
        if cut.after_event not in workload.AGENT_EVENTS:
            raise TestbedError(f"--cut {cut.host}@{cut.after_event}: agents never log {cut.after_event!r} "
                               f"(events: {', '.join(sorted(workload.AGENT_EVENTS))})")


def run(opts: RunOptions, out: Path, log: Log = print) -> dict[str, Any]:
    """A whole run; returns the report dict (also written to out/report.json and report.md)."""
    from coopml.testbed.report import write_report
    from coopml.testbed.services import PeeringKeeper

    preset = get_preset(opts.preset)
    check_cuts(opts)
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    timings: dict[str, float] = {}
    t = time.monotonic()
    tb, peers = bring_up(opts, out, log)
    timings["bring_up_s"] = round(time.monotonic() - t, 1)

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")
    old_term = signal.signal(signal.SIGTERM, on_term)
    report: dict[str, Any] = {}
    keeper = None
    try:
        links = None
        if opts.measure:
            t = time.monotonic()
            a, b = workload.measure_pair(opts.contributors)
            links = measure_path(tb, a, b)
            timings["measure_s"] = round(time.monotonic() - t, 1)
            log(f"links {links['path']}: rtt {links['rtt_avg_ms']:.1f} ms (min {links['rtt_min_ms']:.1f}), "
                f"{links['up_mbit']:.2f} / {links['down_mbit']:.2f} Mbit/s")
        keeper = PeeringKeeper(tb, peers, log=log).start()
        data = opts.data or preset.data
        plan = workload.make_plan(opts.contributors, opts.verifiers, data, preset.block_time, opts.seed)  # type: ignore[arg-type]
        task = run_task(tb, preset, opts, plan, log)
        keeper.stop()
        task["ipfs_redials"] = keeper.redials
        fed = run_fedavg(tb, preset, plan, data, log) if opts.fedavg else None
        report = {"run_id": tb.state.run_id, "started": t_start, "preset": preset.model_dump(),
                  "options": opts.model_dump(), "data": data,
                  "switch": {"kind": tb.state.switch_kind, "fallback_reason": tb.state.fallback_reason,
                             "bridge": tb.state.bridge},
                  "hosts": {h.name: {"role": h.role, "ip": h.ip, "netns": h.netns, "link": h.host_if}
                            for h in tb.state.hosts.values()},
                  "links": links, "task": task, "fedavg": fed, "timings": timings}
        if tb.state.switch_kind == "ovs":
            (out / "flows.txt").write_text(tb.flows())
            try:
                report["controller"] = tb.controller_flows()
            except TestbedError as exc:
                report["controller"] = {"error": str(exc)}
        write_report(report, out)
        log(f"report: {out / 'report.md'}")
        return report
    finally:
        if keeper is not None:
            keeper.stop()
        signal.signal(signal.SIGTERM, old_term)
        if opts.keep:
            log(f"testbed {tb.state.run_id} left up (--keep); remove it with `coopml testbed down {tb.state.run_id}`")
        else:
            t = time.monotonic()
            left = tb.down()
            timings["teardown_s"] = round(time.monotonic() - t, 1)
            if report:
                report["teardown"] = {"leftovers": left, "seconds": timings["teardown_s"]}
                (out / "report.json").write_text(json.dumps(report, indent=1, default=str))


def run_task(tb: Testbed, preset: Preset, opts: RunOptions, plan: Any, log: Log) -> dict[str, Any]:
    """The coopml task over the emulated network; per-node traffic and phase times."""
    workdir = tb.run_dir / "nodes"
    workdir.mkdir(parents=True, exist_ok=True)
    agents = [n for n, _ in workload.testbed_hosts(opts.contributors, opts.verifiers)
              if tb.host(n).role not in ("chain", "operator")]
    spec = workload.WorkloadSpec(plan=plan.model_dump(mode="json"), chain_url=tb.state.services["chain_url"],
                                 workdir=str(workdir), netns={n: tb.host(n).netns for n in agents},
                                 shortcuts=opts.shortcuts, timeout=opts.task_timeout, python=sys.executable,
                                 pythonpath=SRC_DIR)
    spec_path = workdir / "workload.json"
    spec_path.write_text(spec.model_dump_json(indent=1))
    journal = workdir / "events.jsonl"
    journal.unlink(missing_ok=True)
    (workdir / "outcome.json").unlink(missing_ok=True)
    m0 = tb.traffic_matrix(fresh_after=time.time())
    sampler = CounterSampler(tb).start()
    before = sampler.samples[0][1]
    t0 = time.time()
    driver = tb.spawn("operator", "driver", [sys.executable, "-m", "coopml.testbed.workload", str(spec_path)],
                      log=tb.run_dir / "logs" / "driver.log", python=True)
    pending = list(opts.cuts)
    active: list[tuple[LinkCut, float]] = []
    cuts_done: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    offset = 0
    last_report = time.monotonic()
    try:
        while True:
            done = driver.poll() is not None
            if journal.exists():
                with open(journal, "rb") as f:
                    f.seek(offset)
                    chunk = f.read()
                end = chunk.rfind(b"\n") + 1
                offset += end
                for line in chunk[:end].decode(errors="replace").splitlines():
                    ev = json.loads(line)
                    events.append(ev)
                    if ev.get("event") == "spawned" and ev.get("start_ticks") is not None:
                        tb.sf.add_process(ProcRecord(name=f"agent-{ev['node']}", pid=ev["pid"],
                                                     start_ticks=ev["start_ticks"], netns=ev["netns"], cmd=ev["cmd"]))
                    for cut in list(pending):
                        if ev.get("node") == cut.host and ev.get("event") == cut.after_event:
                            pending.remove(cut)
                            tb.set_link(cut.host, False)
                            active.append((cut, time.time()))   # the link is surely down from this instant
                            log(f"link cut: {cut.host} down for {cut.seconds:g} s (after its {cut.after_event!r})")
                    if ev.get("event") in workload.PROGRESS_EVENTS:
                        log(f"  {ev.get('node')}: {ev.get('event')}")
            for cut, since in list(active):
                if time.time() - since >= cut.seconds:
                    restoring = time.time()          # the link is surely down until this instant
                    tb.set_link(cut.host, True)
                    active.remove((cut, since))
                    cuts_done.append({**cut.model_dump(), "down_at": round(since - t0, 2), "up_at": round(restoring - t0, 2),
                                      "down_t": round(since, 3), "up_t": round(restoring, 3)})   # unix, as the journal
                    log(f"link restored: {cut.host}")
            if done and not active:
                break
            if time.monotonic() - last_report > 60:
                last_report = time.monotonic()
                log(f"  ... task running for {time.time() - t0:.0f} s")
            time.sleep(0.2)
    finally:
        for cut, _ in active:
            tb.set_link(cut.host, True)
        after = sampler.stop()
        sampler.write_csv(tb.run_dir / "counters.csv")
    t1 = time.time()
    outcome = json.loads((workdir / "outcome.json").read_text()) if (workdir / "outcome.json").exists() else {}
    if driver.returncode != 0 or "error" in outcome:
        raise TestbedError(f"the task failed: {outcome.get('error', f'driver exited {driver.returncode}')}"
                           f" (journal {journal}, log {tb.run_dir / 'logs' / 'driver.log'})")
    traffic = delta(after, before)
    matrix = matrix_delta(tb.traffic_matrix(fresh_after=time.time()), m0)
    groups = {h.name: _peer_group(h.role) for h in tb.state.hosts.values()}
    nodes: dict[str, Any] = {}
    for name in agents + ["chain", "operator"]:
        h = tb.host(name)
        mine = [e for e in events if e.get("node") == name]
        spawned = next((e["t"] for e in mine if e.get("event") == "spawned"), t0)
        ended = max((e["t"] for e in mine if "t" in e), default=t1)
        phases = []
        for phase, a, b in workload.node_phases(h.role, mine, spawned):
            sent, recv = sampler.between(name, a, b)
            phases.append({"phase": phase, "start_s": round(a - t0, 2), "seconds": round(b - a, 2),
                           "sent_bytes": sent, "recv_bytes": recv})
        nodes[name] = {"role": h.role, **traffic[name], "phases": phases,
                       "active_s": round(ended - spawned, 2) if mine else None,
                       "by_peer": split_by_peer(matrix, name, groups)}
    return {"elapsed_s": round(t1 - t0, 1), "outcome": outcome, "nodes": nodes, "matrix": matrix, "cuts": cuts_done,
            "unapplied_cuts": [c.model_dump() for c in pending]}


def _peer_group(role: str) -> str:
    from coopml.testbed.report import INFRA_ROLES
    return role if role in INFRA_ROLES else "agents"


def run_fedavg(tb: Testbed, preset: Preset, plan: Any, data: str, log: Log) -> dict[str, Any]:
    """FedAvg on the same task: server on the initiator's host, one client per contributor host."""
    job = workload.fedavg_job(plan, preset.fedavg_rounds, preset.fedavg_local_epochs,
                              n_test=plan.initiator.n_test or 10_000)     # the images the MetaModel is tested on
    folder = tb.run_dir / "fedavg"
    folder.mkdir(parents=True, exist_ok=True)
    job_path = folder / "job.json"
    job_path.write_text(json.dumps(job, indent=1))
    server_host = workload.FEDAVG_SERVER
    ip = tb.host(server_host).ip
    exe = [sys.executable, "-m", "coopml.testbed.fednet"]
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    log(f"fedavg: {len(job['clients'])} clients, {job['rounds']} rounds x {job['local_epochs']} local epochs, "
        f"server on {server_host}")
    m0 = tb.traffic_matrix(fresh_after=time.time())
    before = tb.counters()
    t0 = time.time()
    procs = {"server": tb.spawn(server_host, "fedavg-server", exe + ["server", "--bind", ip, "--port", str(FEDAVG_PORT),
                                                                      "--job", str(job_path), "--out",
                                                                      str(folder / "server.json")],
                                log=folder / "server.log", python=True, env=env)}
    for name in job["clients"]:
        procs[name] = tb.spawn(name, f"fedavg-{name}", exe + ["client", "--server", f"{ip}:{FEDAVG_PORT}", "--name", name,
                                                              "--job", str(job_path), "--out",
                                                              str(folder / f"{name}.json")],
                               log=folder / f"{name}.log", python=True, env=env)
    deadline = time.monotonic() + 3600
    while any(p.poll() is None for p in procs.values()):
        failed = [n for n, p in procs.items() if p.poll() not in (None, 0)]
        if failed or time.monotonic() > deadline:
            for p in procs.values():
                if p.poll() is None:
                    p.kill()
                    p.wait()
            what = failed[0] if failed else "fedavg"
            raise TestbedError(f"FedAvg {what} failed; see {folder}/{what if failed else 'server'}.log")
        time.sleep(0.2)
    t1 = time.time()
    traffic = delta(tb.counters(), before)
    matrix = matrix_delta(tb.traffic_matrix(fresh_after=time.time()), m0)
    server = json.loads((folder / "server.json").read_text())
    nodes = {n: {"role": tb.host(n).role, **traffic[n]} for n in [server_host, *job["clients"]]}
    log(f"fedavg: accuracy {server['accuracy']:.2%} in {t1 - t0:.1f} s")
    return {"elapsed_s": round(t1 - t0, 1), "job": job, "server": server, "nodes": nodes, "matrix": matrix,
            "other_hosts": {n: traffic[n] for n in traffic if n not in nodes}}

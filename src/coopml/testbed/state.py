"""A run's state file: everything the testbed creates, written down *before* it is created.

Namespaces carry a unique run prefix (`coopml-<run id>-`), host interfaces a unique name
(`tb<run id><nn>`), and every process is recorded with its PID and its start time (so a reused
PID is never mistaken for ours). `teardown` removes exactly what the file lists, in dependency
order, tolerating what is already gone, so it works the same after a clean run, after Ctrl-C
and after the orchestrator was killed (`coopml testbed down`). Nothing is ever found or killed
by name.

The files live in /run/coopml-testbed/ (tmpfs: they vanish on reboot together with everything
they describe); $COOPML_TESTBED_STATE_DIR overrides the folder.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError

from coopml.testbed.errors import StateError
from coopml.testbed.netns import (
    link_exists,
    list_links,
    list_namespaces,
    ns_exists,
    ns_pids,
    proc_start_ticks,
    sh,
)
from coopml.testbed.presets import LinkProfile

NS_PREFIX = "coopml-"


def state_dir() -> Path:
    return Path(os.environ.get("COOPML_TESTBED_STATE_DIR", "/run/coopml-testbed"))


class ProcRecord(BaseModel):
    name: str
    pid: int
    start_ticks: int
    netns: str | None = None
    cmd: list[str]
    log: str | None = None
    tier: Literal["service", "infra"] = "service"   # infra (OVS daemons) is stopped last


class HostRecord(BaseModel):
    name: str
    role: str
    ip: str
    mac: str
    netns: str
    wire_netns: str | None = None      # the relay's namespace when the link has a delay
    host_if: str                       # host-side end of the link, port on the switch
    link: LinkProfile | None = None    # None: unshaped (the operator's console link)


class QdiscRecord(BaseModel):
    dev: str
    netns: str | None = None


class RunState(BaseModel):
    run_id: str
    created: float
    run_dir: str
    preset: str
    owner_pid: int
    owner_start_ticks: int | None = None
    subnet: str = "198.18.0.0/24"
    guard_metric: int | None = None      # metric of our "unreachable <subnet>" route in the host namespace
    switch_kind: Literal["ovs", "linux-bridge"] | None = None
    fallback_reason: str | None = None
    bridge: str | None = None
    ovs_rundir: str | None = None       # OVS_RUNDIR of the daemons the bridge lives on
    ovs_db: str | None = None           # unix:<path> of their ovsdb-server
    controller_port: int | None = None
    namespaces: list[str] = Field(default_factory=list)
    links: list[str] = Field(default_factory=list)
    qdiscs: list[QdiscRecord] = Field(default_factory=list)
    processes: list[ProcRecord] = Field(default_factory=list)
    hosts: dict[str, HostRecord] = Field(default_factory=dict)
    services: dict[str, str] = Field(default_factory=dict)
    phase: str = "creating"

    def ns(self, host: str) -> str:
        return f"{NS_PREFIX}{self.run_id}-{host}"

    def if_name(self, index: int) -> str:
        return f"tb{self.run_id}{index:02d}"


class StateFile:
    """The on-disk record of one run; `save()` after every change (atomic rename)."""

    def __init__(self, path: Path, state: RunState) -> None:
        self.path = path
        self.state = state

    @classmethod
    def create(cls, run_dir: Path, preset: str) -> StateFile:
        folder = state_dir()
        folder.mkdir(parents=True, exist_ok=True)
        taken = {p.stem for p in folder.glob("*.json")}
        links, namespaces = set(list_links()), set(list_namespaces())
        for _ in range(100):
            run_id = secrets.token_hex(2)
            if (run_id not in taken and not any(n.startswith(f"tb{run_id}") for n in links)
                    and not any(n.startswith(f"{NS_PREFIX}{run_id}-") for n in namespaces)):
                break
        else:
            raise StateError(f"no free run id in {folder} (too many runs left over? try `coopml testbed down --all`)")
        st = RunState(run_id=run_id, created=time.time(), run_dir=str(run_dir), preset=preset, owner_pid=os.getpid(),
                      owner_start_ticks=proc_start_ticks(os.getpid()))
        sf = cls(folder / f"{run_id}.json", st)
        sf.save()
        return sf

    @classmethod
    def load(cls, run_id: str) -> StateFile:
        path = state_dir() / f"{run_id}.json"
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise StateError(f"no testbed run {run_id!r}: {path} does not exist (see `coopml testbed status`)") from None
        except (OSError, json.JSONDecodeError) as exc:
            raise StateError(f"{path}: unreadable state file ({exc})") from None
        try:
            return cls(path, RunState.model_validate(data))
        except ValidationError as exc:
            raise StateError(f"{path}: not a testbed state file ({exc.errors()[0]['msg']})") from None

    @staticmethod
    def all_runs() -> list[str]:
        folder = state_dir()
        return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(self.state.model_dump_json(indent=1))
        tmp.replace(self.path)

    # write-ahead records: call these *before* creating the thing
    def add_namespace(self, name: str) -> None:
        self.state.namespaces.append(name)
        self.save()

    def add_link(self, name: str) -> None:
        self.state.links.append(name)
        self.save()

    def add_qdisc(self, dev: str, netns: str | None) -> None:
        self.state.qdiscs.append(QdiscRecord(dev=dev, netns=netns))
        self.save()

    def add_process(self, rec: ProcRecord) -> None:
        self.state.processes.append(rec)
        self.save()

    def owner_alive(self) -> bool:
        st = self.state
        return st.owner_start_ticks is not None and proc_start_ticks(st.owner_pid) == st.owner_start_ticks


# ------------------------------------------------------------------------------ teardown

def _alive(rec: ProcRecord) -> bool:
    return proc_start_ticks(rec.pid) == rec.start_ticks


def _signal(rec: ProcRecord, sig: int) -> None:
    try:
        os.kill(rec.pid, sig)
    except ProcessLookupError:
        pass


def stop_processes(records: list[ProcRecord], grace: float = 5.0) -> list[str]:
    """SIGTERM every recorded process that is still the one we started, SIGKILL it after `grace`."""
    live = [r for r in records if _alive(r)]
    for r in live:
        _signal(r, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while live and time.monotonic() < deadline:
        time.sleep(0.1)
        live = [r for r in live if _alive(r)]
    for r in live:
        _signal(r, signal.SIGKILL)
    return [f"{r.name} (pid {r.pid}) needed SIGKILL" for r in live]


def teardown(sf: StateFile, log: Callable[[str], None] = lambda m: None, *, remove_file: bool = True) -> list[str]:
    """Remove everything `sf` lists. Returns what could not be removed (empty when clean)."""
    st = sf.state
    st.phase = "tearing-down"
    sf.save()
    notes = stop_processes([r for r in st.processes if r.tier == "service"])
    for n in notes:
        log(n)
    # anything still inside our namespaces was started by this run (e.g. a child of a service)
    for ns in st.namespaces:
        for pid in ns_pids(ns):
            log(f"killing pid {pid} left in {ns}")
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    if st.switch_kind == "ovs" and st.bridge and st.ovs_db:
        infra_alive = any(_alive(r) for r in st.processes if r.tier == "infra")
        own_ovs = any(r.tier == "infra" for r in st.processes)
        if infra_alive or not own_ovs:
            r = sh(["ovs-vsctl", f"--db={st.ovs_db}", "--timeout=5", "--if-exists", "del-br", st.bridge], check=False,
                   env={**os.environ, "OVS_RUNDIR": st.ovs_rundir or ""})
            if r.returncode != 0:
                log(f"ovs-vsctl del-br {st.bridge}: {r.stderr.strip()}")
    for n in stop_processes([r for r in st.processes if r.tier == "infra"]):
        log(n)
    own_rundir = state_dir() / f"{st.run_id}-ovs"
    if st.ovs_rundir and Path(st.ovs_rundir) == own_rundir and not any(_alive(r) for r in st.processes):
        shutil.rmtree(own_rundir, ignore_errors=True)
    for dev in reversed(st.links):
        if link_exists(dev):
            sh(["ip", "link", "del", dev], check=False)
    if st.switch_kind == "linux-bridge" and st.bridge and link_exists(st.bridge):
        sh(["ip", "link", "del", st.bridge], check=False)
    for ns in reversed(st.namespaces):
        if ns_exists(ns):
            sh(["ip", "netns", "del", ns], check=False)
    if st.guard_metric is not None and guard_route_exists(st):
        sh(["ip", "route", "del", "unreachable", st.subnet, "metric", str(st.guard_metric)], check=False)
    leftovers = leftovers_of(st)
    if leftovers:
        st.phase = "teardown-incomplete"
        sf.save()
    else:
        st.phase = "down"
        if remove_file:
            sf.path.unlink(missing_ok=True)
        else:
            sf.save()
    return leftovers


def guard_route_exists(st: RunState) -> bool:
    out = sh(["ip", "route", "show", "type", "unreachable", st.subnet], check=False).stdout
    return any(line.split()[-1:] == [str(st.guard_metric)] or f"metric {st.guard_metric} " in line + " "
               for line in out.splitlines())


def leftovers_of(st: RunState, wait: float = 3.0) -> list[str]:
    """What of a run still exists. Veths vanish asynchronously once their namespace is gone, so
    links are given `wait` seconds."""
    deadline = time.monotonic() + wait
    while True:
        items = [f"namespace {n}" for n in st.namespaces if ns_exists(n)]
        items += [f"link {d}" for d in st.links if link_exists(d)]
        if st.bridge and link_exists(st.bridge):
            items.append(f"bridge {st.bridge}")
        items += [f"process {r.name} (pid {r.pid})" for r in st.processes if _alive(r)]
        if st.guard_metric is not None and guard_route_exists(st):
            items.append(f"route unreachable {st.subnet} metric {st.guard_metric}")
        if not items or time.monotonic() > deadline:
            return items
        time.sleep(0.1)

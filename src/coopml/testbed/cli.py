"""`coopml testbed up|run|down|status`: the paper's SDN testbed (section V-A) on one Linux machine."""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from coopml.errors import CoopmlError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Network testbed: hosts in network namespaces on an OVS switch under an os-ken SDN "
                       "controller, shaped links, a PoA-like anvil chain and a private IPFS swarm (needs root).")
console = Console()
err_console = Console(stderr=True)
F = TypeVar("F", bound=Callable)


def friendly(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except CoopmlError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False)
            raise typer.Exit(2) from None
    return wrapper  # type: ignore[return-value]


def log(msg: str) -> None:
    console.print(f"[dim]{time.strftime('%H:%M:%S')}[/] {msg}", highlight=False)


_PRESET = typer.Option("ci", "--preset", help="pi (10 Mbit/s, 20 ms, 15 s blocks), lan (100 Mbit/s, 1 ms, 2 s) "
                                              "or ci (50 Mbit/s, 2 ms, 1 s, tiny data)")
_CONTRIBUTORS = typer.Option(3, "--contributors", "-c", min=1, max=7, help="computing contributors")
_VERIFIERS = typer.Option(3, "--verifiers", "-v", min=1, max=15, help="verification contributors")
_SWITCH = typer.Option("auto", "--switch", help="auto (OVS + controller, else Linux bridge), ovs or linux-bridge")
_UP_OUT = typer.Option(Path("out/testbed"), help="run folder (logs, repos)")
_RUN_OUT = typer.Option(Path("out/testbed"), help="report and run folder")
_DATA = typer.Option(None, help="override the preset's data size: tiny, reduced or full")
_CUT = typer.Option([], "--cut", help="HOST@EVENT:SECONDS, e.g. verifier1@registered:5 (repeatable): "
                                     "cut that host's link after that event")


@app.command()
@friendly
def up(preset: str = _PRESET, contributors: int = _CONTRIBUTORS, verifiers: int = _VERIFIERS,
       switch: str = _SWITCH, out: Path = _UP_OUT) -> None:
    """Bring the network, the chain and the IPFS swarm up and leave them running."""
    from coopml.testbed.runner import RunOptions, bring_up
    opts = RunOptions(preset=preset, contributors=contributors, verifiers=verifiers, switch=switch)
    tb, _ = bring_up(opts, out, log)
    _show_hosts(tb.state)
    host = next(iter(tb.state.hosts.values()))
    console.print(f"testbed [bold]{tb.state.run_id}[/] is up. Enter a host with `ip netns exec "
                  f"{host.netns} bash`; remove it with `coopml testbed down {tb.state.run_id}`.")


@app.command()
@friendly
def run(preset: str = _PRESET, contributors: int = _CONTRIBUTORS, verifiers: int = _VERIFIERS, switch: str = _SWITCH,
        out: Path = _RUN_OUT, data: str | None = _DATA, cut: list[str] = _CUT,
        measure: bool = typer.Option(True, help="ping + iperf3 between two hosts first"),
        fedavg: bool = typer.Option(True, help="run FedAvg on the same task and links afterwards"),
        shortcuts: bool = typer.Option(True, help="skip reveal and dispute windows nobody needs on the dev chain"),
        keep: bool = typer.Option(False, help="leave the testbed up afterwards"),
        seed: int = typer.Option(0)) -> None:
    """Build the testbed, run the coopml task (and FedAvg) across it, report, tear down."""
    from coopml.testbed.runner import LinkCut, RunOptions
    from coopml.testbed.runner import run as run_all
    if data not in (None, "tiny", "reduced", "full"):
        raise typer.BadParameter(f"--data must be tiny, reduced or full, got {data!r}")
    opts = RunOptions(preset=preset, contributors=contributors, verifiers=verifiers, switch=switch, data=data,
                      cuts=[LinkCut.parse(c) for c in cut], measure=measure, fedavg=fedavg, shortcuts=shortcuts,
                      keep=keep, seed=seed)
    report = run_all(opts, out, log)
    c = report.get("comparison")
    t = Table("node", "role", "sent", "received", title=f"coopml task: {report['task']['elapsed_s']:.0f} s")
    from coopml.testbed.report import human
    for name, n in report["task"]["nodes"].items():
        t.add_row(name, n["role"], human(n["sent_bytes"]), human(n["recv_bytes"]))
    console.print(t)
    if c:
        console.print(f"FedAvg: {human(c['fedavg_bytes_sent'])} sent in {c['fedavg_seconds']:.0f} s vs coopml "
                      f"{human(c['coopml_bytes_sent_by_agents'])} in {c['coopml_seconds']:.0f} s")
    console.print(f"report: {Path(out) / 'report.md'}")


@app.command()
@friendly
def down(run_id: str | None = typer.Argument(None, help="run id (see `coopml testbed status`)"),
         all_runs: bool = typer.Option(False, "--all", help="every run with a state file")) -> None:
    """Remove a run's namespaces, links, switch, qdiscs and processes, from its state file
    (also after the orchestrator crashed)."""
    from coopml.testbed.netns import require_root
    from coopml.testbed.state import StateFile, teardown
    require_root()
    ids = StateFile.all_runs() if all_runs else ([run_id] if run_id else [])
    if not ids:
        raise CoopmlError("give a run id or --all (see `coopml testbed status`)")
    failed = False
    for rid in ids:
        sf = StateFile.load(rid)
        if sf.owner_alive() and sf.state.phase not in ("up", "down", "teardown-incomplete"):
            log(f"warning: run {rid} is still owned by a live process (pid {sf.state.owner_pid}); tearing down anyway")
        left = teardown(sf, log)
        if left:
            failed = True
            err_console.print(f"run {rid}: could not remove {', '.join(left)}")
        else:
            log(f"run {rid}: torn down, nothing left")
    if failed:
        raise typer.Exit(1)


@app.command()
@friendly
def status(as_json: bool = typer.Option(False, "--json")) -> None:
    """List testbed runs recorded in state files and what of them still exists."""
    from coopml.testbed.state import StateFile, leftovers_of
    rows: list[dict[str, Any]] = []
    for rid in StateFile.all_runs():
        try:
            sf = StateFile.load(rid)
        except CoopmlError as exc:
            rows.append({"run_id": rid, "error": str(exc)})
            continue
        st = sf.state
        rows.append({"run_id": rid, "phase": st.phase, "preset": st.preset, "switch": st.switch_kind,
                     "hosts": len(st.hosts), "owner_alive": sf.owner_alive(), "run_dir": st.run_dir,
                     "existing": leftovers_of(st, wait=0)})
    if as_json:
        console.print_json(json.dumps(rows))
        return
    if not rows:
        console.print("no testbed runs")
        return
    t = Table("run", "phase", "preset", "switch", "hosts", "owner alive", "resources present", "folder")
    for r in rows:
        if "error" in r:
            t.add_row(r["run_id"], "unreadable", "", "", "", "", "", r["error"])
        else:
            t.add_row(r["run_id"], r["phase"], r["preset"], str(r["switch"]), str(r["hosts"]), str(r["owner_alive"]),
                      str(len(r["existing"])), r["run_dir"])
    console.print(t)


def _show_hosts(st) -> None:
    t = Table("host", "role", "address", "namespace", "link")
    for h in st.hosts.values():
        t.add_row(h.name, h.role, h.ip, h.netns, h.host_if + (f" ({h.link.describe()})" if h.link else " (unshaped)"))
    console.print(t)
    for k, v in st.services.items():
        console.print(f"{k}: {v}")

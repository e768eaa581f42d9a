"""`coopml` command line. Every CoopmlError becomes a one-line message and exit code 2, never a traceback."""

from __future__ import annotations

import atexit
import os
import sys
from pathlib import Path
from typing import NoReturn

import typer
from rich.console import Console
from rich.table import Table

from coopml.cli.common import err_console, friendly
from coopml.testbed.cli import app as testbed_app

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="coopml: decentralized, privacy-preserving cooperative machine learning.")
app.add_typer(testbed_app, name="testbed")
console = Console()


def parse_labels(text: str) -> tuple[int, ...]:
    try:
        labels = tuple(sorted({int(t) for t in text.split(",") if t.strip()}))
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated digits like 0,1,2, got {text!r}") from None
    if not labels or any(not 0 <= c <= 9 for c in labels):
        raise typer.BadParameter(f"labels must be digits 0..9, got {text!r}")
    return labels


@app.command()
@friendly
def train(
    arch: str = typer.Option("table1-c1", help="architecture (see `coopml archs`)"),
    labels: str = typer.Option("0,1,2,3,4,5,6,7,8,9", help="classes this contributor holds"),
    n_train: int = typer.Option(1000, min=10, help="training images"),
    n_val: int = typer.Option(1000, min=10, help="held-out local images for early stopping"),
    epochs: int = typer.Option(30, min=1, help="maximum epochs"),
    target: float | None = typer.Option(None, min=0.0, max=1.0, help="accuracy criterion (stop when met)"),
    dataset: str = typer.Option("mnist", help="mnist or fashion-mnist"),
    seed: int = typer.Option(0),
    out: Path = typer.Option(Path("out/model.safetensors"), help="where to write the model"),
) -> None:
    """Train one private model on a label subset and save it (safetensors + manifest)."""
    from coopml.cli.progress import epoch_progress
    from coopml.data import ShardSpec, load_dataset, make_shards
    from coopml.models import TrainConfig, build_model, evaluate, save_model, train_model

    label_set = parse_labels(labels)
    shard = make_shards(load_dataset(dataset, "train"), [ShardSpec("me", label_set, n_train, n_val)], seed)["me"]
    model = build_model(arch, seed)
    cfg = TrainConfig(max_epochs=epochs, target_accuracy=target, stop_at_target=target is not None, seed=seed)
    with epoch_progress(console) as track:
        result = train_model(model, shard.train, shard.verify, cfg, labels=label_set, on_epoch=track(arch, epochs))
    manifest = save_model(model, out, label_set)
    test = load_dataset(dataset, "test")
    console.print(f"trained {arch} on {list(label_set)}: {result.epochs} epochs, "
                  f"val {result.best_val_accuracy:.2%}, test (own labels) {evaluate(model, test, label_set):.2%}, "
                  f"test (all) {evaluate(model, test):.2%}")
    console.print(f"wrote {out} (sha256 {(manifest.sha256 or '')[:16]}...)")


@app.command("case-studies")
@friendly
def case_studies(out: Path = typer.Option(Path("out/case-studies"), help="report folder"),
                 full: bool = typer.Option(False, help="paper-size runs (long) instead of the reduced preset"),
                 seed: int = typer.Option(0),
                 fresh: bool = typer.Option(False, help="start over instead of resuming after the studies "
                                            "saved in OUT/checkpoints by an earlier run with the same settings")) -> None:
    """Case Studies I-IV (fusion strategies, encrypted MetaModel, FedAvg comparison, fading-channel detection
    with the encryption interface on synthetic link-power data) with a report. Each finished study is
    saved as it ends, so a rerun of the same code and settings resumes after the last finished study."""
    from coopml.sim.case_studies import main as run
    code = run(["--out", str(out), "--seed", str(seed)] + (["--full"] if full else []) + (["--fresh"] if fresh else []))
    raise typer.Exit(code or 0)


@app.command()
def archs() -> None:
    """List the model architectures."""
    from coopml.models import ARCHITECTURES
    table = Table("name", "description")
    for a in ARCHITECTURES.values():
        table.add_row(a.name, a.description)
    console.print(table)


@app.command()
@friendly
def contributors(
    epochs: int = typer.Option(30, min=1, help="maximum local epochs per contributor"),
    seed: int = typer.Option(0),
    scale: float = typer.Option(1.0, min=0.01, max=5.0, help="shrink/grow the Table II shard sizes"),
) -> None:
    """Train the three contributors of Table I on the Table II split and report their accuracy."""
    from coopml.cli.progress import epoch_progress
    from coopml.sim.contributors import train_table1_contributors
    with epoch_progress(console) as track:
        rows = train_table1_contributors(epochs=epochs, seed=seed, scale=scale, track=track)
    table = Table("contributor", "arch", "labels", "epochs", "local val", "test (own labels)", "test (all 10)",
                  title="Case Study I contributors (Table I models, Table II split)")
    for r in rows:
        table.add_row(r.name, r.arch, ",".join(map(str, r.labels)), str(r.epochs), f"{r.val_accuracy:.2%}",
                      f"{r.own_accuracy:.2%}", f"{r.all_accuracy:.2%}")
    console.print(table)


# ------------------------------------------------------------------------------ roles

def _run_role(kind: str, config: Path, agent: str | None, name: str, overrides: dict) -> None:
    from coopml.roles.config import ContributorConfig, InitiatorConfig, NodeConfig, VerifierConfig, load_config
    from coopml.roles.runner import load_agent_class, run_node
    defaults: dict[str, tuple[str, type[NodeConfig]]] = {
                "initiator": ("coopml.roles.initiator:Initiator", InitiatorConfig),
                "contributor": ("coopml.roles.contributor:Contributor", ContributorConfig),
                "verifier": ("coopml.roles.verifier:Verifier", VerifierConfig)}
    default_agent, cfg_type = defaults[kind]
    cls = load_agent_class(agent or default_agent)
    if cls.role.value != kind:
        raise typer.BadParameter(f"{agent} is a {cls.role.value} agent, not a {kind}")
    cfg = load_config(cfg_type, config, **overrides)
    summary = run_node(cls, cfg, node_name=name or kind)
    if summary and cfg.log_format == "json":
        err_console.print(summary, highlight=False)


_CONFIG = typer.Option(..., "--config", help="JSON config file (`coopml config-reference` lists every field)")
_AGENT = typer.Option(None, "--agent", help="agent class by import path (default: the production role); e.g. "
                      "coopml.sim.behaviours:LyingContributor to script a misbehaviour")
_NAME = typer.Option("", "--name", help="node name in log lines")
_LOG = typer.Option(None, "--log-format", help="text (default) or json (one LogRecord per line)")
_TASK = typer.Option(None, "--task-id", min=1, help="the task to join (printed by the initiator / `coopml status`)")


@app.command()
@friendly
def initiator(config: Path = _CONFIG, agent: str | None = _AGENT, name: str = _NAME,
              log_format: str | None = _LOG) -> None:
    """Run an application initiator: publish the task from its manifest, buy, check and fuse approved models."""
    _run_role("initiator", config, agent, name, {"log_format": log_format})


@app.command()
@friendly
def contributor(config: Path = _CONFIG, task_id: int | None = _TASK, agent: str | None = _AGENT,
                name: str = _NAME, log_format: str | None = _LOG) -> None:
    """Run a computing contributor: join, train on its own data, announce, answer encrypted queries, deliver."""
    _run_role("contributor", config, agent, name, {"task_id": task_id, "log_format": log_format})


@app.command()
@friendly
def verifier(config: Path = _CONFIG, task_id: int | None = _TASK, agent: str | None = _AGENT,
             name: str = _NAME, log_format: str | None = _LOG) -> None:
    """Run a verification contributor: join, evaluate drawn models on its own encrypted images, vote."""
    _run_role("verifier", config, agent, name, {"task_id": task_id, "log_format": log_format})


@app.command()
@friendly
def demo(
    embedded: bool = typer.Option(False, "--embedded", help="the embedded JSON-RPC node instead of anvil"),
    ipfs: bool = typer.Option(False, "--ipfs", help="a js-ipfs daemon instead of the local blockstore"),
    reduced: bool = typer.Option(False, help="smaller data and fewer epochs (quick check)"),
    out: Path = typer.Option(Path("out/demo"), help="report folder"),
    seed: int = typer.Option(0),
    verification: str = typer.Option("ckks", help="verification mode: ckks (confidential, the default), "
                                     "plaintext (trusts the verifiers) or ivhe-insecure (the paper's IVHE flow, "
                                     "NOT confidential: docs/threat-model.md)"),
    own_model: str | None = typer.Option(None, "--own-model", metavar="ARCH",
                                         help="the initiator also trains this registered architecture on its data "
                                         "and fuses it as a member (e.g. table1-c1; docs/fusion.md)"),
) -> None:
    """The main job: 1 initiator, 3 contributors, 3 verifiers as separate processes, real MNIST, full lifecycle."""
    from coopml.sim.launcher import warm_up
    warm_up()       # the nodes' shared imports load while this process loads its own
    import shutil
    import typing

    from coopml.roles.log import LogRecord
    from coopml.sim.lifecycle import run_processes, table3_plan, write_report
    from coopml.task.manifest import Verification

    modes = typing.get_args(Verification.model_fields["mode"].annotation)
    if verification not in modes:
        raise typer.BadParameter(f"{verification!r} is not one of {', '.join(modes)}", param_hint="--verification")
    plan = table3_plan(reduced=reduced)
    plan.seed = seed
    if own_model is not None:
        from coopml.models import ARCHITECTURES
        if own_model not in ARCHITECTURES:
            raise typer.BadParameter(f"{own_model!r} is not a registered architecture (`coopml archs`)",
                                     param_hint="--own-model")
        plan.initiator.own_model = own_model
    plan.overrides["verification"] = {**plan.overrides.get("verification", {}), "mode": verification}
    work = out / "nodes"
    if work.exists():
        shutil.rmtree(work)
    tty = sys.stdout.isatty()

    def on_record(name: str, rec: LogRecord) -> None:
        if rec.event.value in ("retry",) and not tty:
            return
        console.print(rec.text().replace(f" {rec.role.value}:", f" {name}:", 1), highlight=False)

    result = run_processes(plan, work, backend="embedded" if embedded else "anvil",
                           storage="ipfs" if ipfs else "local", on_record=on_record)
    table = Table("model", "contributor", "outcome", "votes (approve/reject/abstain)", title=f"task {result.task_id}")
    for m in result.models:
        table.add_row(str(m.model_id), m.contributor, m.status, f"{m.approve}/{m.reject}/{m.abstain}")
    console.print(table)
    pay = Table("node", "withdrawn ETH", "last word", title="payments")
    for n in sorted(set(result.withdrawn_eth) | set(result.summaries)):
        pay.add_row(n, f"{result.withdrawn_eth.get(n, 0.0):.3f}", result.summaries.get(n, ""))
    console.print(pay)
    for h in result.fusion_history:
        if h.get("test_accuracy") is not None:
            own = " and the initiator's own" if h.get("own_model") else ""
            console.print(f"MetaModel with {len(h['members'])} model(s){own}: {h['test_accuracy']:.2%} on the test set")
    report = write_report(result, out)
    console.print(f"finished in {result.elapsed:.0f} s; report in {report}/report.md")


from coopml.cli import chain_cmds, model_cmds
from coopml.cli.reference import config_reference

chain_cmds.mount(app)
model_cmds.mount(app)
app.command("config-reference")(config_reference)


def main() -> NoReturn:  # pragma: no cover - console entry point
    try:
        app()
    except SystemExit as exc:
        leave(exc.code)
    leave(0)


def leave(code: object) -> NoReturn:
    """End the process with `code` (a SystemExit code). A process that read a CSV or Parquet file
    through Arrow ends without running C++ static destructors: Arrow tears its thread pools down at
    exit while a worker thread may still be alive, and `std::terminate` then kills the process with
    SIGABRT ("terminate called without an active exception", exit -6) after its work is done
    (apache/arrow#34314). Measured here: 3 of 400 runs of a five-line pyarrow script died that way,
    0 of 400 with this exit; in CI it was a `coopml predict` that had printed every row. Python's
    own exit handlers still run and the standard streams are flushed."""
    if "pyarrow" not in sys.modules:
        sys.exit(code)   # type: ignore[arg-type]  # SystemExit codes are int | str | None
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:   # sys.exit("message"): printed to stderr, status 1
        print(code, file=sys.stderr)
        status = 1
    atexit._run_exitfuncs()   # what interpreter shutdown would run (logging's shutdown among them)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):   # a closed pipe or stream: nothing more can be written
            pass
    os._exit(status)


if __name__ == "__main__":  # pragma: no cover
    main()

"""`coopml` command line. Every CoopmlError becomes a one-line message and exit code 2, never a traceback."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Callable, Optional, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from coopml.errors import CoopmlError
from coopml.testbed.cli import app as testbed_app

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="coopml: decentralized, privacy-preserving cooperative machine learning.")
app.add_typer(testbed_app, name="testbed")
console = Console()
err_console = Console(stderr=True)
F = TypeVar("F", bound=Callable)


def friendly(fn: F) -> F:
    """Turn expected errors into a clear message and exit code 2."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except CoopmlError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False)
            raise typer.Exit(2) from None
    return wrapper  # type: ignore[return-value]


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
    target: Optional[float] = typer.Option(None, min=0.0, max=1.0, help="accuracy criterion (stop when met)"),
    dataset: str = typer.Option("mnist", help="mnist or fashion-mnist"),
    seed: int = typer.Option(0),
    out: Path = typer.Option(Path("out/model.safetensors"), help="where to write the model"),
) -> None:
    """Train one private model on a label subset and save it (safetensors + manifest)."""
    from coopml.data import ShardSpec, load_dataset, make_shards
    from coopml.models import TrainConfig, build_model, evaluate, save_model
    from coopml.models import train_model
    from coopml.cli.progress import epoch_progress

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
    console.print(f"wrote {out} (sha256 {manifest.sha256[:16]}...)")


@app.command("case-studies")
@friendly
def case_studies(out: Path = typer.Option(Path("out/case-studies"), help="report folder"),
                 full: bool = typer.Option(False, help="paper-size runs (long) instead of the reduced preset"),
                 seed: int = typer.Option(0)) -> None:
    """Case Studies I-IV (fusion strategies, encrypted MetaModel, FedAvg comparison, fading-channel detection
    with the encryption interface on synthetic link-power data) with a report."""
    from coopml.sim.case_studies import main as run
    code = run(["--out", str(out), "--seed", str(seed)] + (["--full"] if full else []))
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

def _run_role(kind: str, config: Optional[Path], overrides: dict) -> None:
    from coopml.roles.config import ContributorConfig, InitiatorConfig, VerifierConfig, load_config
    if kind == "initiator":
        from coopml.roles.initiator import Initiator as agent_cls
        cfg = load_config(InitiatorConfig, config, **overrides)
    elif kind == "contributor":
        from coopml.roles.contributor import Contributor as agent_cls
        cfg = load_config(ContributorConfig, config, **overrides)
    else:
        from coopml.roles.verifier import Verifier as agent_cls
        cfg = load_config(VerifierConfig, config, **overrides)
    agent = agent_cls(cfg)
    try:
        agent.run()
    finally:
        agent.close()


_CONFIG = typer.Option(None, "--config", help="JSON config file (fields of the role's config)")
_CHAIN = typer.Option(None, help="JSON-RPC URL of the chain node")
_CONTRACT = typer.Option(None, help="CoopML contract address")
_FROM_BLOCK = typer.Option(None, "--from-block", min=0, help="contract's deployment block (events before it are skipped)")
_STORE = typer.Option(None, help="storage: a directory or http://127.0.0.1:PORT (Kubo RPC)")
_WORKDIR = typer.Option(None, help="this node's local state directory")


@app.command()
@friendly
def initiator(config: Optional[Path] = _CONFIG, chain: Optional[str] = _CHAIN, contract: Optional[str] = _CONTRACT,
              store: Optional[str] = _STORE, workdir: Optional[Path] = _WORKDIR,
              from_block: Optional[int] = _FROM_BLOCK) -> None:
    """Run an application initiator: publish a task, answer blinded decryptions, decrypt and fuse bought models."""
    _run_role("initiator", config, dict(chain=chain, contract=contract, store=store, workdir=workdir,
                                        from_block=from_block))


@app.command()
@friendly
def contributor(config: Optional[Path] = _CONFIG, task_id: Optional[int] = typer.Option(None, min=1),
                chain: Optional[str] = _CHAIN, contract: Optional[str] = _CONTRACT, store: Optional[str] = _STORE,
                workdir: Optional[Path] = _WORKDIR, from_block: Optional[int] = _FROM_BLOCK,
                labels: Optional[str] = typer.Option(None, help="classes this node holds, e.g. 0,1,2")) -> None:
    """Run a computing contributor: join, train, encrypt, announce, release the key once approved."""
    _run_role("contributor", config, dict(task_id=task_id, chain=chain, contract=contract, store=store,
                                          workdir=workdir, from_block=from_block,
                                          labels=list(parse_labels(labels)) if labels else None))


@app.command()
@friendly
def verifier(config: Optional[Path] = _CONFIG, task_id: Optional[int] = typer.Option(None, min=1),
             chain: Optional[str] = _CHAIN, contract: Optional[str] = _CONTRACT, store: Optional[str] = _STORE,
             workdir: Optional[Path] = _WORKDIR, from_block: Optional[int] = _FROM_BLOCK) -> None:
    """Run a verification contributor: register, evaluate selected models through the blinded oracle, vote."""
    _run_role("verifier", config, dict(task_id=task_id, chain=chain, contract=contract, store=store, workdir=workdir,
                                       from_block=from_block))


_SHOWN = {"published", "registered", "trained", "announced", "key-sent", "queried", "oracle-answered", "evaluated",
          "committed", "revealed", "finalized", "key-released", "model-decrypted", "fused", "closed", "withdrawn",
          "done", "killed", "restarted", "revert", "bad-message", "bad-model", "copying"}


@app.command()
@friendly
def demo(
    anvil: bool = typer.Option(False, "--anvil", help="use anvil + a js-ipfs daemon instead of the embedded defaults"),
    reduced: bool = typer.Option(False, help="smaller data and fewer epochs (quick check)"),
    out: Path = typer.Option(Path("out/demo"), help="report folder"),
    seed: int = typer.Option(0),
) -> None:
    """The main job: 1 initiator, 3 contributors, 3 verifiers as separate processes, real MNIST, full lifecycle."""
    import shutil
    from rich.live import Live
    from coopml.sim.lifecycle import run_processes, table3_plan, write_report

    plan = table3_plan(reduced=reduced)
    plan.seed = seed
    work = out / "nodes"
    if work.exists():
        shutil.rmtree(work)
    status: dict[str, str] = {}

    def render() -> Table:
        t = Table("node", "latest", title="coopml demo: task lifecycle (Ctrl-C to stop)")
        for name in sorted(status, key=lambda n: (n[0] != "i", n)):
            t.add_row(name, status[name])
        return t

    with Live(render(), console=console, refresh_per_second=4, transient=False) as live:
        def on_line(name: str, msg: dict) -> None:
            event = msg.get("event", "")
            if event == "epoch":
                status[name] = f"training: epoch {msg['epoch']}, val {msg['val_accuracy']:.1%}"
            elif event in _SHOWN:
                detail = {k: v for k, v in msg.items() if k not in ("t", "role", "event", "assignments", "models",
                                                                      "fusion_history", "cid", "he_public_key")}
                status[name] = f"{event} {detail if detail else ''}"
            live.update(render())
        result = run_processes(plan, work, backend="anvil" if anvil else "embedded",
                               storage="ipfs" if anvil else "local", on_line=on_line)
    table = Table("model", "contributor", "outcome", "votes (yes/no)", title=f"task {result.task_id}")
    for m in result.models:
        table.add_row(str(m.model_id), m.contributor, m.status, f"{m.yes}/{m.no}")
    console.print(table)
    pay = Table("node", "withdrawn ETH", title="payments")
    for n, v in sorted(result.withdrawn_eth.items()):
        pay.add_row(n, f"{v:.3f}")
    console.print(pay)
    for h in result.fusion_history:
        console.print(f"MetaModel with {h['models']} model(s): {h['test_accuracy']:.2%} on the MNIST test set")
    report = write_report(result, out)
    console.print(f"finished in {result.elapsed:.0f} s; report in {report}/report.md")


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())

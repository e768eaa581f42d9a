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

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="coopml: decentralized, privacy-preserving cooperative machine learning.")
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
def demo(
    epochs: int = typer.Option(30, min=1, help="maximum local epochs per contributor"),
    seed: int = typer.Option(0),
    scale: float = typer.Option(1.0, min=0.01, max=5.0, help="shrink/grow the Table II shard sizes"),
) -> None:
    """The main job: train the three contributors of Table I on the Table II split and report accuracy."""
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


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())

"""Using what a task produced: export the MetaModel, predict with it, and the content store by hand."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from coopml.cli.common import CliUsageError, friendly

console = Console(soft_wrap=True)
store_app = typer.Typer(no_args_is_help=True, add_completion=False,
                        help="Content-addressed storage (IPFS-identical CIDs) on a local store or an IPFS RPC API.")
StoreSpec = Annotated[str, typer.Option("--store", help="a directory, local:/dir, or http://127.0.0.1:5001 "
                                                       "(IPFS RPC API)")]


def export(
    config: Annotated[Path | None, typer.Option("--config", help="the initiator's JSON config (only its workdir "
                                                                 "is read: the MetaModel file in it)")] = None,
    metamodel: Annotated[Path | None, typer.Option("--metamodel", help="a MetaModel file (metamodel.safetensors) "
                                                                       "instead of --config")] = None,
    out: Annotated[Path, typer.Option("--out", help="output folder")] = Path("metamodel"),
) -> None:
    """Write the initiator's MetaModel as metamodel.safetensors and one self-contained metamodel.onnx.

    Reads only the MetaModel file: no chain node, content store or model keys."""
    from coopml.roles.config import InitiatorConfig, load_config
    from coopml.roles.export import (
        metamodel_onnx,
        metamodel_path,
        rebuild_metamodel,
        save_metamodel_file,
    )

    if (config is None) == (metamodel is None):
        raise CliUsageError("give --config (the initiator's) or --metamodel (a MetaModel file), one of them")
    if config is not None:
        cfg = load_config(InitiatorConfig, config)
        assert isinstance(cfg, InitiatorConfig)
        metamodel = metamodel_path(cfg)
    assert metamodel is not None
    exported = rebuild_metamodel(metamodel)
    out.mkdir(parents=True, exist_ok=True)
    st = save_metamodel_file(exported, out / "metamodel.safetensors")
    onnx_path = out / "metamodel.onnx"
    onnx_path.write_bytes(metamodel_onnx(exported))
    names = [str(m["key"] if m["model_id"] is None else m["model_id"]) for m in exported.members]
    console.print(f"MetaModel of {len(exported.members)} model(s) ({', '.join(names)}), "
                  f"classes {', '.join(exported.spec.classes)}", highlight=False)
    console.print(f"wrote {st}\nwrote {onnx_path}", highlight=False)


def predict(
    model: Annotated[Path, typer.Option("--model", help="metamodel.onnx written by `coopml export`")],
    inputs: Annotated[Path, typer.Argument(help="an image folder, an .npz (array x) or a .csv/.parquet file")],
    label_column: Annotated[str | None, typer.Option("--label-column", help="csv/parquet: a column to leave out")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per sample")] = False,
) -> None:
    """Classify samples with an exported MetaModel; prints each sample's class name."""
    import numpy as np

    from coopml.data.files import load_samples
    from coopml.roles.export import SCORES, load_onnx_metamodel

    if model.suffix != ".onnx":
        raise CliUsageError(f"{model}: give the .onnx file written by `coopml export`")
    session, spec = load_onnx_metamodel(model)
    raw, names = load_samples(inputs, spec, label_column)
    scores = session.run([SCORES], {"input": spec.apply(raw)})[0]
    top = np.argmax(scores, axis=1)
    if as_json:
        for name, k, s in zip(names, top, scores):
            print(json.dumps({"sample": name, "class": spec.classes[int(k)], "scores": [round(float(v), 5) for v in s]}))
        return
    table = Table("sample", "class", "score")
    for name, k, s in zip(names, top, scores):
        table.add_row(name, spec.classes[int(k)], f"{float(s[k]):.3f}")
    console.print(table)


@store_app.command("put")
@friendly
def store_put(path: Annotated[Path, typer.Argument(help="file to store")], store: StoreSpec,
              pin: Annotated[bool, typer.Option(help="pin it (kept by garbage collection)")] = True) -> None:
    """Store a file; prints its CID."""
    from coopml.storage import open_store
    if not path.is_file():
        raise CliUsageError(f"{path}: no such file")
    s = open_store(store)
    try:
        cid = s.put(path.read_bytes())
        if pin:
            s.pin(cid)
    finally:
        s.close()
    print(cid)


@store_app.command("get")
@friendly
def store_get(cid: Annotated[str, typer.Argument()], store: StoreSpec,
              out: Annotated[Path | None, typer.Option("--out", help="file to write (default: standard output)")] = None) -> None:
    """Fetch content by CID (its hash is checked against the CID)."""
    from coopml.storage import open_store
    s = open_store(store)
    try:
        data = s.get(cid)
    finally:
        s.close()
    if out is None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    else:
        out.write_bytes(data)
        console.print(f"wrote {len(data)} bytes to {out}", highlight=False)


def mount(app: typer.Typer) -> None:
    app.command("export")(friendly(export))
    app.command("predict")(friendly(predict))
    app.add_typer(store_app, name="store")

"""docs/config-reference.md, generated from the pydantic models themselves (every field, its type,
default and description), so the reference can never drift from the code: a test regenerates it
and compares it with the committed file."""

from __future__ import annotations

import enum
import json
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

REFERENCE_PATH = Path("docs/config-reference.md")


def _roots() -> list[tuple[str, type[BaseModel], str]]:
    from coopml.roles.config import ContributorConfig, InitiatorConfig, VerifierConfig
    from coopml.task import TaskManifest
    return [
        ("Initiator config", InitiatorConfig, "`coopml publish --config` / `coopml initiator --config` / `coopml export`"),
        ("Contributor config", ContributorConfig, "`coopml contributor --config`"),
        ("Verifier config", VerifierConfig, "`coopml verifier --config`"),
        ("Task manifest", TaskManifest, "the `manifest` file of an initiator config (`coopml publish`)"),
    ]


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type_name(a) for a in args)
    if origin is typing.Literal:
        return " \\| ".join(json.dumps(a) for a in args)
    if origin in (list, tuple, set, frozenset, dict):
        inner = ", ".join("..." if a is Ellipsis else _type_name(a) for a in args)
        return f"{origin.__name__}[{inner}]" if inner else origin.__name__
    if tp is type(None):
        return "null"
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return f"[{tp.__name__}](#{tp.__name__.lower()})"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return " \\| ".join(json.dumps(m.value) for m in tp)
    return getattr(tp, "__name__", str(tp)).replace("|", "\\|")


def _nested(tp: Any) -> list[type[BaseModel]]:
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [tp]
    return [m for a in typing.get_args(tp) for m in _nested(a)]


def _default(field: Any) -> str:
    if field.is_required():
        return "**required**"
    if field.default_factory is not None:
        try:
            value = field.default_factory()
        except TypeError:
            return "(computed)"
    else:
        value = field.default
    if value is PydanticUndefined:
        return "**required**"
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    elif isinstance(value, enum.Enum):
        value = value.value
    elif isinstance(value, Path):
        value = str(value)
    return f"`{json.dumps(value, default=str)}`"


def _cell(text: str) -> str:
    return re.sub(r"\s+", " ", text).replace("|", "\\|").strip()


def _doc(model: type[BaseModel]) -> str:
    doc = model.__doc__ or ""
    if doc.startswith(("Usage docs:", "!!! ")) or "pydantic" in doc.lower()[:80]:
        return ""
    return _cell(doc.strip().split("\n\n")[0])


def render() -> str:
    lines = ["# Configuration reference", "",
             "Generated from the pydantic models by `coopml config-reference`; do not edit by hand",
             "(tests/cli/test_config_reference.py fails when this file is out of date).", "",
             "Configs are JSON files. Unknown fields are refused. No private key ever appears in a config: a",
             "node names an encrypted keystore file (`coopml account new|import`) and where its password comes from.",
             ""]
    seen: set[type[BaseModel]] = set()
    for title, root, used in _roots():
        lines += [f"## {title}", "", f"Used by {used}.", ""]
        queue = [root]
        while queue:
            model = queue.pop(0)
            if model in seen:
                continue
            seen.add(model)
            lines += [f"### {model.__name__}", ""]
            doc = _doc(model)
            if doc:
                lines += [doc, ""]
            lines += ["| field | type | default | description |", "|---|---|---|---|"]
            for name, field in model.model_fields.items():
                lines.append(f"| `{name}` | {_type_name(field.annotation)} | {_default(field)} | "
                             f"{_cell(field.description or '')} |")
                queue += [m for m in _nested(field.annotation) if m not in seen]
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def config_reference(
    out: Annotated[Path, typer.Option("--out", help="file to write")] = REFERENCE_PATH,
    check: Annotated[bool, typer.Option("--check", help="only check that the file is up to date (exit 1 if not)")] = False,
) -> None:
    """Generate docs/config-reference.md from the pydantic models (every field, type, default, description)."""
    text = render()
    if check:
        current = out.read_text() if out.is_file() else ""
        if current != text:
            typer.echo(f"{out} is out of date; run `coopml config-reference`", err=True)
            raise typer.Exit(1)
        typer.echo(f"{out} is up to date")
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    typer.echo(f"wrote {out}")

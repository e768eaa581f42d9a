"""What every `coopml` command shares: expected errors become one clear line and exit code 2."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console

from coopml.errors import CoopmlError

err_console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


class CliUsageError(CoopmlError):
    """The command line itself is wrong (missing or contradictory options, an unreadable file)."""


def friendly(fn: F) -> F:
    """Turn expected errors into a clear message and exit code 2 (never a traceback)."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except CoopmlError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True, soft_wrap=True)
            raise typer.Exit(2) from None
    return wrapper  # type: ignore[return-value]

"""The static checks of the code base run as tests: `ruff check src benchmarks tests` and `mypy` (its configuration,
including the pydantic plugin and the overrides for untyped libraries, lives in pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _tool(name: str) -> list[str]:
    """The tool installed next to this interpreter (the project's venv), else `python -m name`."""
    exe = Path(sys.executable).parent / name
    return [str(exe)] if exe.exists() else [sys.executable, "-m", name]


def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False)


def test_ruff_check_is_clean() -> None:
    # the tests and benchmarks too: their findings had piled up (50 by 2026-11-30) while only src was checked
    proc = _run([*_tool("ruff"), "check", "--no-cache", "src", "benchmarks", "tests"], timeout=300)
    assert proc.returncode == 0, f"ruff check failed:\n{proc.stdout}{proc.stderr}"


def test_mypy_is_clean() -> None:
    # no arguments: `packages`, `mypy_path` and the plugin come from [tool.mypy] in pyproject.toml
    proc = _run([*_tool("mypy")], timeout=900)
    assert proc.returncode == 0, f"mypy failed:\n{proc.stdout}{proc.stderr}"
    assert "Success: no issues found" in proc.stdout, proc.stdout

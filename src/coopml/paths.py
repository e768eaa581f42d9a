"""Where coopml keeps its caches: $COOPML_HOME, else the source checkout's .cache, else ~/.cache/coopml."""

from __future__ import annotations

import os
from pathlib import Path


def repo_root() -> Path | None:
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() else None


def home() -> Path:
    if env := os.environ.get("COOPML_HOME"):
        return Path(env)
    root = repo_root()
    return root / ".cache" if root else Path.home() / ".cache" / "coopml"


def node_modules() -> Path:
    """The pinned npm tools (solc, anvil, js-ipfs) installed by scripts/setup.sh."""
    if env := os.environ.get("COOPML_NODE_MODULES"):
        return Path(env)
    root = repo_root()
    return (root if root else Path.cwd()) / "node_modules"

"""Where coopml keeps its caches ($COOPML_HOME, else the source checkout's .cache, else ~/.cache/coopml),
and how it writes a file only its owner may read."""

from __future__ import annotations

import os
import tempfile
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


def write_private(path: str | Path, data: bytes | str, *, mode: int = 0o600, durable: bool = False) -> Path:
    """Write `path` atomically (a crash leaves the old file or the new one, never half of one)
    with `mode` from the moment the file exists: a secret written first and chmod-ed afterwards
    is readable by anyone in between. `durable`: fsync before the rename (keys, sealed secrets:
    what a node must still have after a power cut). Each call writes its own temporary file
    beside `path` (removed on failure), so two writers of one path never mix their bytes: the
    last rename wins."""
    path = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")   # created 0600
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(payload)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path

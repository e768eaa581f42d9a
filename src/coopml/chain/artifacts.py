"""Compiled contract artifacts (ABI + bytecode) shipped in the package, and the check that they
are a fresh compile of contracts/*.sol by the pinned npm solc (so the package runs without node)."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

from coopml.errors import ChainError
from coopml.paths import node_modules, repo_root

ARTIFACT_DIR = Path(__file__).parent / "artifacts"
REGENERATE_HINT = "regenerate with: node contracts/compile.cjs src/coopml/chain/artifacts"


@cache
def load_artifact(name: str = "CoopML") -> dict[str, Any]:
    """The committed artifact of contract `name` (keys: abi, bytecode, deployedBytecode, compiler)."""
    path = ARTIFACT_DIR / f"{name}.json"
    if not path.is_file():
        raise ChainError(f"no compiled artifact {path}; {REGENERATE_HINT}")
    return json.loads(path.read_text())


def contracts_dir() -> Path:
    root = repo_root()
    if root is None or not (root / "contracts" / "compile.cjs").is_file():
        raise ChainError("contracts/ sources are only available in a source checkout")
    return root / "contracts"


def compile_contracts(out_dir: Path) -> list[Path]:
    """Compile contracts/**/*.sol with node + the pinned solc from node_modules into out_dir."""
    node = shutil.which("node")
    if node is None:
        raise ChainError("node is not installed; needed only to recompile the contracts")
    if not (node_modules() / "solc").is_dir():
        raise ChainError(f"npm solc missing in {node_modules()}; run scripts/setup.sh")
    env = {"NODE_PATH": str(node_modules()), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([node, str(contracts_dir() / "compile.cjs"), str(out_dir)],
                          capture_output=True, text=True, env=env, timeout=300, check=False)
    if proc.returncode != 0:
        raise ChainError(f"solc failed:\n{proc.stderr.strip()}")
    return sorted(out_dir.glob("*.json"))


def stale_artifacts() -> list[str]:
    """Names of committed artifacts that differ from (or are missing versus) a fresh compile."""
    with tempfile.TemporaryDirectory(prefix="coopml-solc-") as tmp:
        fresh = {p.name: p.read_bytes() for p in compile_contracts(Path(tmp))}
    committed = {p.name: p.read_bytes() for p in ARTIFACT_DIR.glob("*.json")}
    return sorted(n for n in fresh.keys() | committed.keys() if fresh.get(n) != committed.get(n))


def main() -> int:
    """Exit status 1 (with the regenerate command) when the committed artifacts are stale."""
    import sys

    stale = stale_artifacts()
    if stale:
        print(f"stale contract artifacts: {', '.join(stale)}; {REGENERATE_HINT}", file=sys.stderr)
        return 1
    print("contract artifacts match a fresh compile")
    return 0

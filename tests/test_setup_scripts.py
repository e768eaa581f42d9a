"""scripts/pyinstall.sh: setup installs through uv when it can and through pip when it cannot.

Every CI run exercises the uv path on a fresh clone; these tests pin the arguments it passes and
the fallback a machine without uv (or whose uv cannot reach an index) depends on. Offline: the
package installed is a wheel the test writes.
"""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _wheel(dest: Path, name: str = "coopml_setup_probe", version: str = "0.1") -> Path:
    """A minimal pure-Python wheel: one module, METADATA, WHEEL and a RECORD with real hashes."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}.py": b"ANSWER = 42\n",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, body in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(body).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(body)}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = ("\n".join(record) + "\n").encode()
    wheel = dest / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for path, body in files.items():
            z.writestr(path, body)
    return wheel


def _fake_uv(path: Path, status: int, log: Path) -> Path:
    path.write_text(f'#!/usr/bin/env bash\necho "$@" >> "{log}"\nexit {status}\n')
    path.chmod(0o755)
    return path


def _py_install(uv: Path | None, *args: str) -> subprocess.CompletedProcess[str]:
    env_uv = str(uv) if uv is not None else ""
    script = f'set -euo pipefail; . "{ROOT}/scripts/pyinstall.sh"; COOPML_UV="{env_uv}" py_install "$@"'
    return subprocess.run(["bash", "-c", script, "py_install", *args], capture_output=True, text=True,
                          timeout=300, check=False)


def test_py_install_uses_uv_with_byte_compiling_and_the_target_interpreter(tmp_path: Path) -> None:
    log = tmp_path / "uv.log"
    uv = _fake_uv(tmp_path / "uv", 0, log)
    r = _py_install(uv, "/some/venv/bin/python", "-r", "requirements.lock")
    assert r.returncode == 0, r.stderr
    assert log.read_text().split() == ["pip", "install", "-q", "--compile-bytecode", "--python",
                                       "/some/venv/bin/python", "-r", "requirements.lock"]


def test_py_install_falls_back_to_pip_when_uv_fails_and_the_package_is_installed(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    wheel = _wheel(tmp_path)
    log = tmp_path / "uv.log"
    uv = _fake_uv(tmp_path / "uv", 2, log)
    python = str(venv / "bin" / "python")
    r = _py_install(uv, python, "--no-index", str(wheel))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "uv failed; installing" in r.stderr and log.read_text().strip()   # uv was tried first
    probe = subprocess.run([python, "-c", "import coopml_setup_probe as p; print(p.ANSWER)"],
                           capture_output=True, text=True, timeout=60, check=False)
    assert probe.stdout.strip() == "42", probe.stderr
    # and a failure of pip itself is the function's failure, not swallowed by the output filter
    bad = _py_install(None, python, "--no-index", str(tmp_path / "missing-0.1-py3-none-any.whl"))
    assert bad.returncode != 0

"""Start and stop local chain nodes (anvil, the embedded JSON-RPC node) as child processes on
127.0.0.1, stopped by PID. Used by tests, benchmarks and the multi-process demo."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import requests

from coopml.errors import ChainError, ChainUnavailable
from coopml.paths import node_modules


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def anvil_binary() -> Path | None:
    """The pinned anvil from npm @foundry-rs/anvil-linux-amd64, if installed."""
    path = node_modules() / ".bin" / "anvil"
    return path if path.exists() and os.access(path, os.X_OK) else None


@dataclass
class NodeProcess:
    """A running local node; `stop()` ends it by its PID."""

    pid: int
    url: str
    kind: str
    _proc: subprocess.Popen = field(repr=False)

    def stop(self, timeout: float = 10.0) -> None:
        if self._proc.poll() is not None:
            return
        os.kill(self.pid, signal.SIGTERM)
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.pid, signal.SIGKILL)
            self._proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL: the node dies without flushing anything (crash tests)."""
        if self._proc.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
            self._proc.wait(10)

    def output(self) -> str:
        """What the node printed so far (stdout + stderr)."""
        return _output(self._proc)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _spawn(cmd: list[str]) -> subprocess.Popen:
    # output goes to an unlinked temp file, not a pipe: a chatty node can never block on it
    log = tempfile.TemporaryFile()  # noqa: SIM115 -- lives as long as the process, read by _output()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    proc.stdout_log = log  # type: ignore[attr-defined]
    return proc


def _output(proc: subprocess.Popen) -> str:
    log = getattr(proc, "stdout_log", None)
    if log is None:
        return ""
    log.seek(0)
    return log.read().decode(errors="replace")


def _wait_ready(proc: subprocess.Popen, url: str, kind: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = _output(proc)
            raise ChainUnavailable(f"{kind} exited with code {proc.returncode}: {out[-2000:]}")
        try:
            r = requests.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []},
                              timeout=1)
            if r.ok and "result" in r.json():
                return
        except requests.RequestException:
            pass
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    raise ChainUnavailable(f"{kind} did not answer at {url} within {timeout}s")


def start_anvil(port: int | None = None, block_time: float | None = None, accounts: int = 10,
                balance_eth: int = 10_000, timeout: float = 30.0, state: str | Path | None = None,
                extra_args: list[str] | None = None) -> NodeProcess:
    """anvil on 127.0.0.1; `block_time=None` auto-mines each transaction, else seals every N s.
    `state`: anvil's `--state FILE` (load at start, dump at exit)."""
    binary = anvil_binary()
    if binary is None:
        raise ChainError(f"anvil not found under {node_modules()}; run scripts/setup.sh (npm ci)")
    port = port or free_port()
    cmd = [str(binary), "--host", "127.0.0.1", "--port", str(port), "--accounts", str(accounts),
           "--balance", str(balance_eth), "--silent"]
    if block_time is not None:
        cmd += ["--block-time", str(block_time)]
    if state is not None:
        cmd += ["--state", str(state)]
    cmd += list(extra_args or [])
    proc = _spawn(cmd)
    url = f"http://127.0.0.1:{port}"
    _wait_ready(proc, url, "anvil", timeout)
    return NodeProcess(proc.pid, url, "anvil", proc)


def start_embedded_node(port: int | None = None, timeout: float = 60.0, block_time: float = 0.0,
                        state: str | Path | None = None, accounts: int | None = None,
                        chain_id: int | None = None) -> NodeProcess:
    """`python -m coopml.chain.node` (the embedded py-evm chain over JSON-RPC) on 127.0.0.1.

    `block_time=0` (the default here, for tests and the in-process demo) mines each submission at
    once, like anvil without `--block-time`; `block_time=1` is what the node does when run by hand
    (the clock moves when idle). `state` keeps the chain in an SQLite file across restarts."""
    port = port or free_port()
    cmd = [sys.executable, "-m", "coopml.chain.node", "--port", str(port), "--block-time", str(block_time)]
    if state is not None:
        cmd += ["--state", str(state)]
    if accounts is not None:
        cmd += ["--accounts", str(accounts)]
    if chain_id is not None:
        cmd += ["--chain-id", str(chain_id)]
    proc = _spawn(cmd)
    url = f"http://127.0.0.1:{port}"
    _wait_ready(proc, url, "coopml.chain.node", timeout)
    return NodeProcess(proc.pid, url, "embedded-node", proc)

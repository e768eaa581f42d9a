"""Thin, explicit wrappers around iproute2, tc, ethtool and setns(2).

Every command is run with an argument list (no shell) and a failure raises TestbedError with
the command and its stderr. `run_in_netns` runs a Python function in a fresh thread that has
joined a network namespace (setns is per thread for network namespaces), so the orchestrator can
open sockets *inside* the emulated network without any address on the host.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from coopml.testbed.errors import TestbedError, TestbedUnavailable

T = TypeVar("T")
NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def is_root() -> bool:
    return os.geteuid() == 0


def require_root() -> None:
    if not is_root():
        raise TestbedUnavailable("the network testbed needs root (network namespaces, veths, tc); run it as root")


def require_tools(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        raise TestbedUnavailable(f"missing tools: {', '.join(missing)}; run scripts/setup.d/40-testbed.sh as root")


def sh(cmd: list[str], *, netns: str | None = None, check: bool = True, timeout: float = 30.0,
       env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `cmd` (inside `netns` if given); raise TestbedError naming the command if it fails."""
    full = (["ip", "netns", "exec", netns] if netns else []) + cmd
    try:
        result = subprocess.run(full, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                                env=env, check=False)
    except subprocess.TimeoutExpired:
        raise TestbedError(f"`{' '.join(full)}` did not finish within {timeout:.0f} s") from None
    except FileNotFoundError:
        raise TestbedUnavailable(f"`{full[0]}` is not installed") from None
    if check and result.returncode != 0:
        raise TestbedError(f"`{' '.join(full)}` failed ({result.returncode}): {result.stderr.strip()[-600:]}")
    return result


def ns_exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def link_exists(name: str, netns: str | None = None) -> bool:
    if netns is None:
        return Path("/sys/class/net", name).exists()
    return sh(["ip", "-n", netns, "link", "show", name], check=False).returncode == 0


def ns_pids(name: str) -> list[int]:
    """PIDs of every process inside network namespace `name` (ours by construction)."""
    if not ns_exists(name):
        return []
    out = sh(["ip", "netns", "pids", name], check=False).stdout
    return [int(p) for p in out.split() if p.isdigit()]


def list_namespaces() -> list[str]:
    return sorted(p.name for p in NETNS_DIR.iterdir()) if NETNS_DIR.is_dir() else []


def list_links() -> list[str]:
    return sorted(p.name for p in Path("/sys/class/net").iterdir())


def proc_start_ticks(pid: int) -> int | None:
    """Start time of `pid` in clock ticks since boot (/proc/PID/stat field 22), None if it is gone.
    Recorded with every PID we start so a reused PID is never mistaken for ours."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    if fields[0] == "Z":          # a zombie: already dead, only waiting to be reaped
        return None
    return int(fields[19])


def run_in_netns(netns: str, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
    """Call fn(*args, **kwargs) in a new thread that has entered network namespace `netns`."""
    box: dict[str, object] = {}

    def target() -> None:
        try:
            enter_netns(netns)
            box["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name=f"netns:{netns}", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


def enter_netns(netns: str) -> None:
    """Move the *calling thread* into network namespace `netns` (use from a dedicated thread)."""
    fd = os.open(NETNS_DIR / netns, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise TestbedError(f"setns into {netns} failed: {os.strerror(err)}")
    finally:
        os.close(fd)


def start_in_thread(netns: str, fn: Callable[[], None], name: str) -> threading.Thread:
    """A daemon thread that enters `netns` and runs `fn` there (for long-running loops)."""
    def target() -> None:
        enter_netns(netns)
        fn()
    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread

"""Start many agent processes on one machine without paying every process's imports.

A node of a real deployment is `coopml initiator|contributor|verifier` on its own machine and pays
its imports once (torch, TenSEAL, web3 and the roles: about 4 CPU-s). A simulation that starts
seven nodes on two cores paid them seven times, all at once: a third of the demo's wall time
went to start-up. Here each node is still its own OS process (own memory, own PID, killed with a
real SIGKILL by the kill -9 tests), but it is forked from a preloaded image: multiprocessing's
forkserver, whose server imports `coopml.sim._agent_image` once; every node then runs the same CLI
entry point a real operator runs (`coopml.cli.main.app` with the node's argv).

Each node writes its stdout (one JSON LogRecord per line) and stderr to files in its folder; a
thread per node follows the stdout file and hands each record to the caller. Every start gets a
fresh stdout file, so a node killed mid-line cannot glue its last half line to its successor's.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from coopml.roles.log import LogRecord, parse_record

IMAGE_MODULE = "coopml.sim._agent_image"
_CTX = multiprocessing.get_context("forkserver")
_CTX.set_forkserver_preload([IMAGE_MODULE])
POLL_S = 0.05


def warm_up() -> None:
    """Start the fork server now (its imports then overlap whatever the caller does next)."""
    multiprocessing.forkserver.ensure_running()


def launcher_cpu_seconds() -> float | None:
    """CPU seconds (user + system) the fork server spent so far, i.e. the imports every node
    shares; None where it cannot be read."""
    pid = getattr(multiprocessing.forkserver._forkserver, "_forkserver_pid", None)
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError, TypeError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _node_main(argv: list[str], env: dict[str, str], stdout: str, stderr: str) -> None:
    """In the forked node: its own environment and output files, then the CLI as for a real node."""
    for fd, path in ((1, stdout), (2, stderr)):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(f, fd)
        os.close(f)
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    os.environ.clear()
    os.environ.update(env)
    import torch
    torch.set_num_threads(int(env.get("OMP_NUM_THREADS", "1")))
    from coopml.cli.main import app
    app(args=argv, prog_name="coopml")


@dataclass
class AgentProcess:
    """One node's OS process (a forkserver child) and the thread that follows its stdout."""

    name: str
    argv: list[str]
    stdout_path: Path
    stderr_path: Path
    process: multiprocessing.process.BaseProcess = field(repr=False)
    restarts: int = 0
    _follower: threading.Thread | None = field(default=None, repr=False)

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def poll(self) -> int | None:
        """The exit code (negative: killed by that signal), None while it runs."""
        return self.process.exitcode

    def kill(self) -> None:
        """SIGKILL, then reap it."""
        if self.process.exitcode is None:
            self.process.kill()
        self.process.join()

    def stderr_tail(self, chars: int = 1500) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def _follow(agent: AgentProcess, on_record: Callable[[str, LogRecord], None]) -> None:
    """Hand every complete stdout line that is a LogRecord to `on_record`, until the node exited
    and its file is read to the end."""
    buf = b""
    with open(agent.stdout_path, "rb") as f:
        while True:
            exited = agent.poll() is not None
            chunk = f.read()
            if chunk:
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    rec = parse_record(line.decode(errors="replace"))
                    if rec is not None:
                        on_record(agent.name, rec)
            elif exited:
                return
            else:
                time.sleep(POLL_S)


def start_agent(name: str, argv: Sequence[str], folder: Path, on_record: Callable[[str, LogRecord], None],
                env: Mapping[str, str] | None = None, restarts: int = 0) -> AgentProcess:
    """Fork node `name` running `coopml <argv>`; stdout/stderr go to files in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    stdout = folder / f"stdout.{restarts}.jsonl"
    stderr = folder / "stderr.log"
    stdout.touch(mode=0o600)
    node_env = dict(os.environ if env is None else env)
    node_env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = _CTX.Process(target=_node_main, name=f"coopml-{name}", daemon=True,
                        args=(list(argv), node_env, str(stdout), str(stderr)))
    proc.start()
    agent = AgentProcess(name, list(argv), stdout, stderr, proc, restarts)
    agent._follower = threading.Thread(target=_follow, args=(agent, on_record), daemon=True,
                                       name=f"follow-{name}")
    agent._follower.start()
    return agent

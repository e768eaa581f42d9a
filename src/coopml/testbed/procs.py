"""Start processes for the testbed, each recorded (PID + start time) in the run's state file."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

from coopml.testbed.errors import TestbedError
from coopml.testbed.netns import proc_start_ticks
from coopml.testbed.state import ProcRecord, StateFile


class Launcher:
    """Spawns processes (optionally inside a network namespace) in their own session, with output
    to files (never pipes: a process must outlive an orchestrator that crashed), and records them."""

    def __init__(self, sf: StateFile) -> None:
        self.sf = sf
        self.popens: dict[str, subprocess.Popen[bytes]] = {}

    def spawn(self, name: str, cmd: list[str], *, log: Path, netns: str | None = None, stdout: Path | None = None,
              env: dict[str, str] | None = None, tier: str = "service", cwd: Path | None = None
              ) -> subprocess.Popen[bytes]:
        full = (["ip", "netns", "exec", netns] if netns else []) + cmd
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as err, (open(stdout, "ab") if stdout else contextlib.nullcontext(err)) as out:
            try:
                popen = subprocess.Popen(full, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                         start_new_session=True, env=env if env is not None else dict(os.environ),
                                         cwd=cwd)
            except FileNotFoundError:
                raise TestbedError(f"cannot start {name}: `{full[0]}` not found") from None
        ticks = proc_start_ticks(popen.pid)
        self.sf.add_process(ProcRecord(name=name, pid=popen.pid, start_ticks=ticks if ticks is not None else -1,
                                       netns=netns, cmd=full, log=str(log), tier=tier))  # type: ignore[arg-type]
        self.popens[name] = popen
        return popen

    def reap(self) -> None:
        """Wait for children that already exited (after teardown), so none is left a zombie."""
        for p in self.popens.values():
            try:
                p.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                pass

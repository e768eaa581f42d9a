"""The simulation's node launcher: nodes are real OS processes forked from a preloaded image, each
running the CLI a real operator runs, with its own environment and output files."""

from __future__ import annotations

import os
import signal
import time

from coopml.sim.launcher import launcher_cpu_seconds, start_agent, warm_up


def _wait(agent, timeout: float = 60.0) -> int:
    deadline = time.monotonic() + timeout
    while agent.poll() is None:
        assert time.monotonic() < deadline, "node did not exit"
        time.sleep(0.05)
    return agent.poll()


def test_a_node_with_a_bad_config_exits_with_a_message_not_a_traceback(tmp_path):
    warm_up()
    records = []
    agent = start_agent("verifier1", ["verifier", "--config", str(tmp_path / "missing.json")], tmp_path / "v1",
                        lambda name, rec: records.append((name, rec)))
    code = _wait(agent)
    assert code not in (0, None)
    err = agent.stderr_tail()
    assert "missing.json" in err and "Traceback" not in err
    assert agent.pid != os.getpid() and (launcher_cpu_seconds() or 0) > 0
    assert oct(agent.stdout_path.stat().st_mode & 0o777) == "0o600"


def test_kill_is_a_real_sigkill_and_a_restart_writes_a_fresh_stdout_file(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text("{}")
    agent = start_agent("initiator", ["initiator", "--config", str(cfg)], tmp_path / "i", lambda n, r: None)
    os.kill(agent.pid, signal.SIGSTOP)   # hold it so the kill lands while it runs
    agent.kill()
    assert agent.poll() == -signal.SIGKILL
    again = start_agent("initiator", agent.argv, tmp_path / "i", lambda n, r: None, restarts=1)
    assert again.stdout_path != agent.stdout_path and again.stdout_path.name == "stdout.1.jsonl"
    assert _wait(again) not in (0, None)     # an empty config is refused with a message
    assert "Traceback" not in again.stderr_tail()

"""Agents as separate OS processes on anvil with a js-ipfs daemon as the store; nodes are killed
with SIGKILL mid-task and restarted, and the task still completes with every payment made once."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from coopml.sim.lifecycle import ContributorPlan, run_processes, tiny_plan

HONEST = "coopml.roles.contributor:Contributor"


@pytest.mark.timeout(1800)
def test_kill_nine_at_several_steps_and_resume_on_anvil_and_ipfs(tmp_path):
    from coopml.chain.processes import anvil_binary
    from coopml.storage.daemon import node_binary
    if anvil_binary() is None or node_binary() is None:
        pytest.fail("anvil or node missing: run scripts/setup.sh")
    plan = tiny_plan([ContributorPlan(labels=labels, n_train=300, epochs=3, seed=i, agent=HONEST)
                      for i, labels in enumerate([[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]])])
    kills = {"contributor1": "announced", "verifier2": "committed", "initiator": "model-received",
             "contributor2": "trained"}
    r = run_processes(plan, tmp_path, backend="anvil", storage="ipfs", kill_at=kills)
    journal = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert set(r.restarts) == set(kills), r.restarts
    assert sorted(m.status for m in r.models) == ["RELEASED", "RELEASED"], r.models
    # no double payment: each account withdrew exactly what it was owed, once
    per_node: dict[str, int] = {}
    for e in journal:
        if e["event"] == "withdrawn":
            per_node[e["node"]] = per_node.get(e["node"], 0) + 1
    assert per_node and all(n == 1 for n in per_node.values()), per_node
    for c in ("contributor1", "contributor2"):
        assert r.withdrawn_eth[c] == pytest.approx(1.1)
    # the initiator, killed right after receiving a model, still fused both after its restart
    assert len(r.fusion_history[-1]["members"]) == 2


def _coopml(*args: str, timeout: int = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "coopml.cli.main", *args], capture_output=True, text=True,
                          check=False, timeout=timeout)


def test_role_cli_bad_input_gives_a_message_not_a_traceback(tmp_path):
    r = _coopml("verifier", "--config", str(tmp_path / "nope.json"))
    assert r.returncode == 2 and "Traceback" not in r.stderr and "nope.json" in r.stderr, r.stderr
    cfg = tmp_path / "c.json"
    cfg.write_text("{not json")
    r = _coopml("verifier", "--config", str(cfg))
    assert r.returncode == 2 and "Traceback" not in r.stderr and "c.json" in r.stderr, r.stderr
    # a raw private key in a config is refused: keys live in encrypted keystore files
    cfg.write_text(json.dumps({"chain": "http://127.0.0.1:9", "contract": "0x" + "11" * 20, "store": str(tmp_path),
                               "key": "0x" + "22" * 32, "workdir": str(tmp_path / "w"), "task_id": 1}))
    r = _coopml("verifier", "--config", str(cfg))
    assert r.returncode == 2 and "Traceback" not in r.stderr and "keystore" in r.stderr, r.stderr
    r = _coopml("verifier", "--config", str(cfg), "--agent", "coopml.roles.contributor:Contributor")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr

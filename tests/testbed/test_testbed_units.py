"""Parts of the testbed that need no root: presets, options, the state file and its teardown
(process identity by PID + start time), the workload plan, phases and the report."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from coopml.testbed.errors import StateError, TestbedError
from coopml.testbed.netns import proc_start_ticks
from coopml.testbed.presets import PRESETS, LinkProfile, get_preset
from coopml.testbed.report import comparison, human, render_markdown
from coopml.testbed.runner import LinkCut
from coopml.testbed.state import ProcRecord, StateFile, teardown
from coopml.testbed.topology import tbf_args


@pytest.fixture
def state_dir(tmp_path, monkeypatch):
    d = tmp_path / "state"
    monkeypatch.setenv("COOPML_TESTBED_STATE_DIR", str(d))
    return d


def test_presets_and_bad_names():
    pi = get_preset("pi")
    assert pi.link.rate_mbit == 10 and pi.link.delay_ms * 2 == 20 and pi.block_time == 15
    assert {"pi", "lan", "ci"} <= set(PRESETS)
    with pytest.raises(TestbedError, match="unknown preset 'wan'.*pi"):
        get_preset("wan")
    with pytest.raises(ValueError):
        LinkProfile(rate_mbit=-1)


def test_tbf_queue_and_burst_follow_the_rate():
    args = tbf_args(10, 50)
    assert args[:3] == ["tbf", "rate", "10mbit"]
    burst, limit = int(args[4]), int(args[6])
    assert burst >= 16_000 and limit >= 62_500          # 50 ms at 10 Mbit/s
    assert int(tbf_args(1000, 20)[4]) == 250_000         # 2 ms at 1 Gbit/s


def test_link_cut_syntax():
    c = LinkCut.parse("contributor1@trained:5")
    assert (c.host, c.after_event, c.seconds) == ("contributor1", "trained", 5.0)
    for bad in ("contributor1", "c1@trained", "c1@trained:x", "@e:1"):
        with pytest.raises(TestbedError, match="HOST@EVENT:SECONDS"):
            LinkCut.parse(bad)


def test_state_file_roundtrip_and_errors(state_dir, tmp_path):
    sf = StateFile.create(tmp_path / "run", "ci")
    rid = sf.state.run_id
    assert len(rid) == 4 and sf.state.ns("initiator") == f"coopml-{rid}-initiator"
    assert sf.state.if_name(3) == f"tb{rid}03" and len(sf.state.if_name(99)) <= 15   # IFNAMSIZ
    sf.add_namespace("coopml-x")
    again = StateFile.load(rid)
    assert again.state.namespaces == ["coopml-x"] and again.owner_alive()
    assert rid in StateFile.all_runs()
    with pytest.raises(StateError, match="no testbed run 'zzzz'"):
        StateFile.load("zzzz")
    (state_dir / "bad1.json").write_text("{not json")
    with pytest.raises(StateError, match="unreadable state file"):
        StateFile.load("bad1")
    (state_dir / "bad2.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(StateError, match="not a testbed state file"):
        StateFile.load("bad2")


def test_teardown_kills_only_the_processes_it_started(state_dir, tmp_path):
    sf = StateFile.create(tmp_path / "run", "ci")
    child = subprocess.Popen(["sleep", "60"], start_new_session=True)
    ticks = proc_start_ticks(child.pid)
    assert ticks is not None
    sf.add_process(ProcRecord(name="sleeper", pid=child.pid, start_ticks=ticks, cmd=["sleep", "60"]))
    # a record whose PID now belongs to another process (here: this test) must be left alone
    sf.add_process(ProcRecord(name="reused", pid=os.getpid(), start_ticks=(proc_start_ticks(os.getpid()) or 0) + 1,
                              cmd=["gone"]))
    assert teardown(sf) == []
    assert child.wait(timeout=10) != 0        # SIGTERMed
    assert not sf.path.exists()
    time.sleep(0.1)
    assert proc_start_ticks(os.getpid()) is not None


def test_plan_for_any_number_of_nodes():
    from coopml.testbed.workload import (
        fedavg_job,
        make_plan,
        storage_hosts,
        testbed_hosts,
    )
    plan = make_plan(5, 4, "tiny", block_time=15)
    assert [c.slot for c in plan.contributors] == [1, 2, 3, 4, 5]
    assert plan.contributors[3].labels == plan.contributors[0].labels         # Table III sets, cycled
    assert plan.initiator["verifiers_per_model"] == 3                           # odd, <= verifiers
    assert plan.initiator["commit_window"] >= 16 * 15                           # sized for 15 s blocks
    assert plan.contributors[0].n_train == 200 and plan.verifiers == ["honest"] * 4
    hosts = testbed_hosts(2, 1)
    assert [h for h, _ in hosts] == ["chain", "operator", "initiator", "contributor1", "contributor2", "verifier1"]
    assert storage_hosts(hosts) == ["initiator", "contributor1", "contributor2", "verifier1"]
    job = fedavg_job(make_plan(2, 1, "reduced", 1), rounds=2, local_epochs=3, n_test=100)
    assert list(job["clients"]) == ["contributor1", "contributor2"] and job["clients"]["contributor2"]["slot"] == 2
    with pytest.raises(Exception, match="contributors must be 1..7"):
        testbed_hosts(8, 1)


def test_phases_from_events():
    from coopml.testbed.workload import node_phases
    events = [{"t": 10.0, "event": "registered"}, {"t": 12.0, "event": "epoch"}, {"t": 20.0, "event": "trained"},
              {"t": 21.0, "event": "announced"}, {"t": 40.0, "event": "key-released"}, {"t": 45.0, "event": "done"}]
    phases = node_phases("contributor", events, started=5.0)
    assert [(p, b - a) for p, a, b in phases] == [("join", 5.0), ("train", 10.0), ("encrypt+announce", 1.0),
                                                  ("verification", 19.0), ("settle", 5.0)]
    assert node_phases("chain", events, 0.0) == []


def test_report_renders_side_by_side():
    node = {"role": "contributor", "sent_bytes": 2_000_000, "recv_bytes": 1_000, "active_s": 3.0,
            "phases": [{"phase": "train", "start_s": 0.0, "seconds": 3.0, "sent_bytes": 5, "recv_bytes": 6}]}
    report = {"run_id": "abcd", "data": "tiny", "preset": get_preset("ci").model_dump(),
              "switch": {"kind": "linux-bridge", "fallback_reason": "Open vSwitch tools not installed", "bridge": "tbx"},
              "links": None, "timings": {},
              "task": {"elapsed_s": 100.0, "cuts": [], "nodes": {"contributor1": node,
                                                                  "chain": {**node, "role": "chain", "phases": []}},
                       "outcome": {"task_id": 1, "models": [], "fusion_history": [{"models": 1, "test_accuracy": 0.9}]}},
              "fedavg": {"elapsed_s": 50.0, "job": {"clients": {"contributor1": {}}, "rounds": 2, "local_epochs": 1},
                         "server": {"accuracy": 0.8, "model_bytes": 1000, "rounds": []},
                         "nodes": {"contributor1": {"role": "contributor", "sent_bytes": 3000, "recv_bytes": 2000}}}}
    c = comparison(report)
    assert c["coopml_bytes_sent_by_agents"] == 2_000_000 and c["fedavg_bytes_sent"] == 3000
    md = render_markdown(report)
    assert "Linux bridge fallback" in md and "Open vSwitch tools not installed" in md
    assert "| bytes sent by the participants | 2.00 MB | 3.00 kB |" in md
    assert human(999) == "999 B" and human(1500) == "1.50 kB"

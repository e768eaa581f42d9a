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
    from coopml.testbed.runner import RunOptions, check_cuts
    check_cuts(RunOptions(contributors=2, verifiers=1, cuts=[c, LinkCut.parse("verifier1@registered:5")]))
    with pytest.raises(TestbedError, match="no agent host 'contributor3'"):
        check_cuts(RunOptions(contributors=2, verifiers=1, cuts=[LinkCut.parse("contributor3@trained:5")]))
    with pytest.raises(TestbedError, match="agents never log 'key-released'"):
        check_cuts(RunOptions(contributors=2, verifiers=1, cuts=[LinkCut.parse("contributor1@key-released:5")]))


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
    from coopml.sim.lifecycle import manifest_for
    from coopml.testbed.workload import (
        fedavg_job,
        make_plan,
        storage_hosts,
        testbed_hosts,
    )
    plan = make_plan(5, 4, "tiny", block_time=15)
    assert [c.seed for c in plan.contributors] == [0, 1, 2, 3, 4]
    assert plan.contributors[3].labels == plan.contributors[0].labels         # Table III sets, cycled
    assert plan.contributors[1].labels != plan.contributors[0].labels
    assert plan.contributors[0].n_train == 200 and len(plan.verifiers) == 4
    m = manifest_for(plan)
    assert m.economics.verifiers_per_model == 3 and m.economics.max_models == 5   # odd, <= verifiers
    assert m.windows.verify_s >= 40 * 15 and m.windows.reveal_s >= 8 * 15         # sized for 15 s blocks
    assert manifest_for(make_plan(2, 1, "tiny", block_time=1)).windows.verify_s == 300
    hosts = testbed_hosts(2, 1)
    assert [h for h, _ in hosts] == ["chain", "operator", "initiator", "contributor1", "contributor2", "verifier1"]
    assert storage_hosts(hosts) == ["initiator", "contributor1", "contributor2", "verifier1"]
    reduced = make_plan(2, 1, "reduced", 1)
    job = fedavg_job(reduced, rounds=2, local_epochs=3, n_test=100)
    assert list(job["clients"]) == ["contributor1", "contributor2"] and job["arch"] == "table4"
    assert job["clients"]["contributor2"]["index"] == 2 and job["clients"]["contributor2"]["total"] == 4
    with pytest.raises(Exception, match="contributors must be 1..7"):
        testbed_hosts(8, 1)


def test_fedavg_clients_hold_exactly_the_contributors_training_data(tmp_path):
    """What a FedAvg client trains on is what `prepare` gave the same contributor, minus the part
    the contributor holds out (its own split)."""
    import numpy as np

    from coopml.data import DatasetRef
    from coopml.roles.datasets import split
    from coopml.sim.lifecycle import prepare
    from coopml.task import builtin_manifest
    from coopml.testbed.workload import fedavg_client_data, fedavg_job, make_plan

    class _Coop:       # prepare only reads the contract's address and deployment block
        address, deploy_block = "0x" + "11" * 20, 0

    class _Chain:      # ... and funds accounts
        def fund(self, address, amount):
            pass

        def fund_many(self, amounts):
            return []

    plan = make_plan(2, 1, "tiny", block_time=1)
    setup = prepare(plan, tmp_path, _Chain(), _Coop(), "http://127.0.0.1:8545", "http://127.0.0.1:5001")
    job = fedavg_job(plan, rounds=1, local_epochs=1, n_test=10)
    for i in (1, 2):
        ref = setup.configs[f"contributor{i}"]["data"]
        data = DatasetRef.model_validate(ref).load(builtin_manifest(plan.manifest).input)
        train, _ = split(data, 0.5, seed=setup.configs[f"contributor{i}"]["train"]["seed"])
        mine = fedavg_client_data(job, f"contributor{i}")
        assert len(mine) == len(train) and abs(len(train) - plan.contributors[i - 1].n_train) <= 10
        assert np.array_equal(np.asarray(mine.labels), np.asarray(train.labels))
        assert np.array_equal(np.asarray(mine.images).reshape(len(mine), -1),
                              np.asarray(train.images).reshape(len(train), -1))


def test_phases_from_events():
    from coopml.testbed.workload import node_phases
    events = [{"t": 10.0, "event": "registered"}, {"t": 12.0, "event": "retry"}, {"t": 20.0, "event": "trained"},
              {"t": 21.0, "event": "announced"}, {"t": 40.0, "event": "delivered"}, {"t": 45.0, "event": "done"}]
    phases = node_phases("contributor", events, started=5.0)
    assert [(p, b - a) for p, a, b in phases] == [("join", 5.0), ("train+encrypt", 10.0), ("announce", 1.0),
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
                       "outcome": {"task_id": 1, "models": [{"model_id": 1, "contributor": "contributor1",
                                                               "status": "RELEASED", "approve": 1, "reject": 0,
                                                               "abstain": 0}],
                                   "fusion_history": [{"members": [1], "test_accuracy": 0.9}]}},
              "fedavg": {"elapsed_s": 50.0, "job": {"clients": {"contributor1": {}}, "rounds": 2, "local_epochs": 1},
                         "server": {"accuracy": 0.8, "model_bytes": 1000, "rounds": []},
                         "nodes": {"contributor1": {"role": "contributor", "sent_bytes": 3000, "recv_bytes": 2000}}}}
    c = comparison(report)
    assert c["coopml_bytes_sent_by_agents"] == 2_000_000 and c["fedavg_bytes_sent"] == 3000
    md = render_markdown(report)
    assert "Linux bridge fallback" in md and "Open vSwitch tools not installed" in md
    assert "| bytes sent by the participants | 2.00 MB | 3.00 kB |" in md
    assert "| 1 | contributor1 | RELEASED | 1 | 0 | 0 |" in md and "MetaModel with 1 model(s): 90.00%" in md
    assert human(999) == "999 B" and human(1500) == "1.50 kB"


def test_window_shortcut_never_jumps_over_another_models_deadline():
    """The dev-chain shortcut skips a fully revealed model's reveal window, or a checked model's
    dispute window, only when nobody else has a deadline before its end."""
    from types import SimpleNamespace as NS

    from coopml.chain import ModelStatus
    from coopml.sim.lifecycle import skip_used_windows
    from fakes import model_info

    class FakeChain:
        def __init__(self):
            self.t, self.moved = 1000, []

        def now(self):
            return self.t

        def increase_time(self, s):
            self.moved.append(s)
            self.t += s

    def model(status, reveals, reveal_deadline, dispute_deadline=0):
        return model_info(status=status, reveals=reveals, verify_deadline=reveal_deadline - 60,
                          reveal_deadline=reveal_deadline, dispute_deadline=dispute_deadline)

    terms = NS(verify_window=300, verifiers_per_model=1, announce_deadline=5000, max_models=2,
               delivery_window=1000, dispute_window=1000)
    models = [model(ModelStatus.VERIFYING, 1, 1300), model(ModelStatus.VERIFYING, 0, 1302)]
    coop = NS(task=lambda _: NS(terms=terms, closed=False), model_count=lambda: len(models),
              model=lambda mid: models[mid - 1])
    chain = FakeChain()
    assert not skip_used_windows(chain, coop, 1, set()) and chain.moved == []    # model 2 still votes
    models[1] = model(ModelStatus.VERIFYING, 1, 1302)
    assert skip_used_windows(chain, coop, 1, set()) and chain.t == 1301          # both revealed: skip
    terms.max_models = 3                                                          # announcements still open
    chain.t = 1000
    assert not skip_used_windows(chain, coop, 1, set())
    terms.max_models = 2
    # two models delivered together: the buyer checked model 1 only, so model 2's window stays
    chain.t = 1000
    models[:] = [model(ModelStatus.DELIVERED, 1, 900, dispute_deadline=1060),
                 model(ModelStatus.DELIVERED, 1, 902, dispute_deadline=1062)]
    assert not skip_used_windows(chain, coop, 1, {1}) and chain.t == 1000
    assert skip_used_windows(chain, coop, 1, {1, 2}) and chain.t == 1061
    # one jump spans at most half the shorter of the delivery and dispute windows: a model
    # finalized while the shortcut read the others keeps most of its delivery window
    chain.t = 1000
    terms.delivery_window, terms.dispute_window = 120, 60
    assert skip_used_windows(chain, coop, 1, {1, 2}) and chain.t == 1030
    assert skip_used_windows(chain, coop, 1, {1, 2}) and chain.t == 1060
    assert skip_used_windows(chain, coop, 1, {1, 2}) and chain.t == 1061
    terms.delivery_window = terms.dispute_window = 1000
    # the runner's `settled` cache: a model in a terminal status is read once, then never again
    reads: list[int] = []
    models[:] = [model(ModelStatus.RELEASED, 1, 900), model(ModelStatus.VERIFYING, 0, 2000)]
    counting = NS(task=coop.task, model_count=coop.model_count, model=lambda mid: reads.append(mid) or models[mid - 1])
    settled: set[int] = set()
    assert not skip_used_windows(chain, counting, 1, set(), settled) and settled == {1} and reads == [1, 2]
    assert not skip_used_windows(chain, counting, 1, set(), settled) and reads == [1, 2, 2]

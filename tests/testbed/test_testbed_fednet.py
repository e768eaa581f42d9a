"""FedAvg over TCP (coopml.testbed.fednet) on loopback: real processes, same math as run_fedavg."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

from coopml.testbed.fednet import Conn, ProtocolError, run_client, serve

JOB = {"arch": "table1-c1", "dataset": "mnist", "seed": 3, "rounds": 2, "local_epochs": 1, "n_test": 500,
       "clients": {"contributor1": {"index": 1, "total": 4, "labels": [0, 1, 2, 3, 4, 5, 6], "n": 160,
                                    "val_fraction": 0.125, "split_seed": 0},
                   "contributor2": {"index": 2, "total": 4, "labels": [0, 1, 2, 3, 4, 8, 9], "n": 160,
                                    "val_fraction": 0.125, "split_seed": 1}}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_networked_fedavg_matches_in_process_fedavg(tmp_path, mnist_test):
    """Clients as separate OS processes, talking TCP to the server, compute the global model
    `coopml.sim.fedavg.run_fedavg` computes in one process (same data, seeds, order). (The
    server's own CLI and the testbed's use of it run in tests/testbed/test_testbed_network.py.)"""
    from coopml.sim.fedavg import run_fedavg
    from coopml.testbed.workload import fedavg_client_data

    job_path = tmp_path / "job.json"
    job_path.write_text(json.dumps(JOB))
    port = _free_port()
    test = mnist_test.subset(np.arange(500))
    ready, box = threading.Event(), {}

    def server():
        box["result"] = serve(JOB, "127.0.0.1", port, accept_timeout=240, test=test, ready=ready)
    t = threading.Thread(target=server)
    t.start()
    ready.wait(30)
    import os
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    exe = [sys.executable, "-m", "coopml.testbed.fednet"]
    clients = [subprocess.Popen(exe + ["client", "--server", f"127.0.0.1:{port}", "--name", n, "--job", str(job_path),
                                       "--out", str(tmp_path / f"{n}.json")], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for n in JOB["clients"]]
    for p in clients:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err[-2000:]
    t.join(60)
    result = box["result"]
    assert [r["round"] for r in result["rounds"]] == [1, 2]
    # application bytes: every round one model down and one model up per client, plus small headers
    for name in JOB["clients"]:
        sent = result["app_bytes"][name]["server_sent"]
        assert 2 * result["model_bytes"] <= sent < 2 * result["model_bytes"] + 2000
        client = json.loads((tmp_path / f"{name}.json").read_text())
        assert client["received"] == sent and client["sent"] == result["app_bytes"][name]["server_received"]

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, ref = run_fedavg(JOB["arch"], [fedavg_client_data(JOB, n) for n in JOB["clients"]], JOB["rounds"],
                                JOB["local_epochs"], test, seed=JOB["seed"])
    finally:
        torch.set_num_threads(threads)
    net_state = result["final_state"]
    for k, v in model.state_dict().items():
        assert torch.allclose(v, net_state[k], atol=1e-5), k
    assert result["accuracy"] == pytest.approx(ref.accuracy, abs=0.01)


def test_server_rejects_an_unknown_client_and_bad_frames():
    port = _free_port()
    ready = threading.Event()
    box = {}

    def run():
        try:
            serve(JOB, "127.0.0.1", port, accept_timeout=20, test=object(), ready=ready)
        except Exception as exc:  # noqa: BLE001
            box["error"] = exc
    t = threading.Thread(target=run)
    t.start()
    ready.wait(10)
    with socket.create_connection(("127.0.0.1", port)) as s:
        Conn(s).send({"type": "hello", "client": "mallory", "n_samples": 5})
    t.join(30)
    assert isinstance(box.get("error"), ProtocolError) and "mallory" in str(box["error"])

    a, b = socket.socketpair()
    a.sendall(b"\x00\x00\x00\x05notjs")
    with pytest.raises(ProtocolError, match="bad header"):
        Conn(b).recv("hello")
    a.sendall(b"\xff\xff\xff\xff")
    with pytest.raises(ProtocolError, match="too large"):
        Conn(b).recv("hello")
    a.close()
    with pytest.raises(ProtocolError, match="closed"):
        Conn(b).recv("hello")
    b.close()


def test_client_gives_up_when_no_server_answers():
    with pytest.raises(OSError):
        run_client(JOB, "contributor1", f"127.0.0.1:{_free_port()}", data=[0], connect_timeout=1)

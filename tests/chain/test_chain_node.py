"""The embedded chain served over JSON-RPC (`python -m coopml.chain.node`) as a subprocess:
the JSON-RPC backend drives a lifecycle on it, a second OS process shares the same chain, and
the node is stopped by its PID."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import BOX_KEY, make_world
from coopml.chain import ETHER, Chain, ContractRevert, EventCursor, TaskClient, Vote
from coopml.chain.processes import start_embedded_node


@pytest.fixture(scope="module")
def node():
    proc = start_embedded_node()
    yield proc
    proc.stop()
    assert subprocess.run(["kill", "-0", str(proc.pid)], check=False, capture_output=True).returncode != 0  # gone


def test_lifecycle_and_reverts_over_the_embedded_node(node):
    chain = Chain.rpc(node.url)
    world = make_world(chain, n_contributors=2, n_verifiers=3)
    task_id = world.publish(n_verifiers=0, n_contributors=0)
    # five concurrent clients, each with its own connection and key, funded from the same dev
    # account at the same time: the node serialises the requests and assigns the nonces
    seeds = [f"node-join-{i}-{world.coop.address}" for i in range(5)]

    def join(i: int, as_verifier: bool) -> str:
        own = Chain.rpc(node.url)
        me = own.new_account(10 * ETHER, seed=seeds[i])
        client = TaskClient(own, world.coop.address, me)
        client.register_verifier(task_id, BOX_KEY) if as_verifier else client.register_contributor(task_id)
        return me
    with ThreadPoolExecutor(max_workers=5) as pool:
        verifiers = [f.result() for f in [pool.submit(join, i, True) for i in range(3)]]
        contributors = [f.result() for f in [pool.submit(join, i + 3, False) for i in range(2)]]
    assert sorted(world.coop.verifier_pool(task_id)) == sorted(verifiers)
    world.verifiers, world.contributors = verifiers, contributors
    for seed in seeds:  # let this test's own Chain sign for them too (same seed, same key)
        chain.new_account(seed=seed)
    model_id = world.announce(task_id, world.contributors[0])
    with pytest.raises(ContractRevert) as exc:
        world.as_(world.outsider).commit_vote(model_id, Vote.APPROVE, os.urandom(32))
    assert exc.value.name == "NotSelectedVerifier"
    world.vote(model_id, Vote.APPROVE)
    world.coop.finalize_model(model_id)
    world.as_(world.contributors[0]).deliver_key(model_id, b"sealed")
    world.settle_all(model_id)
    before = chain.now()
    chain.increase_time(3_601)  # evm_increaseTime + evm_mine over HTTP
    assert chain.now() >= before + 3_601
    world.coop.close_task(task_id)
    world.assert_solvent()


def test_a_second_process_shares_the_chain(node):
    chain = Chain.rpc(node.url)
    world = make_world(chain, n_contributors=1, n_verifiers=0)
    task_id = world.publish(n_verifiers=0)
    cursor = EventCursor(chain, world.coop.address, from_block=world.deploy_block, names={"VerifierRegistered"})
    # another agent process derives its own key from a seed, gets funded, and registers
    agent = textwrap.dedent(f"""
        from coopml.chain import Chain, TaskClient
        chain = Chain.rpc({node.url!r})
        me = chain.new_account({10 * ETHER}, seed="second-process-verifier")
        TaskClient(chain, {world.coop.address!r}, me).register_verifier({task_id}, bytes(range(1, 33)))
        print(me)
    """)
    out = subprocess.run([sys.executable, "-c", agent], check=False, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    address = out.stdout.strip().splitlines()[-1]
    events = cursor.poll()
    assert [(e.args["taskId"], e.args["verifier"]) for e in events] == [(task_id, address)]
    assert world.coop.verifier_pool(task_id) == [address]

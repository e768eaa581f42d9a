"""anvil sealing a block every second (as a real chain would), not auto-mining: transactions
wait in the mempool, several land in one block, and the event cursor follows along."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from coopml.chain import Chain, EventCursor, ModelStatus
from coopml.chain.processes import anvil_binary, start_anvil
from conftest import NO_ANVIL, SPEC, make_world

pytestmark = pytest.mark.anvil


@pytest.fixture(scope="module")
def timed_chain():
    if anvil_binary() is None:
        pytest.skip(NO_ANVIL)
    node = start_anvil(block_time=1)
    yield Chain.rpc(node.url)
    node.stop()


def parallel(fns):
    with ThreadPoolExecutor(max_workers=len(fns)) as pool:
        return [f.result() for f in [pool.submit(fn) for fn in fns]]


def test_lifecycle_with_one_second_blocks(timed_chain):
    chain = timed_chain
    world = make_world(chain, n_contributors=2, n_verifiers=3)
    cursor = EventCursor(chain, world.coop.address, from_block=world.deploy_block)
    task_id = world.as_(world.initiator).publish_task(
        SPEC, world.terms(commit_window=30, reveal_window=30))
    parallel([lambda a=a: world.as_(a).register_verifier(task_id) for a in world.verifiers]
             + [lambda a=a: world.as_(a).register_contributor(task_id) for a in world.contributors])
    blocks = {e.block_number for e in cursor.poll() if e.name.endswith("Registered")}
    assert len(blocks) < 5  # five registrations shared blocks

    m0, m1 = parallel([lambda c=c: world.announce(task_id, c) for c in world.contributors])
    salts = {}
    for m in (m0, m1):
        for v in world.coop.selected_verifiers(m):
            salts[(m, v)] = bytes([m]) * 32
    parallel([lambda k=k: world.as_(k[1]).commit_vote(k[0], k[0] == m0, salts[k]) for k in salts])
    parallel([lambda k=k: world.as_(k[1]).reveal_vote(k[0], k[0] == m0, salts[k]) for k in salts])
    assert parallel([lambda: world.coop.finalize_model(m0), lambda: world.coop.as_(world.outsider).finalize_model(m1)]) == [True, False]
    world.as_(world.contributors[0]).release_key(m0, world.keys[m0])
    assert world.coop.model(m0).status == ModelStatus.RELEASED
    assert world.coop.model(m1).status == ModelStatus.REJECTED
    names = [e.name for e in cursor.poll()]
    assert names.count("ModelFinalized") == 2 and names.count("KeyReleased") == 1
    world.assert_solvent()

"""anvil sealing a block every second (as a real chain would), not auto-mining: transactions
wait in the mempool, several land in one block, and the event cursor follows along."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import (
    BOX_KEY,
    DELIVERY_KEY,
    MANIFEST_CID,
    MANIFEST_HASH,
    NO_ANVIL,
    make_world,
)
from coopml.chain import Chain, EventCursor, ModelStatus, Vote
from coopml.chain.processes import anvil_binary, start_anvil

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
        MANIFEST_HASH, MANIFEST_CID, DELIVERY_KEY, world.terms(verify_window=30, reveal_window=30, dispute_window=2))
    parallel([lambda a=a: world.as_(a).register_verifier(task_id, BOX_KEY) for a in world.verifiers]
             + [lambda a=a: world.as_(a).register_contributor(task_id) for a in world.contributors])
    blocks = {e.block_number for e in cursor.poll() if e.name.endswith("Registered")}
    assert len(blocks) < 5  # five registrations shared blocks

    # announce in parallel; the draws wait for the block after each announcement (draw_ready)
    m0, m1 = parallel([lambda c=c: world.announce(task_id, c) for c in world.contributors])
    salts = {}
    for m in (m0, m1):
        for v in world.coop.selected_verifiers(m):
            salts[(m, v)] = bytes([m]) * 32
    def vote(k):
        return Vote.APPROVE if k[0] == m0 else Vote.REJECT
    parallel([lambda k=k: world.as_(k[1]).commit_vote(k[0], vote(k), salts[k]) for k in salts])
    parallel([lambda k=k: world.as_(k[1]).reveal_vote(k[0], vote(k), salts[k]) for k in salts])
    assert parallel([lambda: world.coop.finalize_model(m0), lambda: world.coop.as_(world.outsider).finalize_model(m1)]) \
        == [ModelStatus.APPROVED, ModelStatus.REJECTED]
    world.as_(world.contributors[0]).deliver_key(m0, b"sealed")
    while world.chain.now() <= world.coop.model(m0).dispute_deadline:
        time.sleep(0.5)
    world.coop.finalize_delivery(m0)
    assert world.coop.model(m0).status == ModelStatus.RELEASED
    assert world.coop.model(m1).status == ModelStatus.REJECTED
    names = [e.name for e in cursor.poll()]
    assert names.count("ModelFinalized") == 2 and names.count("KeyDelivered") == 1
    assert names.count("VerifiersDrawn") == 2
    world.assert_solvent()


def test_fund_many_sends_every_transfer_before_awaiting_any(timed_chain):
    """Setting up seven nodes cost seven blocks (seven seconds here) when each transfer was awaited."""
    from eth_account import Account

    chain = timed_chain
    targets = {Account.create().address: (i + 1) * 10**15 for i in range(5)}
    receipts = chain.fund_many(targets)
    assert {a: chain.balance(a) for a in targets} == targets
    assert len({r["blockNumber"] for r in receipts}) <= 2      # awaited one by one: five blocks

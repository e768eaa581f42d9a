"""The v2 verifier draw (P1): the contract's draw equals a Python reference computed from
blockhash(drawBlock) alone, and (property test on the reference) verifiers that leave after
seeing the block hash can never increase how many of their group are drawn."""

from __future__ import annotations

from eth_abi import encode
from eth_utils import keccak
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import BOX_KEY, wait_for_draw


def reference_draw(block_hash: bytes, model_id: int, envelope_hash: bytes, pool: list[str],
                   eligible: set[str], v: int) -> list[str] | None:
    """The contract's _draw: start at keccak(seed, i) mod n, probe linearly past ineligible or
    already chosen entries; None when fewer than v are eligible."""
    seed = keccak(encode(["bytes32", "uint256", "bytes32"], [block_hash, model_id, envelope_hash]))
    n = len(pool)
    chosen: list[str] = []
    for i in range(v):
        j = int.from_bytes(keccak(encode(["bytes32", "uint256"], [seed, i])), "big") % n
        for _ in range(n):
            if pool[j] in eligible and pool[j] not in chosen:
                break
            j = (j + 1) % n
        else:
            return None
        chosen.append(pool[j])
    return chosen


def test_contract_draw_equals_the_reference_from_the_block_hash(world):
    coop, chain = world.coop, world.chain
    task_id = world.publish(max_models=2)
    both = world.contributors[0]  # a contributor that is also a verifier is never drawn for itself
    coop.as_(both).register_verifier(task_id, BOX_KEY)
    coop.as_(world.verifiers[2]).leave_task(task_id)
    m = world.announce(task_id, both, draw=False)
    late = world.outsider  # joins after the announcement: outside the snapshot
    coop.as_(late).register_verifier(task_id, BOX_KEY)
    wait_for_draw(coop, m)
    drawn = coop.as_(late).draw_verifiers(m)
    model = coop.model(m)
    pool = coop.verifier_pool(task_id)[: model.pool_snapshot]
    eligible = set(pool) - {both, world.verifiers[2]}
    block_hash = bytes(chain.w3.eth.get_block(model.draw_block)["hash"])
    assert drawn == reference_draw(block_hash, m, model.envelope_hash, pool, eligible, 3)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(n=st.integers(3, 24), v=st.sampled_from([1, 3, 5]), data=st.data())
def test_leaving_after_the_hash_never_increases_a_groups_count(n, v, data):
    """Linear probing: removing one chosen entry replaces it by the next free eligible entry,
    and removing an unchosen one changes nothing; so colluders leaving can only lose seats."""
    pool = [f"v{i}" for i in range(n)]
    group = set(data.draw(st.sets(st.sampled_from(pool), max_size=n), label="colluders"))
    leavers = set(data.draw(st.sets(st.sampled_from(sorted(group)) if group else st.nothing(), max_size=len(group)),
                            label="leavers")) if group else set()
    block_hash = data.draw(st.binary(min_size=32, max_size=32), label="hash")
    before = reference_draw(block_hash, 7, b"\x01" * 32, pool, set(pool), v)
    after = reference_draw(block_hash, 7, b"\x01" * 32, pool, set(pool) - leavers, v)
    if v > n:
        return
    assert before is not None
    if after is None:  # fewer than v left: the model is cancelled and refunded, no re-roll
        assert n - len(leavers) < v
        return
    assert sum(x in group for x in after) <= sum(x in group for x in before)
    # and the honest verifiers drawn before are still drawn
    assert {x for x in before if x not in group} <= set(after)

"""Whole task lifecycles on both backends: payments, slashing rules, deadlines, spec round trip."""

from __future__ import annotations

from eth_utils import keccak

from coopml.chain import ModelStatus
from conftest import SPEC, make_world  # tests/chain/conftest.py (import at collection: the name 'conftest' is shared)


def test_spec_published_in_event_matches_stored_hash(world):
    task_id = world.publish(n_verifiers=0, n_contributors=0)
    assert world.coop.task_spec(task_id) == SPEC
    info = world.coop.task(task_id)
    assert info.spec_hash == SPEC.spec_hash()
    assert info.initiator == world.initiator
    assert info.locked == info.unallocated == world.terms().escrow


def test_approved_model_pays_contributor_on_key_release_and_verifiers_their_fee(world):
    coop = world.coop
    task_id = world.publish()
    c = world.contributors[0]
    model_id = world.announce(task_id, c)
    selected = coop.selected_verifiers(model_id)
    assert len(selected) == 3 and len(set(selected)) == 3 and c not in selected
    assert set(selected) <= set(world.verifiers)

    world.vote(model_id, True)
    assert coop.finalize_model(model_id) is True
    assert coop.model(model_id).status == ModelStatus.APPROVED
    assert coop.owed(c) == 0  # nothing before the key is released

    key = world.keys[model_id]
    contributor = coop.as_(c)
    contributor.release_key(model_id, key)
    released = contributor.events_in(contributor.last_receipt, "KeyReleased")
    assert len(released) == 1 and released[0]["accessKey"] == key
    terms = coop.task(task_id).terms
    assert coop.owed(c) == terms.reward_per_model + terms.contributor_deposit
    assert coop.model(model_id).status == ModelStatus.RELEASED

    world.settle_all(model_id)
    for v in selected:
        assert coop.owed(v) == terms.verifier_fee
    world.assert_solvent()

    before = world.chain.balance(c)
    amount = coop.as_(c).withdraw()
    assert amount == terms.reward_per_model + terms.contributor_deposit
    assert coop.owed(c) == 0
    assert world.chain.balance(c) > before  # gas < reward
    world.assert_solvent()


def test_rejected_model_slashes_contributor_deposit_and_returns_reward(world):
    coop = world.coop
    task_id = world.publish()
    model_id = world.announce(task_id, world.contributors[0])
    world.vote(model_id, False)
    assert coop.finalize_model(model_id) is False
    terms = coop.task(task_id).terms
    assert coop.model(model_id).status == ModelStatus.REJECTED
    assert coop.owed(world.initiator) == terms.reward_per_model + terms.contributor_deposit
    world.settle_all(model_id)
    for v in coop.selected_verifiers(model_id):
        assert coop.owed(v) == terms.verifier_fee  # honest "no" voters are paid
    world.assert_solvent()


def test_non_revealing_verifier_is_slashed_and_its_fee_returns(world):
    coop = world.coop
    task_id = world.publish()
    model_id = world.announce(task_id, world.contributors[0])
    sel = coop.selected_verifiers(model_id)
    world.vote(model_id, True, reveal=False)  # all commit; sel[2] will never reveal
    for v in sel[:2]:
        coop.as_(v).reveal_vote(model_id, True, world.salts[(model_id, v)])
    world.chain.increase_time(1_201)  # commit and reveal windows over
    assert coop.finalize_model(model_id) is True  # 2 of 3 yes is a majority of V
    terms = coop.task(task_id).terms
    world.settle_all(model_id)
    assert coop.owed(sel[0]) == coop.owed(sel[1]) == terms.verifier_fee
    assert coop.owed(sel[2]) == 0
    member = coop.member(task_id, sel[2])
    assert member.verifier_slashed and member.open_assignments == 0
    assert sel[2] not in coop.verifier_pool(task_id)  # never drawn again
    assert coop.owed(world.initiator) == terms.verifier_fee + terms.verifier_deposit
    world.assert_solvent()


def test_vote_against_clear_majority_is_slashed_narrow_minority_is_not(world):
    coop = world.coop
    task_id = world.publish(verifiers_per_model=5, max_models=2)
    terms = coop.task(task_id).terms
    # 4 yes / 1 no: 4/5 > 2/3 is a clear majority -> the "no" voter is slashed
    m1 = world.announce(task_id, world.contributors[0])
    s1 = coop.selected_verifiers(m1)
    world.vote(m1, {v: i != 0 for i, v in enumerate(s1)})
    assert coop.finalize_model(m1) is True
    world.settle_all(m1)
    assert coop.member(task_id, s1[0]).verifier_slashed
    assert coop.owed(s1[0]) == 0
    assert all(coop.owed(v) == terms.verifier_fee for v in s1[1:])
    # 3 yes / 2 no: 3/5 is not > 2/3 -> nobody slashed, all paid
    c2 = world.contributors[1]
    m2 = world.announce(task_id, c2)
    s2 = coop.selected_verifiers(m2)
    assert s1[0] not in s2  # the slashed verifier left the pool
    world.vote(m2, {v: i < 3 for i, v in enumerate(s2)})
    assert coop.finalize_model(m2) is True
    world.settle_all(m2)
    assert not any(coop.member(task_id, v).verifier_slashed for v in s2)
    world.assert_solvent()


def test_key_not_released_in_time_forfeits_reward_and_deposit(world):
    coop = world.coop
    task_id = world.publish()
    c = world.contributors[0]
    model_id = world.announce(task_id, c)
    world.vote(model_id, True)
    coop.finalize_model(model_id)
    world.chain.increase_time(601)
    coop.as_(world.outsider).expire_release(model_id)  # anyone may trigger it
    terms = coop.task(task_id).terms
    assert coop.model(model_id).status == ModelStatus.FORFEITED
    assert coop.owed(c) == 0
    assert coop.owed(world.initiator) == terms.reward_per_model + terms.contributor_deposit
    world.assert_solvent()


def test_deadline_closes_task_returns_unspent_escrow_and_deposits(world):
    coop = world.coop
    task_id = world.publish()
    c0, c1 = world.contributors[:2]
    model_id = world.announce(task_id, c0)
    world.vote(model_id, True)
    coop.finalize_model(model_id)
    coop.as_(c0).release_key(model_id, world.keys[model_id])
    world.settle_all(model_id)
    world.chain.increase_time(3_601)
    coop.as_(world.outsider).close_task(task_id)
    terms = coop.task(task_id).terms
    per_model = terms.reward_per_model + terms.verifiers_per_model * terms.verifier_fee
    assert coop.owed(world.initiator) == 2 * per_model  # 3 escrowed, 1 used
    coop.as_(c1).claim_deposits(task_id)  # registered, never announced
    assert coop.owed(c1) == terms.contributor_deposit
    for v in world.verifiers:
        coop.as_(v).claim_deposits(task_id)
    for a in [world.initiator, *world.contributors, *world.verifiers]:
        if coop.owed(a):
            coop.as_(a).withdraw()
    for a in world.contributors[2:]:
        coop.as_(a).claim_deposits(task_id)
        coop.as_(a).withdraw()
    assert coop.task(task_id).locked == 0
    assert coop.total_owed() == 0
    assert coop.contract_balance() == 0


def test_gas_per_action_does_not_grow_with_participants(chain):
    w = make_world(chain, n_contributors=6, n_verifiers=14)

    def run(n_verifiers: int) -> tuple[list[int], list[int]]:
        task_id = w.as_(w.initiator).publish_task(SPEC, w.terms(max_models=6))
        reg_gas, ann_gas = [], []
        for v in w.verifiers[:n_verifiers]:
            client = w.as_(v)
            client.register_verifier(task_id)
            reg_gas.append(client.last_gas)
        for c in w.contributors:
            client = w.as_(c)
            client.register_contributor(task_id)
            client.announce_model(task_id, "bafy-x", keccak(text=f"{task_id}{c}"), b"\x02" * 32)
            ann_gas.append(client.last_gas)
        return reg_gas, ann_gas

    reg_small, ann_small = run(4)
    reg_large, ann_large = run(14)
    # the first registration of a task creates the pool array; every later one costs the same
    assert len(set(reg_small[1:] + reg_large[1:])) == 1
    # announce draws V=3 from a pool of 4 or 14: probing varies a little, the pool size does not
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    assert abs(mean(ann_large) - mean(ann_small)) < 0.05 * mean(ann_small), (ann_small, ann_large)
    assert max(ann_small + ann_large) < 1.10 * min(ann_small + ann_large)

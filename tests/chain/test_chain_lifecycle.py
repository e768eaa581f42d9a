"""Whole v2 task lifecycles on both backends: draw from a later block, three-valued votes,
buyer-only delivery, payments, burns, exits, and a wind-down to exactly the burnt amount."""

from __future__ import annotations

import os

import pytest
from eth_utils import keccak

from conftest import (
    BOX_KEY,
    DELIVERY_KEY,
    MANIFEST_CID,
    MANIFEST_HASH,
    make_world,
    mine_blocks,
)
from coopml.chain import (
    PROTOCOL_VERSION,
    ContractRevert,
    ModelStatus,
    Vote,
)


def reverts(name: str):
    return pytest.raises(ContractRevert, match=rf"\b{name}\b")


def test_manifest_terms_and_version_round_trip(world):
    task_id = world.publish(n_verifiers=0, n_contributors=0)
    coop = world.coop
    info = coop.task(task_id)
    assert info.initiator == world.initiator
    assert info.manifest_hash == MANIFEST_HASH and info.delivery_key == DELIVERY_KEY
    assert coop.manifest_cid(task_id) == MANIFEST_CID
    assert info.terms == world.terms(announce_deadline=info.terms.announce_deadline)
    assert info.locked == info.unallocated == info.terms.escrow == coop.escrow_for(info.terms)
    assert coop.protocol_version() == PROTOCOL_VERSION == keccak(text="coopml/2")


def test_approved_model_is_delivered_to_the_buyer_and_paid_after_the_dispute_window(world):
    coop, chain = world.coop, world.chain
    task_id = world.publish()
    c = world.contributors[0]
    model_id = world.announce(task_id, c, draw=False)
    model = coop.model(model_id)
    assert model.status == ModelStatus.AWAITING_DRAW and coop.selected_verifiers(model_id) == []
    assert model.draw_block == chain.block_number() + 1  # the block after the announcement
    assert model.pool_snapshot == len(world.verifiers)
    drawn = world.draw(model_id, by=world.verifiers[0])  # anyone may draw
    assert drawn == coop.selected_verifiers(model_id)
    assert len(drawn) == 3 == len(set(drawn)) and c not in drawn and set(drawn) <= set(world.verifiers)
    assert coop.model(model_id).status == ModelStatus.VERIFYING

    world.vote(model_id, Vote.APPROVE)
    assert coop.finalize_model(model_id) == ModelStatus.APPROVED
    assert coop.owed(c) == 0  # nothing before delivery
    sealed = b"sealed-box:" + os.urandom(48)
    contributor = coop.as_(c)
    contributor.deliver_key(model_id, sealed)
    ev = contributor.events_in(contributor.last_receipt, "KeyDelivered")
    assert ev[0]["sealedKey"] == sealed
    model = coop.model(model_id)
    assert model.status == ModelStatus.DELIVERED and model.sealed_key_hash == keccak(sealed)
    with reverts("DisputeWindowNotOver"):
        coop.finalize_delivery(model_id)
    chain.increase_time(601)
    coop.as_(world.outsider).finalize_delivery(model_id)  # anyone (P4)
    terms = coop.task(task_id).terms
    assert coop.model(model_id).status == ModelStatus.RELEASED
    assert coop.owed(c) == terms.reward_per_model + terms.contributor_deposit
    assert coop.task(task_id).models_bought == 1

    world.settle_all(model_id)
    for v in drawn:
        assert coop.owed(v) == terms.verifier_fee
    world.assert_solvent()
    before = chain.balance(c)
    assert coop.as_(c).withdraw() == terms.reward_per_model + terms.contributor_deposit
    assert coop.owed(c) == 0 and chain.balance(c) > before
    world.assert_solvent()


def test_three_valued_votes_decide_by_majority_of_v(world):
    coop = world.coop
    task_id = world.publish(verifiers_per_model=3, max_models=3)
    terms = coop.task(task_id).terms
    # 2 reject + 1 abstain: rejected, deposit burnt (not credited to anyone)
    m1 = world.announce(task_id, world.contributors[0])
    s1 = coop.selected_verifiers(m1)
    world.vote(m1, {s1[0]: Vote.REJECT, s1[1]: Vote.REJECT, s1[2]: Vote.ABSTAIN})
    burnt = coop.total_burnt()
    assert coop.finalize_model(m1) == ModelStatus.REJECTED
    assert coop.total_burnt() == burnt + terms.contributor_deposit
    m = coop.model(m1)
    assert (m.approve, m.reject, m.abstain, m.reveals) == (0, 2, 1, 3)
    # 1 approve + 1 reject + 1 abstain: no majority, deposit refunded
    c2 = world.contributors[1]
    m2 = world.announce(task_id, c2)
    s2 = coop.selected_verifiers(m2)
    world.vote(m2, {s2[0]: Vote.APPROVE, s2[1]: Vote.REJECT, s2[2]: Vote.ABSTAIN})
    assert coop.finalize_model(m2) == ModelStatus.INCONCLUSIVE
    assert coop.owed(c2) == terms.contributor_deposit
    for m_id in (m1, m2):
        world.settle_all(m_id)  # every revealed vote is paid, whatever its value
    for v in set(s1) | set(s2):
        assert coop.owed(v) == terms.verifier_fee * ((v in s1) + (v in s2))
    # both slots are free again; the rewards went back to the unallocated escrow
    info = coop.task(task_id)
    assert info.models_active == 0
    assert info.unallocated == terms.escrow - 2 * terms.verifiers_per_model * terms.verifier_fee
    world.assert_solvent()


def test_non_revealing_verifier_loses_fee_and_deposit_to_the_burn_and_is_never_drawn_again(world):
    coop, chain = world.coop, world.chain
    task_id = world.publish(max_models=4)
    model_id = world.announce(task_id, world.contributors[0])
    sel = coop.selected_verifiers(model_id)
    world.vote(model_id, Vote.APPROVE, reveal=False)
    for v in sel[:2]:
        coop.as_(v).reveal_vote(model_id, Vote.APPROVE, world.salts[(model_id, v)])
    chain.increase_time(1_201)
    assert coop.finalize_model(model_id) == ModelStatus.APPROVED  # 2 of 3 approve
    terms = coop.task(task_id).terms
    burnt = coop.total_burnt()
    initiator_owed = coop.owed(world.initiator)
    assert coop.as_(world.outsider).settle_vote(model_id, sel[2]) == 0
    assert coop.total_burnt() == burnt + terms.verifier_fee + terms.verifier_deposit
    assert coop.owed(world.initiator) == initiator_owed  # nothing to the initiator (P3)
    member = coop.member(task_id, sel[2])
    assert member.slashed and member.open_assignments == 0 and member.slashed_block > 0
    assert coop.task(task_id).active_verifiers == len(world.verifiers) - 1
    with reverts("NothingToRefund"):
        coop.as_(sel[2]).leave_task(task_id)
    for c in world.contributors[1:4]:
        m = world.announce(task_id, c)
        assert sel[2] not in coop.selected_verifiers(m)
    world.assert_solvent()


def test_wind_down_leaves_exactly_the_burnt_amount(world):
    coop, chain = world.coop, world.chain
    task_id = world.publish()
    c0, c1, c2 = world.contributors[:3]
    m0 = world.approve(task_id, c0)
    coop.as_(c0).deliver_key(m0, b"sealed")
    m1 = world.announce(task_id, c1)
    world.vote(m1, Vote.REJECT)
    assert coop.finalize_model(m1) == ModelStatus.REJECTED
    chain.increase_time(3_601)
    returned = coop.as_(world.outsider).close_task(task_id)  # anyone after the announce deadline
    terms = coop.task(task_id).terms
    # one model slot never used, one used by the rejected model (its fees were spent)
    assert returned == terms.reserve + terms.reward_per_model
    with reverts("TaskClosed"):
        world.announce(task_id, c2)
    coop.finalize_delivery(m0)
    for m in (m0, m1):
        world.settle_all(m)
    for a in [c2, world.contributors[3], *world.verifiers]:
        coop.as_(a).leave_task(task_id)
    for a in world.accounts():
        if coop.owed(a):
            coop.as_(a).withdraw()
    assert coop.task(task_id).locked == 0 and coop.total_owed() == 0
    assert coop.contract_balance() == coop.total_burnt() == terms.contributor_deposit


def test_gas_per_action_does_not_grow_with_participants(chain):
    w = make_world(chain, n_contributors=6, n_verifiers=14)

    def run(n_verifiers: int) -> tuple[list[int], list[int], list[int]]:
        task_id = w.as_(w.initiator).publish_task(MANIFEST_HASH, MANIFEST_CID, DELIVERY_KEY, w.terms(max_models=6))
        reg_gas, ann_gas, draw_gas = [], [], []
        for v in w.verifiers[:n_verifiers]:
            client = w.as_(v)
            client.register_verifier(task_id, BOX_KEY)
            reg_gas.append(client.last_gas)
        for c in w.contributors:
            client = w.as_(c)
            client.register_contributor(task_id)
            model_id = client.announce_model(task_id, keccak(text=f"{task_id}{c}"), b"\x02" * 32, "bafy-x")
            ann_gas.append(client.last_gas)
            mine_blocks(chain, 2)
            drawer = w.as_(w.outsider)
            drawer.draw_verifiers(model_id)
            draw_gas.append(drawer.last_gas)
        return reg_gas, ann_gas, draw_gas

    reg_small, ann_small, draw_small = run(4)
    reg_large, ann_large, draw_large = run(14)
    # the first registration of a task creates the pool array; later ones differ only by the
    # calldata cost of the pool index in the event
    later = reg_small[1:] + reg_large[1:]
    assert max(later) - min(later) < 100
    # announce reads no randomness and loops over nothing: the same whatever the pool (up to
    # the calldata cost of zero bytes in the hashes). The deployment's first model creates the
    # model counter; the task's last one empties `unallocated` (a storage refund).
    middle = ann_small[1:-1] + ann_large[:-1]
    assert max(middle) - min(middle) < 200
    assert abs(ann_small[-1] - ann_large[-1]) < 200
    # the draw of V=3 probes past taken slots: it varies a little, not with the pool size
    mean = lambda xs: sum(xs) / len(xs)
    assert abs(mean(draw_large) - mean(draw_small)) < 0.05 * mean(draw_small), (draw_small, draw_large)

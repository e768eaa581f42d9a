"""Attacks by hostile participants, on both backends. Where an attack worked on v1 (the
CoopMLv1 fixture), the test first shows it succeeding there, then failing on v2. Every refusal
surfaces as ContractRevert carrying the Solidity custom error name and arguments."""

from __future__ import annotations

import os

import pytest
from eth_utils import keccak
from v1driver import V1, V1_FORFEITED, V1_REJECTED

from conftest import (
    BOX_KEY,
    DELIVERY_KEY,
    MANIFEST_CID,
    MANIFEST_HASH,
    mine_blocks,
    wait_for_draw,
)
from coopml.chain import (
    ContractRevert,
    ModelStatus,
    Vote,
    key_commitment,
    load_artifact,
)
from coopml.chain.backends import ErrorDecoder

DAY = 86_400


def reverts(name: str):
    return pytest.raises(ContractRevert, match=rf"\b{name}\b")


def decoder(*names: str) -> ErrorDecoder:
    return ErrorDecoder([item for n in names for item in load_artifact(n)["abi"]])


# ---------------------------------------------------------------- (a) grinding the draw (P1)

def test_a_grinding_contract_captures_the_v1_draw_within_a_few_blocks(world):
    """v1 drew inside announceModel: a contract contributor announces, reads the draw and
    reverts until its sybils hold a majority; retrying in the next block is free."""
    chain = world.chain
    v1 = V1.deploy(chain, chain.dev_accounts()[0])
    terms = V1.terms(chain.now())
    task_id = v1.publish(world.initiator, terms)
    sybils, honest = world.verifiers[:3], world.verifiers[3:6]
    for v in sybils + honest:
        v1.register_verifier(task_id, v, terms[3])
    grinder, _ = chain.deploy_contract("Grinder", world.outsider, v1.address, sybils, 2)
    chain.transact(grinder.functions.join(task_id), world.outsider, value=terms[2])
    errors = decoder("Grinder", "CoopMLv1")
    tries = 0
    while True:
        tries += 1
        try:
            chain.transact(grinder.functions.grindV1(task_id, os.urandom(32), keccak(b"k")), world.outsider,
                           decoder=errors, extra_gas=200_000)
            break
        except ContractRevert as exc:
            assert exc.name in ("NotCaptured", "Unknown", "OutOfGas"), exc
            assert tries < 40, "v1 grinding should succeed within a few blocks"
            chain.mine()  # next block, new seed
    drawn = v1.selected(1)
    assert sum(v in sybils for v in drawn) >= 2, "the grinder chose its own majority"
    print(f"v1 draw captured after {tries} tries")


def test_a_grinding_contract_cannot_read_or_retry_the_v2_draw(world):
    chain, coop = world.chain, world.coop
    task_id = world.publish(n_contributors=0)
    sybils = world.verifiers[:3]
    grinder, _ = chain.deploy_contract("Grinder", world.outsider, coop.address, sybils, 2)
    deposit = coop.task(task_id).terms.contributor_deposit
    chain.transact(grinder.functions.join(task_id), world.outsider, value=deposit)
    errors = decoder("Grinder", "CoopML")
    # the draw needs the hash of a later block: in the announcing transaction it is not ready
    with reverts("DrawNotReady"):
        chain.transact(grinder.functions.grindV2(task_id, os.urandom(32), keccak(b"k")), world.outsider,
                       decoder=errors)
    assert coop.model_count() == 0  # the whole transaction reverted
    # announcing plainly, then drawing-or-reverting in later blocks: the outcome is fixed by
    # blockhash(drawBlock), identical whatever the block it is simulated in
    chain.transact(grinder.functions.announceV2(task_id, os.urandom(32), keccak(b"k")), world.outsider,
                   decoder=errors)
    model_id = coop.model_count()
    wait_for_draw(coop, model_id)
    outcomes = []
    for _ in range(3):
        try:
            chain.call(grinder.functions.drawOrRevert(model_id), errors)
            outcomes.append("captured")
        except ContractRevert as exc:
            assert exc.name == "NotCaptured", exc
            outcomes.append(exc.args_decoded)
        chain.mine()
    assert len(set(outcomes)) == 1, outcomes
    drawn = world.as_(world.outsider).draw_verifiers(model_id)
    sybils_drawn = sum(v in sybils for v in drawn)
    assert outcomes[0] == ("captured" if sybils_drawn >= 2 else (sybils_drawn, 2))
    with reverts("AlreadyAnnounced"):  # no second ticket
        chain.transact(grinder.functions.announceV2(task_id, os.urandom(32), keccak(b"k")), world.outsider,
                       decoder=errors)


# ---------------------------------------------------------------- (b) late registrants (P1)

def test_b_verifiers_registering_after_the_announcement_are_never_drawn(world):
    coop = world.coop
    early, late = world.verifiers[:3], world.verifiers[3:]
    task_id = world.publish(n_verifiers=3, max_models=4)
    models = [world.announce(task_id, c, draw=False) for c in world.contributors[:3]]
    for v in late:  # they join after seeing the announcements, before the draw block is sealed
        coop.as_(v).register_verifier(task_id, BOX_KEY)
    for m in models:
        assert coop.model(m).pool_snapshot == 3
        assert sorted(world.draw(m)) == sorted(early)
    # a model announced now can draw from all six
    later = world.announce(task_id, world.contributors[3])
    assert coop.model(later).pool_snapshot == len(world.verifiers)
    world.assert_solvent()


# ---------------------------------------------------------------- (c) expired / impossible draw

def test_c_draw_expired_after_256_blocks_cancels_refunds_and_allows_no_reannouncement(world):
    coop, chain = world.coop, world.chain
    task_id = world.publish()
    c = world.contributors[0]
    terms = coop.task(task_id).terms
    model_id = world.announce(task_id, c, draw=False)
    assert coop.task(task_id).unallocated == terms.escrow - terms.reserve
    mine_blocks(chain, 258)  # blockhash(drawBlock) is gone
    drawer = coop.as_(world.outsider)
    assert drawer.draw_verifiers(model_id) == []
    assert drawer.events_in(drawer.last_receipt, "DrawExpired")[0]["modelId"] == model_id
    assert coop.model(model_id).status == ModelStatus.CANCELLED
    assert coop.owed(c) == terms.contributor_deposit
    info = coop.task(task_id)
    assert info.unallocated == terms.escrow and info.models_active == 0
    with reverts("AlreadyAnnounced"):  # withholding the draw never buys a re-roll
        world.announce(task_id, c)
    with reverts("NotSelectedVerifier"):
        coop.settle_vote(model_id, world.verifiers[0])
    world.assert_solvent()


def test_c_draw_impossible_when_the_snapshot_lost_its_verifiers(world):
    coop = world.coop
    task_id = world.publish(n_verifiers=3)
    c = world.contributors[0]
    model_id = world.announce(task_id, c, draw=False)
    coop.as_(world.verifiers[0]).leave_task(task_id)  # idle: it may leave at any time
    coop.as_(world.verifiers[3]).register_verifier(task_id, BOX_KEY)  # too late for this model
    wait_for_draw(coop, model_id)
    drawer = coop.as_(world.outsider)
    assert drawer.draw_verifiers(model_id) == []
    assert drawer.events_in(drawer.last_receipt, "DrawImpossible")
    assert coop.model(model_id).status == ModelStatus.CANCELLED
    assert coop.owed(c) == coop.task(task_id).terms.contributor_deposit
    world.assert_solvent()


# ---------------------------------------------------------------- (d) the initiator never profits (P3)

def test_d_v1_credited_slashed_and_forfeited_wei_to_the_initiator(world):
    chain = world.chain
    v1 = V1.deploy(chain, chain.dev_accounts()[0])
    terms = V1.terms(chain.now())
    reward, fee, c_dep, v_dep = terms[:4]
    task_id = v1.publish(world.initiator, terms)
    for v in world.verifiers[:3]:
        v1.register_verifier(task_id, v, v_dep)
    c0, c1 = world.contributors[:2]
    for c in (c0, c1):
        v1.register_contributor(task_id, c, c_dep)
    m0 = v1.announce(task_id, c0, b"k0")
    v1.vote(m0, dict.fromkeys(v1.selected(m0), False))
    assert v1.finalize(m0, world.outsider) == V1_REJECTED
    assert v1.owed(world.initiator) == reward + c_dep  # the rejected contributor's deposit
    m1 = v1.announce(task_id, c1, b"k1")
    sel = v1.selected(m1)
    v1.vote(m1, dict.fromkeys(sel, True), reveal=set(sel[:2]))
    chain.increase_time(1_201)
    v1.finalize(m1, world.outsider)
    v1.tx(world.outsider, "settleVote", m1, sel[2])  # silent verifier: fee + deposit to the initiator
    chain.increase_time(601)
    v1.tx(world.outsider, "expireRelease", m1)
    assert v1.status(m1) == V1_FORFEITED
    assert v1.owed(world.initiator) == 2 * reward + 2 * c_dep + fee + v_dep


def test_d_v2_burns_every_slashed_and_forfeited_wei_and_the_initiator_gets_only_its_own_back(world):
    coop, chain = world.coop, world.chain
    task_id = world.publish(max_models=4, n_contributors=4)
    terms = coop.task(task_id).terms
    c0, c1, c2, c3 = world.contributors
    rejected = world.announce(task_id, c0)
    forfeited = world.announce(task_id, c1)
    refunded = world.announce(task_id, c2)
    silent = world.announce(task_id, c3)
    # the initiator closes at once: from now on every return is credited to it directly
    returned = coop.as_(world.initiator).close_task(task_id)
    assert returned == 0  # all four slots were reserved
    world.vote(rejected, Vote.REJECT)
    assert coop.finalize_model(rejected) == ModelStatus.REJECTED
    for m in (forfeited, refunded):
        world.vote(m, Vote.APPROVE)
        assert coop.finalize_model(m) == ModelStatus.APPROVED
    coop.as_(c2).deliver_key(refunded, b"garbage")
    coop.as_(world.initiator).dispute_delivery(refunded)
    sel = coop.selected_verifiers(silent)
    world.vote(silent, {sel[0]: Vote.APPROVE, sel[1]: Vote.APPROVE}, reveal=False)  # sel[2] never votes
    chain.increase_time(601)
    for v in sel[:2]:
        coop.as_(v).reveal_vote(silent, Vote.APPROVE, world.salts[(silent, v)])
    chain.increase_time(600)
    assert coop.finalize_model(silent) == ModelStatus.APPROVED
    coop.as_(c3).deliver_key(silent, b"sealed")
    chain.increase_time(601)
    coop.expire_delivery(forfeited)
    assert coop.resolve_dispute(refunded) == ModelStatus.REFUNDED
    coop.finalize_delivery(silent)
    for m in (rejected, forfeited, refunded, silent):
        world.settle_all(m)
    # the initiator: three rewards back and its bond back, nothing else
    assert coop.owed(world.initiator) == 3 * terms.reward_per_model + terms.contributor_deposit
    # burnt: three contributor deposits, the silent verifier's fee and deposit
    assert coop.total_burnt() == 3 * terms.contributor_deposit + terms.verifier_fee + terms.verifier_deposit
    assert coop.member(task_id, sel[2]).slashed
    for m, status in ((rejected, ModelStatus.REJECTED), (forfeited, ModelStatus.FORFEITED),
                      (refunded, ModelStatus.REFUNDED), (silent, ModelStatus.RELEASED)):
        assert coop.model(m).status == status
    world.assert_solvent()


# ---------------------------------------------------------------- (e) no revealed majority

def test_e_no_revealed_majority_slashed_the_contributor_on_v1(world):
    chain = world.chain
    v1 = V1.deploy(chain, chain.dev_accounts()[0])
    terms = V1.terms(chain.now())
    task_id = v1.publish(world.initiator, terms)
    for v in world.verifiers[:3]:
        v1.register_verifier(task_id, v, terms[3])
    c = world.contributors[0]
    v1.register_contributor(task_id, c, terms[2])
    m = v1.announce(task_id, c, b"k")
    sel = v1.selected(m)
    v1.vote(m, {sel[0]: True, sel[1]: False, sel[2]: True}, reveal={sel[0], sel[1]})  # 1-1, one silent
    chain.increase_time(1_201)
    assert v1.finalize(m, world.outsider) == V1_REJECTED
    assert v1.owed(world.initiator) == terms[0] + terms[2]  # reward + the contributor's deposit


def test_e_no_revealed_majority_is_inconclusive_and_refunds_the_contributor(world):
    coop, chain = world.coop, world.chain
    task_id = world.publish()
    c = world.contributors[0]
    m = world.announce(task_id, c)
    sel = coop.selected_verifiers(m)
    world.vote(m, {sel[0]: Vote.APPROVE, sel[1]: Vote.REJECT, sel[2]: Vote.APPROVE}, reveal=False)
    for v, vote in ((sel[0], Vote.APPROVE), (sel[1], Vote.REJECT)):
        coop.as_(v).reveal_vote(m, vote, world.salts[(m, v)])
    chain.increase_time(1_201)
    assert coop.finalize_model(m) == ModelStatus.INCONCLUSIVE
    terms = coop.task(task_id).terms
    assert coop.owed(c) == terms.contributor_deposit
    assert coop.owed(world.initiator) == 0
    world.assert_solvent()


# ---------------------------------------------------------------- (f) dissent is not slashed

def test_f_v1_slashed_a_verifier_who_voted_against_a_clear_majority(world):
    chain = world.chain
    v1 = V1.deploy(chain, chain.dev_accounts()[0])
    terms = V1.terms(chain.now(), v=5)
    task_id = v1.publish(world.initiator, terms)
    for v in world.verifiers[:6]:
        v1.register_verifier(task_id, v, terms[3])
    c = world.contributors[0]
    v1.register_contributor(task_id, c, terms[2])
    m = v1.announce(task_id, c, b"k")
    sel = v1.selected(m)
    v1.vote(m, {v: i != 0 for i, v in enumerate(sel)})
    v1.finalize(m, world.outsider)
    v1.settle_all(m, world.outsider)
    assert v1.owed(sel[0]) == 0
    member = v1.view("getMember", task_id, sel[0])
    assert (member["verifierSlashed"] if isinstance(member, dict) else member[3]) is True


def test_f_v2_pays_a_verifier_who_revealed_reject_against_an_approve_majority(world):
    coop = world.coop
    task_id = world.publish(verifiers_per_model=5, n_verifiers=6)
    m = world.announce(task_id, world.contributors[0])
    sel = coop.selected_verifiers(m)
    world.vote(m, {v: Vote.REJECT if i == 0 else Vote.APPROVE for i, v in enumerate(sel)})
    assert coop.finalize_model(m) == ModelStatus.APPROVED
    world.settle_all(m)
    terms = coop.task(task_id).terms
    assert coop.owed(sel[0]) == terms.verifier_fee
    assert not coop.member(task_id, sel[0]).slashed
    assert coop.total_burnt() == 0
    world.assert_solvent()


# ---------------------------------------------------------------- (g) exits and bounds (P5)

def test_g_v1_had_no_exit_before_close_and_no_bounds(world):
    chain = world.chain
    v1 = V1.deploy(chain, chain.dev_accounts()[0])
    ten_years = chain.now() + 3650 * DAY
    terms = V1.terms(chain.now(), announce_deadline=ten_years)
    task_id = v1.publish(world.initiator, terms)  # accepted: deposits tied up for ten years
    v1.register_verifier(task_id, world.verifiers[0], terms[3])
    with reverts("TaskStillOpen"):
        v1.tx(world.verifiers[0], "claimDeposits", task_id)


def test_g_leave_task_refunds_what_is_not_at_stake_while_open_and_after_close(world):
    coop = world.coop
    task_id = world.publish(n_contributors=3)
    terms = coop.task(task_id).terms
    c0, c1, c2 = world.contributors[:3]
    v_idle = world.verifiers[0]
    both = world.contributors[3]  # contributor and verifier at once
    coop.as_(both).register_contributor(task_id)
    coop.as_(both).register_verifier(task_id, BOX_KEY)
    # open task: a registered contributor that announced nothing, an idle verifier, both roles
    assert coop.as_(c0).leave_task(task_id) == terms.contributor_deposit
    assert coop.as_(v_idle).leave_task(task_id) == terms.verifier_deposit
    assert coop.as_(both).leave_task(task_id) == terms.contributor_deposit + terms.verifier_deposit
    assert coop.task(task_id).active_verifiers == len(world.verifiers) - 1
    with reverts("NothingToRefund"):
        coop.as_(c0).leave_task(task_id)
    with reverts("AlreadyRegistered"):  # a role left cannot be taken again
        coop.as_(c0).register_contributor(task_id)
    with reverts("NotRegisteredContributor"):
        world.announce(task_id, c0)
    with reverts("NothingToRefund"):
        coop.as_(world.outsider).leave_task(task_id)
    # an announced contributor's deposit follows its model; a drawn verifier waits for settlement
    m = world.announce(task_id, c1)
    with reverts("NothingToRefund"):
        coop.as_(c1).leave_task(task_id)
    drawn = coop.selected_verifiers(m)
    assert v_idle not in drawn
    with reverts("NothingToRefund"):
        coop.as_(drawn[0]).leave_task(task_id)
    world.vote(m, Vote.APPROVE)
    coop.finalize_model(m)
    coop.settle_vote(m, drawn[0])
    # after close, the rest leave the same way
    coop.as_(world.initiator).close_task(task_id)
    assert coop.as_(drawn[0]).leave_task(task_id) == terms.verifier_deposit
    assert coop.as_(c2).leave_task(task_id) == terms.contributor_deposit
    world.assert_solvent()


BOUNDS = [
    ("announce_deadline", 90 * DAY + 60, "announce period over 90 days"),
    ("announce_deadline", 0, "announceDeadline not in the future"),
    ("verify_window", 30 * DAY + 1, "verifyWindow"),
    ("reveal_window", 0, "revealWindow"),
    ("delivery_window", 30 * DAY + 1, "deliveryWindow"),
    ("dispute_window", 31 * DAY, "disputeWindow"),
    ("verifiers_per_model", 4, "verifiersPerModel"),
    ("verifiers_per_model", 101, "verifiersPerModel"),
    ("max_models", 0, "maxModels"),
    ("max_models", 10_001, "maxModels"),
    ("contributor_deposit", 0, "contributorDeposit is zero"),
    ("verifier_deposit", 0, "verifierDeposit is zero"),
]


def test_g_terms_over_the_bounds_are_invalid(world):
    initiator = world.as_(world.initiator)
    for field, value, reason in BOUNDS:
        if field == "announce_deadline":
            value = world.chain.now() + value if value else world.chain.now() - 1
        with pytest.raises(ContractRevert, match="InvalidTerms") as exc:  # terms are checked before the escrow
            initiator.publish_task(MANIFEST_HASH, MANIFEST_CID, DELIVERY_KEY, world.terms(**{field: value}), value=0)
        assert reason in exc.value.args_decoded[0], (field, value)
    with pytest.raises(ContractRevert, match="InvalidTerms"):
        initiator.publish_task(MANIFEST_HASH, MANIFEST_CID, bytes(32), world.terms(), value=0)
    # the bounds themselves are accepted
    edge = world.terms(announce_deadline=world.chain.now() + 90 * DAY - 60, verify_window=30 * DAY,
                       reveal_window=1, delivery_window=30 * DAY, dispute_window=1, verifiers_per_model=99,
                       max_models=1)
    assert initiator.publish_task(MANIFEST_HASH, MANIFEST_CID, DELIVERY_KEY, edge) == 1


# ---------------------------------------------------------------- (h) disputes (P2)

def _delivered(world, task_id: int, contributor: str, sealed: bytes = b"sealed") -> int:
    m = world.approve(task_id, contributor)
    world.coop.as_(contributor).deliver_key(m, sealed)
    return m


def test_h_dispute_a_answered_with_the_key_pays_the_contributor_and_burns_the_bond(world):
    coop = world.coop
    task_id = world.publish()
    c = world.contributors[0]
    m = _delivered(world, task_id, c, sealed=b"garbage, not K")
    terms = coop.task(task_id).terms
    initiator = coop.as_(world.initiator)
    with reverts("NotInitiator"):
        coop.as_(world.outsider).dispute_delivery(m, bond=terms.contributor_deposit)
    with pytest.raises(ContractRevert, match="IncorrectBond") as exc:
        initiator.dispute_delivery(m, bond=terms.contributor_deposit - 1)
    assert exc.value.args_decoded == (terms.contributor_deposit, terms.contributor_deposit - 1)
    initiator.dispute_delivery(m)
    assert coop.model(m).status == ModelStatus.DELIVERY_DISPUTED
    with reverts("KeyMismatch"):
        coop.as_(c).answer_dispute(m, os.urandom(32))
    with reverts("NotContributor"):
        coop.as_(world.outsider).answer_dispute(m, world.keys[m])
    with reverts("DisputeWindowNotOver"):
        coop.resolve_dispute(m)
    contributor = coop.as_(c)
    contributor.answer_dispute(m, world.keys[m])
    revealed = contributor.events_in(contributor.last_receipt, "KeyRevealed")
    assert revealed[0]["key"] == world.keys[m]  # the buyer has the committed key now
    assert coop.model(m).status == ModelStatus.RELEASED
    assert coop.owed(c) == terms.reward_per_model + terms.contributor_deposit
    assert coop.total_burnt() == terms.contributor_deposit  # the bond: nobody profits from it
    assert coop.owed(world.initiator) == 0
    world.assert_solvent()


def test_h_dispute_a_unanswered_refunds_the_initiator_and_returns_its_bond(world):
    coop, chain = world.coop, world.chain
    task_id = world.publish()
    c = world.contributors[0]
    m = _delivered(world, task_id, c)
    terms = coop.task(task_id).terms
    coop.as_(world.initiator).dispute_delivery(m)
    chain.increase_time(601)
    with reverts("DisputeWindowOver"):
        coop.as_(c).answer_dispute(m, world.keys[m])
    assert coop.as_(world.outsider).resolve_dispute(m) == ModelStatus.REFUNDED
    assert coop.owed(world.initiator) == terms.contributor_deposit  # its bond, back
    assert coop.owed(c) == 0
    assert coop.total_burnt() == terms.contributor_deposit  # the contributor's deposit
    info = coop.task(task_id)
    assert info.models_active == 0 and info.models_bought == 0
    world.assert_solvent()


def test_h_dispute_b_upheld_by_the_verifier_majority_refunds(world):
    coop = world.coop
    task_id = world.publish()
    c = world.contributors[0]
    m = _delivered(world, task_id, c)
    terms = coop.task(task_id).terms
    initiator = coop.as_(world.initiator)
    with reverts("KeyMismatch"):
        initiator.dispute_model(m, os.urandom(32))
    initiator.dispute_model(m, world.keys[m])
    assert initiator.events_in(initiator.last_receipt, "KeyRevealed")[0]["key"] == world.keys[m]
    assert initiator.events_in(initiator.last_receipt, "ModelDisputed")
    sel = coop.selected_verifiers(m)
    outsider_verifier = next(v for v in world.verifiers if v not in sel)
    with reverts("NotSelectedVerifier"):
        coop.as_(outsider_verifier).vote_dispute(m, True)
    coop.as_(sel[0]).vote_dispute(m, True)
    with reverts("AlreadyVoted"):
        coop.as_(sel[0]).vote_dispute(m, True)
    with reverts("DisputeWindowNotOver"):
        coop.resolve_model_dispute(m)
    coop.as_(sel[1]).vote_dispute(m, True)
    coop.as_(sel[2]).vote_dispute(m, False)
    assert coop.resolve_model_dispute(m) == ModelStatus.REFUNDED  # all voted: no need to wait
    assert coop.owed(world.initiator) == terms.contributor_deposit
    assert coop.total_burnt() == terms.contributor_deposit
    world.assert_solvent()


def test_h_dispute_b_rejected_pays_the_contributor_reward_deposit_and_bond(world):
    coop, chain = world.coop, world.chain
    task_id = world.publish()
    c = world.contributors[0]
    m = _delivered(world, task_id, c)
    terms = coop.task(task_id).terms
    coop.as_(world.initiator).dispute_model(m, world.keys[m])
    sel = coop.selected_verifiers(m)
    coop.as_(sel[0]).vote_dispute(m, True)  # one mismatch vote of three; the others stay silent
    chain.increase_time(601)
    with reverts("DisputeWindowOver"):
        coop.as_(sel[1]).vote_dispute(m, True)
    assert coop.as_(world.outsider).resolve_model_dispute(m) == ModelStatus.RELEASED
    assert coop.owed(c) == terms.reward_per_model + 2 * terms.contributor_deposit
    assert coop.total_burnt() == 0 and coop.owed(world.initiator) == 0
    world.assert_solvent()


def test_h_v1_paid_on_key_release_with_no_recourse_for_the_buyer(world):
    """v1 credited the reward when the key matched its commitment; nothing tied the key to the
    envelope the verifiers saw (AES-GCM is not key-committing) and the buyer had no dispute."""
    names = {i["name"] for i in load_artifact("CoopMLv1")["abi"] if i["type"] == "function"}
    assert "releaseKey" in names and not {"disputeDelivery", "disputeModel"} & names
    names2 = {i["name"] for i in load_artifact("CoopML")["abi"] if i["type"] == "function"}
    assert {"disputeDelivery", "answerDispute", "disputeModel", "voteDispute"} <= names2


def test_h_disputes_only_within_the_window_and_only_on_a_delivery(world):
    coop, chain = world.coop, world.chain
    task_id = world.publish()
    m = world.approve(task_id, world.contributors[0])
    with reverts("WrongModelStatus"):  # nothing delivered yet
        coop.as_(world.initiator).dispute_delivery(m)
    coop.as_(world.contributors[0]).deliver_key(m, b"sealed")
    chain.increase_time(601)
    with reverts("DisputeWindowOver"):
        coop.as_(world.initiator).dispute_delivery(m)
    with reverts("DisputeWindowOver"):
        coop.as_(world.initiator).dispute_model(m, world.keys[m])


# ---------------------------------------------------------------- (i) exact amounts

def test_i_wrong_escrow_deposit_and_bond_amounts_name_the_required_amount(world):
    coop = world.coop
    initiator = coop.as_(world.initiator)
    terms = world.terms()
    for sent in (terms.escrow - 1, terms.escrow + 1, 0):
        with pytest.raises(ContractRevert) as exc:
            initiator.publish_task(MANIFEST_HASH, MANIFEST_CID, DELIVERY_KEY, terms, value=sent)
        assert exc.value.name == "IncorrectEscrow" and exc.value.args_decoded == (terms.escrow, sent)
    assert coop.task_count() == 0 and coop.contract_balance() == 0
    task_id = world.publish(n_verifiers=0, n_contributors=0)
    for sent in (0, terms.contributor_deposit + 1):
        with pytest.raises(ContractRevert) as exc:
            coop.as_(world.contributors[0]).register_contributor(task_id, deposit=sent)
        assert exc.value.name == "IncorrectDeposit"
        assert exc.value.args_decoded == (terms.contributor_deposit, sent)
    with pytest.raises(ContractRevert) as exc:
        coop.as_(world.verifiers[0]).register_verifier(task_id, BOX_KEY, deposit=1)
    assert exc.value.args_decoded == (terms.verifier_deposit, 1)
    assert coop.contract_balance() == terms.escrow
    world.assert_solvent()


# ---------------------------------------------------------------- access control and misuse

def test_registration_rules(world):
    task_id = world.publish(n_verifiers=1, n_contributors=1)
    c, v = world.contributors[0], world.verifiers[0]
    with reverts("AlreadyRegistered"):
        world.as_(c).register_contributor(task_id)
    with reverts("AlreadyRegistered"):
        world.as_(v).register_verifier(task_id, BOX_KEY)
    with reverts("InvalidBoxKey"):
        world.as_(world.verifiers[1]).register_verifier(task_id, bytes(32))
    with reverts("InitiatorCannotParticipate"):
        world.as_(world.initiator).register_verifier(task_id, BOX_KEY)
    with reverts("UnknownTask"):
        world.as_(v).register_verifier(task_id + 7, BOX_KEY)
    world.chain.increase_time(3_601)
    with reverts("AnnounceWindowOver"):
        world.as_(world.verifiers[1]).register_verifier(task_id, BOX_KEY)
    world.assert_solvent()


def test_unauthorised_and_out_of_order_actions(world):
    coop = world.coop
    task_id = world.publish()
    outsider = world.as_(world.outsider)
    with reverts("NotRegisteredContributor"):
        outsider.announce_model(task_id, os.urandom(32), os.urandom(32), "bafy-evil")
    c = world.contributors[0]
    m = world.announce(task_id, c, draw=False)
    with reverts("DrawNotReady"):
        coop.draw_verifiers(m)
    with reverts("WrongModelStatus"):
        world.as_(world.verifiers[0]).commit_vote(m, Vote.APPROVE, os.urandom(32))
    with reverts("WrongModelStatus"):
        coop.settle_vote(m, world.verifiers[0])
    with reverts("AlreadyAnnounced"):
        world.announce(task_id, c)
    world.draw(m)
    with reverts("WrongModelStatus"):
        coop.draw_verifiers(m)
    selected = coop.selected_verifiers(m)
    not_selected = next(v for v in world.verifiers if v not in selected)
    with reverts("NotSelectedVerifier"):
        world.as_(not_selected).commit_vote(m, Vote.REJECT, os.urandom(32))
    with reverts("NotSelectedVerifier"):
        world.as_(c).commit_vote(m, Vote.APPROVE, os.urandom(32))
    world.vote(m, Vote.APPROVE, reveal=False)
    with reverts("AlreadyCommitted"):
        world.as_(selected[0]).commit_vote(m, Vote.APPROVE, os.urandom(32))
    with reverts("WrongModelStatus"):
        world.as_(c).deliver_key(m, b"sealed")
    with reverts("VotingNotOver"):
        coop.finalize_model(m)
    for v in selected:
        world.as_(v).reveal_vote(m, Vote.APPROVE, world.salts[(m, v)])
    with reverts("AlreadyRevealed"):
        world.as_(selected[0]).reveal_vote(m, Vote.APPROVE, world.salts[(m, selected[0])])
    coop.finalize_model(m)
    with reverts("WrongModelStatus"):
        coop.finalize_model(m)
    with reverts("NotContributor"):
        outsider.deliver_key(m, b"sealed")
    with reverts("DeliveryWindowNotOver"):
        outsider.expire_delivery(m)
    world.as_(c).deliver_key(m, b"sealed")
    with reverts("WrongModelStatus"):
        world.as_(c).deliver_key(m, b"sealed")
    world.settle_all(m)
    with reverts("AlreadySettled"):
        coop.settle_vote(m, selected[0])
    with reverts("NotSelectedVerifier"):
        coop.settle_vote(m, not_selected)
    with reverts("UnknownModel"):
        coop.finalize_model(m + 99)
    world.assert_solvent()


def test_reveal_rules(world):
    coop = world.coop
    task_id = world.publish()
    m = world.announce(task_id, world.contributors[0])
    s = coop.selected_verifiers(m)
    salt = os.urandom(32)
    world.as_(s[0]).commit_vote(m, Vote.APPROVE, salt)
    with reverts("RevealNotOpen"):  # others still committing, window open
        world.as_(s[0]).reveal_vote(m, Vote.APPROVE, salt)
    with reverts("NotCommitted"):
        world.as_(s[1]).reveal_vote(m, Vote.APPROVE, salt)
    world.as_(s[1]).commit_vote(m, Vote.APPROVE, salt)
    world.as_(s[2]).commit_vote(m, 7, salt)  # commits to a vote value that does not exist
    with reverts("RevealMismatch"):
        world.as_(s[0]).reveal_vote(m, Vote.REJECT, salt)  # flipped vote
    with reverts("RevealMismatch"):
        world.as_(s[0]).reveal_vote(m, Vote.APPROVE, os.urandom(32))  # wrong salt
    with pytest.raises(ContractRevert, match="InvalidVote") as exc:
        world.as_(s[2]).reveal_vote(m, 7, salt)
    assert exc.value.args_decoded == (7,)
    world.as_(s[0]).reveal_vote(m, Vote.APPROVE, salt)
    assert coop.ballot(m, s[0]).revealed and coop.ballot(m, s[0]).vote == Vote.APPROVE


def test_late_actions_are_refused(world):
    coop, chain = world.coop, world.chain
    task_id = world.publish(n_contributors=2)
    c0, c1 = world.contributors[:2]
    m = world.announce(task_id, c0)
    s = coop.selected_verifiers(m)
    world.as_(s[0]).commit_vote(m, Vote.APPROVE, b"\x01" * 32)
    chain.increase_time(601)
    with reverts("CommitWindowOver"):
        world.as_(s[1]).commit_vote(m, Vote.APPROVE, b"\x01" * 32)
    chain.increase_time(600)
    with reverts("RevealWindowOver"):
        world.as_(s[0]).reveal_vote(m, Vote.APPROVE, b"\x01" * 32)
    assert coop.finalize_model(m) == ModelStatus.INCONCLUSIVE  # nobody revealed
    with reverts("TaskStillOpen"):  # only the initiator may close early
        coop.as_(world.outsider).close_task(task_id)
    chain.increase_time(3_600)
    with reverts("AnnounceWindowOver"):
        world.announce(task_id, c1)
    coop.as_(world.outsider).close_task(task_id)
    with reverts("TaskClosed"):
        coop.close_task(task_id)
    with reverts("TaskClosed"):
        world.as_(world.outsider).register_verifier(task_id, BOX_KEY)
    world.assert_solvent()


def test_task_full_escrow_exhausted_and_not_enough_verifiers(world):
    coop = world.coop
    task_id = world.publish(max_models=1)
    m = world.announce(task_id, world.contributors[0])
    with reverts("TaskFull"):
        world.announce(task_id, world.contributors[1])
    world.vote(m, Vote.REJECT)
    coop.finalize_model(m)  # the slot is free again, but the fees it spent are gone
    with pytest.raises(ContractRevert, match="EscrowExhausted") as exc:
        world.announce(task_id, world.contributors[1])
    terms = coop.task(task_id).terms
    assert exc.value.args_decoded == (terms.reward_per_model, terms.reserve)
    small = world.publish(n_verifiers=3)
    coop.as_(world.verifiers[0]).register_contributor(small)
    with pytest.raises(ContractRevert, match="NotEnoughVerifiers") as exc:
        world.announce(small, world.verifiers[0])  # it cannot verify itself
    assert exc.value.args_decoded == (2, 3)


def test_double_withdraw_and_nothing_to_withdraw(world):
    with reverts("NothingToWithdraw"):
        world.as_(world.outsider).withdraw()
    task_id = world.publish(n_verifiers=3, n_contributors=0)
    v = world.verifiers[0]
    world.as_(v).leave_task(task_id)
    assert world.as_(v).withdraw() == world.coop.task(task_id).terms.verifier_deposit
    with reverts("NothingToWithdraw"):
        world.as_(v).withdraw()
    world.assert_solvent()


def test_reentrant_receiver_cannot_withdraw_twice(world):
    chain, coop = world.chain, world.coop
    attacker, _ = chain.deploy_contract("ReentrantReceiver", world.outsider, coop.address)
    task_id = world.publish(n_verifiers=0, n_contributors=0)
    deposit = coop.task(task_id).terms.verifier_deposit
    other = world.verifiers[0]
    coop.as_(other).register_verifier(task_id, BOX_KEY)  # honest money the attacker would like to drain
    chain.transact(attacker.functions.joinAsVerifier(task_id), world.outsider, value=deposit)
    chain.transact(attacker.functions.claim(task_id), world.outsider)  # leaveTask
    coop.as_(other).leave_task(task_id)
    assert coop.owed(attacker.address) == deposit
    balance_before = coop.contract_balance()
    chain.transact(attacker.functions.attack(), world.outsider)
    assert chain.balance(attacker.address) == deposit  # paid exactly once
    assert attacker.functions.reentryAttempts().call() == 1
    assert attacker.functions.reentrySucceeded().call() == 0
    reason = bytes(attacker.functions.lastReentryError().call())
    assert decoder("CoopML").decode(reason).name == "Reentrancy"
    assert coop.contract_balance() == balance_before - deposit
    assert coop.owed(other) == deposit
    world.assert_solvent()


def test_duplicate_envelope_is_refused(world):
    task_id = world.publish()
    a, b = world.contributors[:2]
    envelope = os.urandom(32)
    world.as_(a).announce_model(task_id, envelope, key_commitment(os.urandom(32)), "bafy-a")
    with pytest.raises(ContractRevert, match="DuplicateModel"):
        world.as_(b).announce_model(task_id, envelope, key_commitment(os.urandom(32)), "bafy-b")


def test_post_message_only_by_participants(world):
    task_id = world.publish(n_verifiers=0, n_contributors=0)
    v = world.verifiers[0]
    vc = world.as_(v)
    vc.register_verifier(task_id, b"\x09" * 32)
    reg = vc.events_in(vc.last_receipt, "VerifierRegistered")
    assert reg[0]["boxKey"] == b"\x09" * 32 and reg[0]["poolIndex"] == 0
    vc.post_message(task_id, 0, world.initiator, 3, "bafy-msg")
    ev = vc.events_in(vc.last_receipt, "Message")
    assert ev[0]["sender"] == v and ev[0]["to"] == world.initiator and ev[0]["cid"] == "bafy-msg"
    with reverts("NotParticipant"):
        world.as_(world.contributors[0]).post_message(task_id, 0, v, 1, "bafy-spam")
    with reverts("UnknownModel"):
        vc.post_message(task_id, 99, world.initiator, 3, "bafy-msg")

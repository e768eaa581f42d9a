"""Attacks and mistakes the contract must refuse, on both backends; each surfaces as
ContractRevert carrying the Solidity custom error name."""

from __future__ import annotations

import os

import pytest

from coopml.chain import ContractRevert
from conftest import SPEC


def reverts(name: str):
    return pytest.raises(ContractRevert, match=rf"\b{name}\b")


def test_underfunded_and_overfunded_task_is_refused(world):
    initiator = world.as_(world.initiator)
    terms = world.terms()
    with reverts("IncorrectEscrow") as exc:
        initiator.publish_task(SPEC, terms, value=terms.escrow - 1)
    assert exc.value.name == "IncorrectEscrow"
    assert exc.value.args_decoded == (terms.escrow, terms.escrow - 1)
    with reverts("IncorrectEscrow"):
        initiator.publish_task(SPEC, terms, value=terms.escrow + 1)
    with reverts("InvalidTerms"):
        initiator.publish_task(SPEC, world.terms(verifiers_per_model=2))
    with reverts("InvalidTerms"):
        initiator.publish_task(SPEC, world.terms(announce_deadline=world.chain.now() - 1))
    assert world.coop.task_count() == 0
    assert world.coop.contract_balance() == 0


def test_wrong_deposit_and_double_registration(world):
    task_id = world.publish(n_verifiers=1, n_contributors=1)
    c, v = world.contributors[0], world.verifiers[0]
    with reverts("AlreadyRegistered"):
        world.as_(c).register_contributor(task_id)
    with reverts("AlreadyRegistered"):
        world.as_(v).register_verifier(task_id)
    with reverts("IncorrectDeposit"):
        world.as_(world.verifiers[1]).register_verifier(task_id, deposit=1)
    with reverts("InitiatorCannotParticipate"):
        world.as_(world.initiator).register_verifier(task_id)
    with reverts("UnknownTask"):
        world.as_(v).register_verifier(task_id + 7)
    world.assert_solvent()


def test_unauthorised_announce_vote_release_and_double_announce(world):
    coop = world.coop
    task_id = world.publish()
    outsider = world.as_(world.outsider)
    with reverts("NotRegisteredContributor"):
        outsider.announce_model(task_id, "bafy-evil", b"\x00" * 32, b"\x00" * 32)
    c = world.contributors[0]
    model_id = world.announce(task_id, c)
    with reverts("AlreadyAnnounced"):
        world.announce(task_id, c)
    selected = coop.selected_verifiers(model_id)
    not_selected = next(v for v in world.verifiers if v not in selected)
    with reverts("NotSelectedVerifier"):
        world.as_(not_selected).commit_vote(model_id, False, os.urandom(32))
    with reverts("NotSelectedVerifier"):
        world.as_(c).commit_vote(model_id, True, os.urandom(32))  # contributor voting on itself
    world.vote(model_id, True, reveal=False)
    with reverts("AlreadyCommitted"):
        world.as_(selected[0]).commit_vote(model_id, True, os.urandom(32))
    with reverts("WrongModelStatus"):
        world.as_(c).release_key(model_id, world.keys[model_id])  # not approved yet
    with reverts("VotingNotOver"):
        coop.finalize_model(model_id)
    for v in selected:
        world.as_(v).reveal_vote(model_id, True, world.salts[(model_id, v)])
    with reverts("AlreadyRevealed"):
        world.as_(selected[0]).reveal_vote(model_id, True, world.salts[(model_id, selected[0])])
    coop.finalize_model(model_id)
    with reverts("WrongModelStatus"):
        coop.finalize_model(model_id)
    with reverts("NotContributor"):
        outsider.release_key(model_id, world.keys[model_id])
    with reverts("KeyMismatch"):
        world.as_(c).release_key(model_id, b"wrong key")
    with reverts("ReleaseWindowNotOver"):
        outsider.expire_release(model_id)
    world.as_(c).release_key(model_id, world.keys[model_id])
    with reverts("WrongModelStatus"):
        world.as_(c).release_key(model_id, world.keys[model_id])
    world.settle_all(model_id)
    with reverts("AlreadySettled"):
        coop.settle_vote(model_id, selected[0])
    with reverts("NotSelectedVerifier"):
        coop.settle_vote(model_id, not_selected)
    world.assert_solvent()


def test_reveal_mismatch_and_reveal_before_open(world):
    coop = world.coop
    task_id = world.publish()
    model_id = world.announce(task_id, world.contributors[0])
    s = coop.selected_verifiers(model_id)
    salt = os.urandom(32)
    world.as_(s[0]).commit_vote(model_id, True, salt)
    with reverts("RevealNotOpen"):  # others still committing, window open
        world.as_(s[0]).reveal_vote(model_id, True, salt)
    with reverts("NotCommitted"):
        world.as_(s[1]).reveal_vote(model_id, True, salt)
    for v in s[1:]:
        world.as_(v).commit_vote(model_id, True, salt)
    with reverts("RevealMismatch"):
        world.as_(s[0]).reveal_vote(model_id, False, salt)  # flipped vote
    with reverts("RevealMismatch"):
        world.as_(s[0]).reveal_vote(model_id, True, os.urandom(32))  # wrong salt
    with reverts("RevealMismatch"):  # s[1] committed "yes" with the same salt: a flipped reveal fails
        world.as_(s[1]).reveal_vote(model_id, False, salt)
    world.as_(s[0]).reveal_vote(model_id, True, salt)
    assert coop.ballot(model_id, s[0]).revealed


def test_late_actions_are_refused(world):
    coop = world.coop
    task_id = world.publish(n_contributors=2)
    c0, c1 = world.contributors[:2]
    model_id = world.announce(task_id, c0)
    s = coop.selected_verifiers(model_id)
    world.as_(s[0]).commit_vote(model_id, True, b"\x01" * 32)
    world.chain.increase_time(601)
    with reverts("CommitWindowOver"):
        world.as_(s[1]).commit_vote(model_id, True, b"\x01" * 32)
    world.chain.increase_time(600)
    with reverts("RevealWindowOver"):
        world.as_(s[0]).reveal_vote(model_id, True, b"\x01" * 32)
    assert coop.finalize_model(model_id) is False  # nobody revealed
    with reverts("TaskStillOpen"):
        coop.close_task(task_id)
    with reverts("TaskStillOpen"):
        world.as_(c1).claim_deposits(task_id)
    world.chain.increase_time(3_600)
    with reverts("AnnounceWindowOver"):
        world.announce(task_id, c1)
    coop.close_task(task_id)
    with reverts("TaskClosed"):
        coop.close_task(task_id)
    with reverts("TaskClosed"):
        world.as_(world.outsider).register_verifier(task_id)
    with reverts("AssignmentsPending"):  # must settle its selection first
        world.as_(s[0]).claim_deposits(task_id)
    world.settle_all(model_id)
    world.as_(c1).claim_deposits(task_id)
    with reverts("AlreadySettled"):
        world.as_(c1).claim_deposits(task_id)
    world.assert_solvent()


def test_task_full_and_not_enough_verifiers(world):
    task_id = world.publish(max_models=1)
    world.announce(task_id, world.contributors[0])
    with reverts("TaskFull"):
        world.announce(task_id, world.contributors[1])
    small = world.publish(n_verifiers=2)
    with reverts("NotEnoughVerifiers"):
        world.announce(small, world.contributors[0])


def test_double_withdraw_and_nothing_to_withdraw(world):
    with reverts("NothingToWithdraw"):
        world.as_(world.outsider).withdraw()
    task_id = world.publish(n_verifiers=3, n_contributors=0)
    world.chain.increase_time(3_601)
    world.coop.close_task(task_id)
    v = world.verifiers[0]
    world.as_(v).claim_deposits(task_id)
    assert world.as_(v).withdraw() == world.coop.task(task_id).terms.verifier_deposit
    with reverts("NothingToWithdraw"):
        world.as_(v).withdraw()
    world.assert_solvent()


def test_reentrant_receiver_cannot_withdraw_twice(world):
    chain, coop = world.chain, world.coop
    attacker_contract, _ = chain.deploy_contract("ReentrantReceiver", world.outsider, coop.address)
    task_id = world.publish(n_verifiers=0, n_contributors=0)
    deposit = coop.task(task_id).terms.verifier_deposit
    other = world.verifiers[0]
    world.as_(other).register_verifier(task_id)  # honest money the attacker would like to drain
    chain.transact(attacker_contract.functions.joinAsVerifier(task_id), world.outsider, value=deposit)
    world.chain.increase_time(3_601)
    coop.close_task(task_id)
    chain.transact(attacker_contract.functions.claim(task_id), world.outsider)
    world.as_(other).claim_deposits(task_id)
    assert coop.owed(attacker_contract.address) == deposit
    balance_before = coop.contract_balance()

    chain.transact(attacker_contract.functions.attack(), world.outsider)

    assert chain.balance(attacker_contract.address) == deposit  # paid exactly once
    assert attacker_contract.functions.reentryAttempts().call() == 1
    assert attacker_contract.functions.reentrySucceeded().call() == 0
    reason = bytes(attacker_contract.functions.lastReentryError().call())
    from coopml.chain.backends import ErrorDecoder
    from coopml.chain import load_artifact
    assert ErrorDecoder(load_artifact("CoopML")["abi"]).decode(reason).name == "Reentrancy"
    assert coop.contract_balance() == balance_before - deposit
    assert coop.owed(other) == deposit  # the honest member's credit is untouched
    world.assert_solvent()


def test_duplicate_model_hash_is_refused(world):
    """Re-selling an already announced model byte for byte is refused on-chain."""
    task_id = world.publish()
    a, b = world.contributors[:2]
    world.as_(a).announce_model(task_id, "bafy-a", b"\x07" * 32, b"\x00" * 32)
    with pytest.raises(ContractRevert, match="DuplicateModel"):
        world.as_(b).announce_model(task_id, "bafy-b", b"\x07" * 32, b"\x00" * 32)


def test_post_message_only_by_participants(world):
    task_id = world.publish(n_verifiers=0, n_contributors=0)
    v = world.verifiers[0]
    vc = world.as_(v)
    vc.register_verifier(task_id, box_key=b"\x09" * 32)
    reg = vc.events_in(vc.last_receipt, "VerifierRegistered")
    assert reg[0]["boxKey"] == b"\x09" * 32
    vc.post_message(task_id, 0, world.initiator, 3, "bafy-msg")
    ev = vc.events_in(vc.last_receipt, "Message")
    assert ev[0]["sender"] == v and ev[0]["to"] == world.initiator and ev[0]["cid"] == "bafy-msg"
    with pytest.raises(ContractRevert, match="NotParticipant"):
        world.as_(world.contributors[0]).post_message(task_id, 0, v, 1, "bafy-spam")
    with pytest.raises(ContractRevert, match="UnknownModel"):
        vc.post_message(task_id, 99, world.initiator, 3, "bafy-msg")

"""Chain fixtures: the same tests run on the embedded py-evm chain and on a real anvil node
(auto-mining, started on a free 127.0.0.1 port and stopped by PID)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

import pytest

from coopml.chain import (
    ETHER,
    Chain,
    ModelStatus,
    TaskClient,
    TaskTerms,
    Vote,
    deploy,
    key_commitment,
)
from coopml.chain.processes import anvil_binary, start_anvil

BACKENDS = ["embedded", pytest.param("anvil", marks=pytest.mark.anvil)]
NO_ANVIL = "anvil binary missing from node_modules (run scripts/setup.sh: npm ci installs @foundry-rs/anvil-linux-amd64)"

MANIFEST = b'{"coopml": "task-manifest/1", "dataset": "mnist"}'
MANIFEST_HASH = hashlib.sha256(MANIFEST).digest()
MANIFEST_CID = "bafkreimanifest"
DELIVERY_KEY = b"\x0d" * 32  # the initiator's X25519 public key (opaque to the contract)
BOX_KEY = b"\x0b" * 32


@pytest.fixture(scope="session")
def anvil_node():
    if anvil_binary() is None:
        pytest.skip(NO_ANVIL)
    node = start_anvil()
    yield node
    node.stop()


@pytest.fixture(scope="session")
def _chains(request):
    return {}


@pytest.fixture(params=BACKENDS)
def chain(request, _chains) -> Chain:
    """One chain per backend for the session; each test deploys its own contract."""
    kind = request.param
    if kind not in _chains:
        _chains[kind] = (Chain.embedded() if kind == "embedded"
                         else Chain.rpc(request.getfixturevalue("anvil_node").url))
    return _chains[kind]


def mine_blocks(chain: Chain, n: int) -> None:
    """Seal n empty blocks (eth-tester's mine_blocks / anvil_mine; one by one elsewhere)."""
    tester = getattr(chain, "_tester", None)
    if tester is not None:
        tester.mine_blocks(n)
        return
    try:
        chain.w3.provider.make_request("anvil_mine", [hex(n)])
    except Exception:  # noqa: BLE001 - a node without anvil_mine
        for _ in range(n):
            chain.mine()


def wait_for_draw(coop: TaskClient, model_id: int) -> None:
    """Seal blocks until a draw sent now comes after the model's draw block."""
    while not coop.draw_ready(model_id):
        coop.chain.mine()


@dataclass
class World:
    """A deployed contract plus funded local accounts (initiator, contributors, verifiers)."""

    chain: Chain
    coop: TaskClient
    initiator: str
    contributors: list[str]
    verifiers: list[str]
    outsider: str
    keys: dict[int, bytes] = field(default_factory=dict)
    salts: dict[tuple[int, str], bytes] = field(default_factory=dict)
    deploy_block: int = 0  # where event cursors start: scanning from 0 grows with the chain

    def terms(self, **overrides) -> TaskTerms:
        base = {"reward_per_model": ETHER, "verifier_fee": ETHER // 100, "contributor_deposit": ETHER // 10,
                "verifier_deposit": ETHER // 20, "max_models": 3, "verifiers_per_model": 3,
                "announce_deadline": self.chain.now() + 3_600, "verify_window": 600, "reveal_window": 600,
                "delivery_window": 600, "dispute_window": 600}
        base.update(overrides)
        return TaskTerms(**base)

    def as_(self, account: str) -> TaskClient:
        return self.coop.as_(account)

    def publish(self, n_verifiers: int | None = None, n_contributors: int | None = None, **terms) -> int:
        task_id = self.as_(self.initiator).publish_task(MANIFEST_HASH, MANIFEST_CID, DELIVERY_KEY,
                                                        self.terms(**terms))
        for c in self.contributors[:n_contributors]:
            self.as_(c).register_contributor(task_id)
        for v in self.verifiers[:n_verifiers]:
            self.as_(v).register_verifier(task_id, BOX_KEY)
        return task_id

    def announce(self, task_id: int, contributor: str, draw: bool = True) -> int:
        """Announce a fresh model of `contributor` and (by default) draw its verifiers."""
        key = os.urandom(32)
        model_id = self.as_(contributor).announce_model(task_id, os.urandom(32), key_commitment(key),
                                                         f"bafy-{contributor[-6:]}")
        self.keys[model_id] = key
        if draw:
            self.draw(model_id)
        return model_id

    def draw(self, model_id: int, by: str | None = None) -> list[str]:
        wait_for_draw(self.coop, model_id)
        return self.as_(by or self.outsider).draw_verifiers(model_id)

    def vote(self, model_id: int, votes: dict[str, Vote] | Vote, reveal: bool = True) -> None:
        selected = self.coop.selected_verifiers(model_id)
        if isinstance(votes, Vote):
            votes = {v: votes for v in selected}
        for v, vote in votes.items():
            self.salts[(model_id, v)] = salt = os.urandom(32)
            self.as_(v).commit_vote(model_id, vote, salt)
        if reveal:
            for v, vote in votes.items():
                self.as_(v).reveal_vote(model_id, vote, self.salts[(model_id, v)])

    def approve(self, task_id: int, contributor: str) -> int:
        """Announce, draw, all approve, finalize: an APPROVED model."""
        model_id = self.announce(task_id, contributor)
        self.vote(model_id, Vote.APPROVE)
        assert self.coop.finalize_model(model_id) == ModelStatus.APPROVED
        return model_id

    def settle_all(self, model_id: int) -> None:
        for v in self.coop.selected_verifiers(model_id):
            if not self.coop.ballot(model_id, v).settled:
                self.coop.settle_vote(model_id, v)

    def accounts(self) -> list[str]:
        return [self.initiator, *self.contributors, *self.verifiers, self.outsider]

    def owed_sum(self) -> int:
        return sum(self.coop.owed(a) for a in self.accounts())

    def assert_solvent(self) -> None:
        """The contract holds exactly what it owes plus what it burnt:
        balance == sum(task.locked) + totalOwed + totalBurnt."""
        locked = sum(self.coop.task(t).locked for t in range(1, self.coop.task_count() + 1))
        owed = self.coop.total_owed()
        assert owed == self.owed_sum()
        assert self.coop.contract_balance() == locked + owed + self.coop.total_burnt()


_accounts_cache: dict[int, dict[str, list[str]]] = {}


def make_world(chain: Chain, n_contributors: int = 4, n_verifiers: int = 6) -> World:
    """Fresh contract; local accounts derived from fixed seeds (funded once per chain)."""
    cache = _accounts_cache.setdefault(id(chain), {})

    def accounts(role: str, n: int) -> list[str]:
        have = cache.setdefault(role, [])
        while len(have) < n:
            have.append(chain.new_account(100 * ETHER, seed=f"{role}-{len(have)}-{id(chain)}"))
        for a in have[:n]:  # escrows left in earlier tests' contracts: top up (accounts are shared)
            balance = chain.balance(a)
            if balance < 50 * ETHER:
                chain.fund(a, 100 * ETHER - balance)
        return have[:n]
    deployer = chain.dev_accounts()[0]
    coop = deploy(chain, deployer)
    return World(chain, coop, accounts("initiator", 1)[0], accounts("contributor", n_contributors),
                 accounts("verifier", n_verifiers), accounts("outsider", 1)[0],
                 deploy_block=coop.deploy_block)


@pytest.fixture
def world(chain) -> World:
    return make_world(chain)

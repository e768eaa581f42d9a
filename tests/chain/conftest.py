"""Chain fixtures: the same tests run on the embedded py-evm chain and on a real anvil node
(auto-mining, started on a free 127.0.0.1 port and stopped by PID)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import pytest

from coopml.chain import ETHER, Chain, TaskClient, TaskSpec, TaskTerms, deploy, key_commitment
from coopml.chain.processes import anvil_binary, start_anvil

BACKENDS = ["embedded", pytest.param("anvil", marks=pytest.mark.anvil)]
NO_ANVIL = "anvil binary missing from node_modules (run scripts/setup.sh: npm ci installs @foundry-rs/anvil-linux-amd64)"


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


SPEC = TaskSpec(
    objective="MNIST digit classification",
    criterion="fused accuracy on the verification set improves",
    model_structure="table1-c1",
    data_cids=("bafkreidata0", "bafkreidata1"),
    verification_data_commitment=b"\x11" * 32,
    he_public_key_cid="bafkreihekey",
    he_public_key_hash=b"\x22" * 32,
)


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
        base = dict(reward_per_model=ETHER, verifier_fee=ETHER // 100, contributor_deposit=ETHER // 10,
                    verifier_deposit=ETHER // 20, max_models=3, verifiers_per_model=3,
                    announce_deadline=self.chain.now() + 3_600, commit_window=600, reveal_window=600,
                    release_window=600)
        base.update(overrides)
        return TaskTerms(**base)

    def as_(self, account: str) -> TaskClient:
        return self.coop.as_(account)

    def publish(self, n_verifiers: int | None = None, n_contributors: int | None = None, **terms) -> int:
        task_id = self.as_(self.initiator).publish_task(SPEC, self.terms(**terms))
        for c in self.contributors[:n_contributors]:
            self.as_(c).register_contributor(task_id)
        for v in self.verifiers[:n_verifiers]:
            self.as_(v).register_verifier(task_id)
        return task_id

    def announce(self, task_id: int, contributor: str) -> int:
        key = os.urandom(32)
        model_id = self.as_(contributor).announce_model(task_id, f"bafy-{contributor[-6:]}", os.urandom(32),
                                                         key_commitment(key))
        self.keys[model_id] = key
        return model_id

    def vote(self, model_id: int, votes: dict[str, bool] | bool, reveal: bool = True) -> None:
        selected = self.coop.selected_verifiers(model_id)
        if isinstance(votes, bool):
            votes = {v: votes for v in selected}
        for v, approve in votes.items():
            self.salts[(model_id, v)] = salt = os.urandom(32)
            self.as_(v).commit_vote(model_id, approve, salt)
        if reveal:
            for v, approve in votes.items():
                self.as_(v).reveal_vote(model_id, approve, self.salts[(model_id, v)])

    def settle_all(self, model_id: int) -> None:
        for v in self.coop.selected_verifiers(model_id):
            if not self.coop.ballot(model_id, v).settled:
                self.coop.settle_vote(model_id, v)

    def owed_sum(self) -> int:
        accounts = [self.initiator, *self.contributors, *self.verifiers, self.outsider]
        return sum(self.coop.owed(a) for a in accounts)

    def assert_solvent(self) -> None:
        """The contract holds exactly what it owes: escrow + deposits locked per task + credits."""
        locked = sum(self.coop.task(t).locked for t in range(1, self.coop.task_count() + 1))
        owed = self.coop.total_owed()
        assert owed == self.owed_sum()
        assert self.coop.contract_balance() == locked + owed


_accounts_cache: dict[int, dict[str, list[str]]] = {}


def make_world(chain: Chain, n_contributors: int = 4, n_verifiers: int = 6) -> World:
    """Fresh contract; local accounts derived from fixed seeds (funded once per chain)."""
    cache = _accounts_cache.setdefault(id(chain), {})
    def accounts(role: str, n: int) -> list[str]:
        have = cache.setdefault(role, [])
        while len(have) < n:
            have.append(chain.new_account(100 * ETHER, seed=f"{role}-{len(have)}-{id(chain)}"))
        return have[:n]
    deployer = chain.dev_accounts()[0]
    coop = deploy(chain, deployer)
    return World(chain, coop, accounts("initiator", 1)[0], accounts("contributor", n_contributors),
                 accounts("verifier", n_verifiers), accounts("outsider", 1)[0],
                 deploy_block=coop.deploy_block)


@pytest.fixture
def world(chain) -> World:
    return make_world(chain)

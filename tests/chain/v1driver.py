"""A minimal driver for the v1 contract kept as a test fixture (contracts/test/CoopMLv1.sol), so
the adversarial tests can show each attack succeeding on v1 before showing it fail on v2."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from eth_utils import keccak, to_checksum_address

from coopml.chain import Chain, load_artifact
from coopml.chain.backends import ErrorDecoder

V1_SPEC = ("MNIST", "accuracy improves", "table1-c1", ["bafkreidata0"], b"\x11" * 32, "bafkreihekey", b"\x22" * 32)
# v1 ModelStatus: None, Voting, Approved, Rejected, Released, Forfeited
V1_APPROVED, V1_REJECTED, V1_RELEASED, V1_FORFEITED = 2, 3, 4, 5


def v1_vote_commitment(model_id: int, voter: str, approve: bool, salt: bytes) -> bytes:
    from eth_abi import encode
    return keccak(encode(["uint256", "address", "bool", "bytes32"], [model_id, to_checksum_address(voter), approve, salt]))


@dataclass
class V1:
    chain: Chain
    address: str

    @classmethod
    def deploy(cls, chain: Chain, deployer: str) -> V1:
        contract, _ = chain.deploy_contract("CoopMLv1", deployer)
        return cls(chain, contract.address)

    @property
    def contract(self) -> Any:
        return self.chain.contract(self.address, "CoopMLv1")

    def tx(self, sender: str, fn: str, *args: Any, value: int = 0) -> Any:
        decoder = ErrorDecoder(load_artifact("CoopMLv1")["abi"])
        return self.chain.transact(getattr(self.contract.functions, fn)(*args), sender, value=value,
                                   decoder=decoder, extra_gas=100_000)

    def view(self, fn: str, *args: Any) -> Any:
        return getattr(self.contract.functions, fn)(*args).call()

    @staticmethod
    def terms(now: int, v: int = 3, max_models: int = 3, announce_deadline: int | None = None,
              reward: int = 10**18, fee: int = 10**16, c_dep: int = 10**17, v_dep: int = 5 * 10**16) -> tuple:
        deadline = now + 3_600 if announce_deadline is None else announce_deadline
        return (reward, fee, c_dep, v_dep, max_models, v, deadline, 600, 600, 600)

    def publish(self, initiator: str, terms: tuple) -> int:
        escrow = terms[4] * (terms[0] + terms[5] * terms[1])
        self.tx(initiator, "publishTask", V1_SPEC, terms, value=escrow)
        return int(self.view("taskCount"))

    def register_contributor(self, task_id: int, who: str, deposit: int) -> None:
        self.tx(who, "registerContributor", task_id, value=deposit)

    def register_verifier(self, task_id: int, who: str, deposit: int) -> None:
        self.tx(who, "registerVerifier", task_id, b"\x0b" * 32, value=deposit)

    def announce(self, task_id: int, who: str, key: bytes) -> int:
        self.tx(who, "announceModel", task_id, "bafy-v1", os.urandom(32), keccak(key))
        return int(self.view("modelCount"))

    def selected(self, model_id: int) -> list[str]:
        return [to_checksum_address(a) for a in self.view("getSelectedVerifiers", model_id)]

    def vote(self, model_id: int, votes: dict[str, bool], reveal: set[str] | None = None) -> None:
        salts = {v: os.urandom(32) for v in votes}
        for v, approve in votes.items():
            self.tx(v, "commitVote", model_id, v1_vote_commitment(model_id, v, approve, salts[v]))
        for v, approve in votes.items():
            if reveal is None or v in reveal:
                self.tx(v, "revealVote", model_id, approve, salts[v])

    def finalize(self, model_id: int, sender: str) -> int:
        self.tx(sender, "finalizeModel", model_id)
        return self.status(model_id)

    def status(self, model_id: int) -> int:
        model = self.view("getModel", model_id)
        return int(model[2] if not isinstance(model, dict) else model["status"])

    def settle_all(self, model_id: int, sender: str) -> None:
        for v in self.selected(model_id):
            self.tx(sender, "settleVote", model_id, v)

    def owed(self, account: str) -> int:
        return int(self.view("owed", to_checksum_address(account)))

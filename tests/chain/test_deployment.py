"""verify_deployment: money only goes to the real CoopML contract."""

from __future__ import annotations

import pytest

from coopml.chain import ETHER
from coopml.chain.artifacts import load_artifact
from coopml.chain.deployment import strip_metadata, verify_deployment
from coopml.errors import NoContractAtAddress, NotCoopMLContract, WrongChain


def test_the_deployed_contract_passes(chain):
    coop, _ = chain.deploy_contract("CoopML", chain.dev_accounts()[0])
    code = verify_deployment(chain, coop.address, chain_id=chain.w3.eth.chain_id)
    assert strip_metadata(code) == strip_metadata(bytes.fromhex(load_artifact("CoopML")["deployedBytecode"][2:]))
    with pytest.raises(WrongChain):
        verify_deployment(chain, coop.address, chain_id=chain.w3.eth.chain_id + 1)


def test_an_address_without_code_is_refused(chain):
    empty = chain.new_account(ETHER)
    with pytest.raises(NoContractAtAddress, match="no contract"):
        verify_deployment(chain, empty)


def test_another_contract_is_refused(chain):
    other, _ = chain.deploy_contract("ReentrantReceiver", chain.dev_accounts()[0], chain.dev_accounts()[0])
    with pytest.raises(NotCoopMLContract, match="is not CoopML"):
        verify_deployment(chain, other.address)


def test_metadata_tail_is_ignored_but_code_is_not():
    code = bytes.fromhex(load_artifact("CoopML")["deployedBytecode"][2:])
    tail = int.from_bytes(code[-2:], "big")
    other_meta = code[: -tail - 2] + bytes([code[-tail - 2]]) + b"\x11" * (tail - 1) + code[-2:]
    assert strip_metadata(other_meta) == strip_metadata(code)
    assert strip_metadata(code[:10] + b"\x00" + code[11:]) != strip_metadata(code)

"""The committed ABI + bytecode must be exactly what the pinned npm solc makes of the committed
sources, with the EVM version both backends execute."""

from __future__ import annotations

import shutil

import pytest

from coopml.chain import load_artifact
from coopml.chain.artifacts import REGENERATE_HINT, stale_artifacts
from coopml.paths import node_modules


@pytest.mark.skipif(shutil.which("node") is None or not (node_modules() / "solc").is_dir(),
                    reason="node or npm solc missing (run scripts/setup.sh)")
def test_committed_artifacts_equal_a_fresh_compile():
    stale = stale_artifacts()
    assert not stale, f"committed artifacts {stale} differ from a fresh compile of contracts/; {REGENERATE_HINT}"


def test_artifact_settings_and_surface():
    art = load_artifact("CoopML")
    assert art["compiler"]["evmVersion"] == "cancun"
    assert art["compiler"]["version"].startswith("0.8.37")
    size = (len(art["deployedBytecode"]) - 2) // 2
    assert 0 < size <= 24_576  # EIP-170 contract size limit
    names = {i["name"] for i in art["abi"] if i["type"] == "function"}
    assert {"publishTask", "registerContributor", "registerVerifier", "leaveTask", "announceModel",
            "drawVerifiers", "commitVote", "revealVote", "finalizeModel", "settleVote", "deliverKey",
            "expireDelivery", "finalizeDelivery", "disputeDelivery", "answerDispute", "resolveDispute",
            "disputeModel", "voteDispute", "resolveModelDispute", "postMessage", "closeTask", "withdraw",
            "totalBurnt", "protocolVersion"} <= names
    assert not {"releaseKey", "claimDeposits"} & names  # v1 only
    errors = {i["name"] for i in art["abi"] if i["type"] == "error"}
    assert {"NotSelectedVerifier", "RevealMismatch", "Reentrancy", "IncorrectEscrow", "DrawNotReady",
            "InvalidVote", "NothingToRefund", "IncorrectBond", "KeyMismatch"} <= errors
    # the test fixtures are compiled too: the v1 contract and the attackers
    for fixture in ("CoopMLv1", "Grinder", "ReentrantReceiver"):
        assert load_artifact(fixture)["bytecode"].startswith("0x6")

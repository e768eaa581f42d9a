// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

/// The few Foundry cheatcodes this suite uses, declared here instead of importing forge-std
/// (the suite runs offline against the pinned solc; see scripts/forge.sh).
interface Vm {
    function warp(uint256 timestamp) external;
    function roll(uint256 blockNumber) external;
    function prank(address sender) external;
    function deal(address account, uint256 balance) external;
    function setBlockhash(uint256 blockNumber, bytes32 blockHash) external;
}

/// Minimal test base: the cheatcode handle and forge's invariant target selection hooks.
abstract contract TestBase {
    Vm internal constant vm = Vm(0x7109709ECfa91a80626fF3989D68f67F5b1DD12D);

    struct FuzzSelector {
        address addr;
        bytes4[] selectors;
    }

    address[] internal _targets;
    FuzzSelector[] internal _targetSelectors;

    /// forge reads these (same ABI as forge-std's StdInvariant) to choose what to fuzz.
    function targetContracts() public view returns (address[] memory) {
        return _targets;
    }

    function targetSelectors() public view returns (FuzzSelector[] memory) {
        return _targetSelectors;
    }

    function assertEq(uint256 a, uint256 b, string memory what) internal pure {
        if (a != b) revert(string.concat(what, ": ", _str(a), " != ", _str(b)));
    }

    function assertTrue(bool ok, string memory what) internal pure {
        if (!ok) revert(what);
    }

    function _str(uint256 v) internal pure returns (string memory) {
        if (v == 0) return "0";
        bytes memory b;
        while (v != 0) {
            b = abi.encodePacked(bytes1(uint8(48 + (v % 10))), b);
            v /= 10;
        }
        return string(b);
    }
}

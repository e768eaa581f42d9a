// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {CoopML} from "../CoopML.sol";
import {CoopMLHandler} from "./CoopMLHandler.sol";
import {TestBase} from "./Vm.sol";

/// @notice Invariant suite (P3, P5 and accounting) over random sequences of every CoopML action
///         driven through CoopMLHandler. Run with scripts/forge.sh [ci|deep].
contract CoopMLInvariantTest is TestBase {
    CoopML internal coop;
    CoopMLHandler internal handler;

    function setUp() public {
        vm.warp(1_700_000_000);
        vm.roll(1_000);
        coop = new CoopML();
        handler = new CoopMLHandler(coop);
        handler.bootstrap();
        _targets.push(address(handler));
        bytes4[] memory actions = new bytes4[](23);
        actions[0] = CoopMLHandler.publish.selector;
        actions[1] = CoopMLHandler.close.selector;
        actions[2] = CoopMLHandler.registerContributor.selector;
        actions[3] = CoopMLHandler.registerVerifier.selector;
        actions[4] = CoopMLHandler.leaveTask.selector;
        actions[5] = CoopMLHandler.postMessage.selector;
        actions[6] = CoopMLHandler.announce.selector;
        actions[7] = CoopMLHandler.draw.selector;
        actions[8] = CoopMLHandler.commit.selector;
        actions[9] = CoopMLHandler.reveal.selector;
        actions[10] = CoopMLHandler.finalize.selector;
        actions[11] = CoopMLHandler.settle.selector;
        actions[12] = CoopMLHandler.deliver.selector;
        actions[13] = CoopMLHandler.expireDelivery.selector;
        actions[14] = CoopMLHandler.finalizeDelivery.selector;
        actions[15] = CoopMLHandler.disputeDelivery.selector;
        actions[16] = CoopMLHandler.answerDispute.selector;
        actions[17] = CoopMLHandler.resolveDispute.selector;
        actions[18] = CoopMLHandler.disputeModel.selector;
        actions[19] = CoopMLHandler.voteDispute.selector;
        actions[20] = CoopMLHandler.resolveModelDispute.selector;
        actions[21] = CoopMLHandler.withdraw.selector;
        actions[22] = CoopMLHandler.warp.selector;
        _targetSelectors.push(FuzzSelector(address(handler), actions));
    }

    /// One campaign checks every property (forge runs one campaign per invariant function; five
    /// separate ones would cost five times the calls). The accounting checks run after every
    /// call; the two about terminal facts (a slashing, a model's final status) run at the end of
    /// each run, which sees every such fact of the run since neither can be undone.
    function invariant_coopml() public view {
        _noViolation();
        _solvency();
        _creditsMatchTheReference();
    }

    function afterInvariant() public view {
        _noViolation();
        _honestVerifiersNeverSlashed();
        _failuresNotTheContributorsFaultRefund();
    }

    /// Every call moved exactly what the reference model says (or was refused where it must be).
    function _noViolation() internal view {
        string memory v = handler.violation();
        assertTrue(bytes(v).length == 0, v);
    }

    /// Solvency: the contract holds what its tasks lock, what it owes and what it burnt; each
    /// task's locked amount and the burnt total equal the reference model's.
    function _solvency() internal view {
        uint256 locked = 0;
        for (uint256 i = 0; i < handler.taskCount(); ++i) {
            uint256 id = handler.taskIds(i);
            uint256 l = coop.getTask(id).locked;
            assertEq(l, handler.refLocked(id), "task locked vs reference");
            locked += l;
        }
        assertEq(address(coop).balance, locked + coop.totalOwed() + coop.totalBurnt(), "balance");
        assertEq(coop.totalBurnt(), handler.refBurnt(), "burnt vs reference");
    }

    /// Nobody withdraws more than credited, and every credit is the reference model's: in
    /// particular the initiator is credited only its own escrow returns and bonds (P3).
    function _creditsMatchTheReference() internal view {
        (address mismatch, uint256 owedSum) = handler.creditMismatch();
        assertTrue(mismatch == address(0), "owed + withdrawn != credited by the reference");
        assertEq(owedSum, coop.totalOwed(), "totalOwed vs actors");
        address ini = handler.INITIATOR();
        assertTrue(handler.credited(ini) <= handler.initiatorPaidIn(), "initiator credited more than it paid in");
    }

    /// A verifier that always reveals is never slashed.
    function _honestVerifiersNeverSlashed() internal view {
        for (uint256 i = 0; i < handler.taskCount(); ++i) {
            uint256 id = handler.taskIds(i);
            for (uint256 h = 0; h < handler.HONEST(); ++h) {
                assertTrue(!coop.getMember(id, handler.verifiers(h)).slashed, "honest verifier slashed");
            }
        }
    }

    /// Every Inconclusive or Cancelled model's contributor got its deposit back in that step.
    function _failuresNotTheContributorsFaultRefund() internal view {
        for (uint256 i = 0; i < handler.modelCountRef(); ++i) {
            uint256 mid = handler.modelIds(i);
            CoopML.ModelStatus s = coop.getModel(mid).status;
            if (s == CoopML.ModelStatus.Inconclusive || s == CoopML.ModelStatus.Cancelled) {
                assertTrue(handler.depositRefundSeen(mid), "deposit not refunded");
            }
        }
    }
}

// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {CoopML} from "../CoopML.sol";
import {Vm} from "./Vm.sol";

/// @notice Handler for the invariant fuzzer: every CoopML action, with bounded inputs, by a fixed
///         cast (one initiator, contributors, verifiers of which two are HONEST: they always
///         commit and reveal in time, driven by `_duties` before every time step), and an
///         independent reference model of who must be credited what and what must be burnt.
///         A call that succeeds where the reference says it must fail (or moves a different
///         amount) records a `violation`; the invariants compare the contract to the reference.
contract CoopMLHandler {
    Vm internal constant vm = Vm(0x7109709ECfa91a80626fF3989D68f67F5b1DD12D);
    uint256 internal constant MAX_TASKS = 3;
    uint256 internal constant TIME_STEP = 30; // < half of the shortest window the handler uses

    CoopML public immutable coop;
    address public constant INITIATOR = address(0x1000);
    address[] public contributors;
    address[] public verifiers; // verifiers[0..HONEST-1] are honest
    uint256 public constant HONEST = 4;
    address[] public actors; // initiator, contributors, verifiers, an outsider

    // ------------------------------------------------------------------ reference model

    struct RTask {
        CoopML.TaskTerms terms;
        bool closed;
        uint256 unallocated;
        uint256 locked;
    }

    struct RMember {
        bool contributor;
        bool verifier;
        bool announced;
        bool cLeft;
        bool vLeft;
        bool slashed;
        uint64 slashedBlock;
        uint32 open;
    }

    struct RBallot {
        bool selected;
        bool committed;
        bool revealed;
        uint8 vote;
        bytes32 salt;
        bool settled;
        bool disputeVoted;
    }

    struct RModel {
        uint256 taskId;
        address contributor;
        bool good; // what honest verifiers will find
        bytes32 key;
        uint16 approve;
        uint16 reject;
        uint16 mismatch;
        bool bonded;
    }

    uint256[] public taskIds;
    uint256[] public modelIds;
    mapping(uint256 => RTask) internal rTask;
    mapping(uint256 => mapping(address => RMember)) internal rMember;
    mapping(uint256 => RModel) internal rModel;
    mapping(uint256 => mapping(address => RBallot)) internal rBallot;

    mapping(address => uint256) public credited; // every credit the reference model predicts
    mapping(address => uint256) public withdrawn; // wei actually received through withdraw()
    uint256 public refBurnt;
    uint256 public initiatorPaidIn; // escrow + bonds
    mapping(uint256 => bool) public depositRefundSeen; // Inconclusive/Cancelled: refund observed
    string public violation;
    mapping(string => uint256) public successes; // coverage: successful calls per action

    constructor(CoopML coop_) {
        coop = coop_;
        actors.push(INITIATOR);
        for (uint160 i = 0; i < 4; ++i) {
            contributors.push(address(0x2000 + i));
            actors.push(address(0x2000 + i));
        }
        for (uint160 i = 0; i < 6; ++i) {
            verifiers.push(address(0x3000 + i));
            actors.push(address(0x3000 + i));
        }
        actors.push(address(0x4000)); // outsider
    }

    // ------------------------------------------------------------------ views for the invariants

    function taskCount() external view returns (uint256) {
        return taskIds.length;
    }

    function modelCountRef() external view returns (uint256) {
        return modelIds.length;
    }

    function actorCount() external view returns (uint256) {
        return actors.length;
    }

    function refLocked(uint256 taskId) external view returns (uint256) {
        return rTask[taskId].locked;
    }

    /// The first actor whose owed + withdrawn differs from the reference's credits (0: none),
    /// and the sum of what the actors are owed.
    function creditMismatch() external view returns (address mismatch, uint256 owedSum) {
        for (uint256 i = 0; i < actors.length; ++i) {
            address a = actors[i];
            uint256 owed = coop.owed(a);
            owedSum += owed;
            if (mismatch == address(0) && owed + withdrawn[a] != credited[a]) mismatch = a;
        }
    }

    function isHonest(address a) public view returns (bool) {
        for (uint256 h = 0; h < HONEST; ++h) {
            if (a == verifiers[h]) return true;
        }
        return false;
    }

    // ------------------------------------------------------------------ task

    function publish(uint256 seed) external {
        if (taskIds.length >= MAX_TASKS) return;
        CoopML.TaskTerms memory t;
        t.rewardPerModel = uint128(_pick(seed, 0, 1e15, 1e18));
        t.verifierFee = uint128(_pick(seed, 1, 0, 1e16));
        t.contributorDeposit = uint128(_pick(seed, 2, 1, 1e17));
        t.verifierDeposit = uint128(_pick(seed, 3, 1, 1e17));
        t.maxModels = uint32(_pick(seed, 4, 1, 3));
        t.verifiersPerModel = uint16(2 * _pick(seed, 5, 0, 2) + 1);
        t.announceDeadline = uint64(block.timestamp + _pick(seed, 6, 600, 7200));
        t.verifyWindow = uint32(_pick(seed, 7, 2 * TIME_STEP, 600));
        t.revealWindow = uint32(_pick(seed, 8, 2 * TIME_STEP, 600));
        t.deliveryWindow = uint32(_pick(seed, 9, 1, 600));
        t.disputeWindow = uint32(_pick(seed, 10, 1, 600));
        _publish(t, seed);
    }

    /// A rich starting state (called once from setUp, through the reference model like any
    /// action): two tasks with every contributor and verifier registered; in the first task three
    /// voted models (one under dispute A with a dissenting Reject vote, one under dispute B, one
    /// finalized); in the second one model being verified, one awaiting its draw and a free
    /// slot; so that short call sequences reach every later step. Everything before is exercised
    /// by the fuzzer anyway.
    function bootstrap() external {
        CoopML.TaskTerms memory t = CoopML.TaskTerms({
            rewardPerModel: 1e17,
            verifierFee: 1e15,
            contributorDeposit: 1e16,
            verifierDeposit: 5e15,
            maxModels: 3,
            verifiersPerModel: 3,
            announceDeadline: uint64(block.timestamp + 3600),
            verifyWindow: 120,
            revealWindow: 120,
            deliveryWindow: 300,
            disputeWindow: 300
        });
        _publish(t, 1);
        t.verifiersPerModel = 1;
        _publish(t, 2);
        for (uint256 k = 0; k < 2; ++k) {
            for (uint256 i = 0; i < contributors.length; ++i) {
                this.registerContributor(k, 1 + i, false);
            }
            for (uint256 i = 0; i < verifiers.length; ++i) {
                this.registerVerifier(k, 1 + contributors.length + i, false);
            }
        }
        for (uint256 i = 0; i < 3; ++i) {
            this.announce(0, 1 + i, true);
            this.draw(i, keccak256(abi.encode("bootstrap", i)), false, 0, false);
        }
        // drawn dishonest verifiers of the first model dissent: they reveal Reject (and must be
        // paid whatever the outcome); the honest ones approve, driven by _duties
        address[] memory drawn = coop.getSelectedVerifiers(modelIds[0]);
        for (uint256 i = 0; i < drawn.length; ++i) {
            if (!isHonest(drawn[i])) _commitAs(modelIds[0], drawn[i], 2, keccak256(abi.encode(i)));
        }
        this.warp(120 + 1);
        for (uint256 i = 0; i < drawn.length; ++i) {
            _reveal(modelIds[0], drawn[i]);
        }
        this.warp(120);
        for (uint256 i = 0; i < 3; ++i) {
            this.finalize(i, 0);
        }
        this.deliver(0, 0, true);
        this.disputeDelivery(0, false, true); // dispute A open on the first model
        this.deliver(1, 0, true);
        this.disputeModel(1, true); // dispute B open on the second; the third stays Approved
        for (uint256 i = 0; i < 2; ++i) {
            this.announce(1, 1 + i, i == 0);
        }
        this.draw(3, keccak256(abi.encode("bootstrap", 3)), false, 0, false); // the fifth awaits its draw
        if (bytes(violation).length != 0 || modelIds.length != 5) revert("bootstrap failed");
    }

    function _publish(CoopML.TaskTerms memory t, uint256 seed) internal {
        uint256 escrow = coop.escrowFor(t);
        vm.deal(INITIATOR, INITIATOR.balance + escrow);
        vm.prank(INITIATOR);
        try coop.publishTask{value: escrow}(keccak256(abi.encode(seed)), "bafy-manifest", bytes32(uint256(7)), t)
        returns (uint256 id) {
            taskIds.push(id);
            RTask storage r = rTask[id];
            r.terms = t;
            r.unallocated = escrow;
            r.locked = escrow;
            initiatorPaidIn += escrow;
            successes["publish"] += 1;
        } catch {
            _violation("publishTask refused valid terms");
        }
    }

    function close(uint256 tSeed, bool byInitiator) external {
        (bool ok, uint256 id) = _task(tSeed);
        if (!ok) return;
        RTask storage r = rTask[id];
        bool expect = !r.closed && (byInitiator || block.timestamp > r.terms.announceDeadline);
        vm.prank(byInitiator ? INITIATOR : actors[actors.length - 1]);
        try coop.closeTask(id) {
            if (!expect) return _violation("closeTask accepted");
            r.closed = true;
            uint256 amount = r.unallocated;
            r.unallocated = 0;
            _credit(id, INITIATOR, amount);
            successes["close"] += 1;
        } catch {
            if (expect) _violation("closeTask refused");
        }
    }

    // ------------------------------------------------------------------ membership

    function registerContributor(uint256 tSeed, uint256 aSeed, bool wrongAmount) external {
        (bool ok, uint256 id) = _task(tSeed);
        if (!ok) return;
        address a = actors[aSeed % actors.length];
        RTask storage r = rTask[id];
        uint256 d = r.terms.contributorDeposit;
        uint256 sent = wrongAmount ? d + 1 : d;
        bool expect = _joinable(r, a) && !rMember[id][a].contributor && !wrongAmount;
        vm.deal(a, a.balance + sent);
        vm.prank(a);
        try coop.registerContributor{value: sent}(id) {
            if (!expect) return _violation("registerContributor accepted");
            rMember[id][a].contributor = true;
            r.locked += d;
            successes["registerContributor"] += 1;
        } catch {
            if (expect) _violation("registerContributor refused");
        }
    }

    function registerVerifier(uint256 tSeed, uint256 aSeed, bool wrongAmount) external {
        (bool ok, uint256 id) = _task(tSeed);
        if (!ok) return;
        address a = actors[aSeed % actors.length];
        RTask storage r = rTask[id];
        uint256 d = r.terms.verifierDeposit;
        uint256 sent = wrongAmount ? d - 1 : d;
        bool expect = _joinable(r, a) && !rMember[id][a].verifier && !wrongAmount;
        vm.deal(a, a.balance + sent);
        vm.prank(a);
        try coop.registerVerifier{value: sent}(id, bytes32(uint256(uint160(a)))) {
            if (!expect) return _violation("registerVerifier accepted");
            rMember[id][a].verifier = true;
            r.locked += d;
            successes["registerVerifier"] += 1;
        } catch {
            if (expect) _violation("registerVerifier refused");
        }
    }

    function leaveTask(uint256 tSeed, uint256 aSeed) external {
        (bool ok, uint256 id) = _task(tSeed);
        if (!ok) return;
        address a = actors[aSeed % actors.length];
        RMember storage m = rMember[id][a];
        RTask storage r = rTask[id];
        bool cPart = m.contributor && !m.announced && !m.cLeft;
        bool vPart = m.verifier && !m.vLeft && !m.slashed && m.open == 0;
        uint256 expected = (cPart ? r.terms.contributorDeposit : 0) + (vPart ? r.terms.verifierDeposit : 0);
        uint256 before = coop.owed(a);
        vm.prank(a);
        try coop.leaveTask(id) {
            if (expected == 0 || coop.owed(a) - before != expected) return _violation("leaveTask refund");
            if (cPart) m.cLeft = true;
            if (vPart) m.vLeft = true;
            _credit(id, a, expected);
            successes["leave"] += 1;
        } catch {
            if (expected != 0) _violation("leaveTask refused a refundable deposit");
        }
    }

    function postMessage(uint256 tSeed, uint256 aSeed) external {
        (bool ok, uint256 id) = _task(tSeed);
        if (!ok) return;
        address a = actors[aSeed % actors.length];
        vm.prank(a);
        try coop.postMessage(id, 0, INITIATOR, 1, "bafy-msg") {
            RMember storage m = rMember[id][a];
            if (a != INITIATOR && !m.contributor && !m.verifier) _violation("postMessage by a non-participant");
        } catch {}
    }

    // ------------------------------------------------------------------ models

    function announce(uint256 tSeed, uint256 aSeed, bool good) external {
        (bool ok, uint256 id) = _task(tSeed);
        if (!ok) return;
        address a = actors[aSeed % actors.length];
        bytes32 key = keccak256(abi.encode("key", a, id));
        vm.prank(a);
        try coop.announceModel(id, keccak256(abi.encode("envelope", a, id)), keccak256(abi.encodePacked(key)), "bafy")
        returns (uint256 mid) {
            RTask storage r = rTask[id];
            RMember storage m = rMember[id][a];
            uint256 reserve = _reserve(r.terms);
            if (r.closed || !m.contributor || m.cLeft || m.announced || r.unallocated < reserve) {
                return _violation("announceModel accepted");
            }
            m.announced = true;
            r.unallocated -= reserve;
            modelIds.push(mid);
            RModel storage md = rModel[mid];
            md.taskId = id;
            md.contributor = a;
            md.good = good;
            md.key = key;
            successes["announce"] += 1;
        } catch {}
    }

    /// `lateJoin`: someone registers as a verifier after the announcement, before the draw, as
    /// an attacker that saw the announcement would (it must never be drawn for this model).
    function draw(uint256 mSeed, bytes32 hash, bool expire, uint256 aSeed, bool lateJoin) external {
        (bool ok, uint256 mid) = _model(mSeed);
        if (!ok) return;
        if (lateJoin) {
            for (uint256 k = 0; k < taskIds.length; ++k) {
                if (taskIds[k] == rModel[mid].taskId) this.registerVerifier(k, aSeed >> 8, false);
            }
        }
        CoopML.Model memory m = coop.getModel(mid);
        if (m.status == CoopML.ModelStatus.AwaitingDraw) {
            if (block.number <= m.drawBlock) vm.roll(m.drawBlock + 1);
            if (expire) vm.roll(block.number + 257);
            else vm.setBlockhash(m.drawBlock, hash == bytes32(0) ? bytes32(uint256(1)) : hash);
        }
        RModel storage md = rModel[mid];
        uint256 before = coop.owed(md.contributor);
        vm.prank(actors[aSeed % actors.length]);
        try coop.drawVerifiers(mid) {
            if (m.status != CoopML.ModelStatus.AwaitingDraw) return _violation("drawVerifiers accepted twice");
            CoopML.ModelStatus s = coop.getModel(mid).status;
            if (s == CoopML.ModelStatus.Cancelled) {
                _cancelled(mid, before);
            } else if (s == CoopML.ModelStatus.Verifying && !expire) {
                _drawn(mid, m);
            } else {
                return _violation("drawVerifiers outcome");
            }
            successes["draw"] += 1;
        } catch {}
        _duties();
    }

    function commit(uint256 mSeed, uint256 vSeed, uint8 vote, bytes32 salt) external {
        (bool ok, uint256 mid) = _model(mSeed);
        if (!ok) return;
        vote = vote % 8; // 1-3 mostly, and 0, 4-7: invalid votes can be committed, never revealed
        if (vote > 4) vote -= 4;
        _commitAs(mid, _dishonest(vSeed), vote, salt);
    }

    function _commitAs(uint256 mid, address v, uint8 vote, bytes32 salt) internal {
        vm.prank(v);
        try coop.commitVote(mid, keccak256(abi.encode(mid, v, vote, salt))) {
            RBallot storage b = rBallot[mid][v];
            if (!b.selected || b.committed) return _violation("commitVote accepted");
            b.committed = true;
            b.vote = vote;
            b.salt = salt;
            successes["commit"] += 1;
        } catch {}
    }

    function reveal(uint256 mSeed, uint256 vSeed) external {
        (bool ok, uint256 mid) = _model(mSeed);
        if (!ok) return;
        _reveal(mid, _dishonest(vSeed));
    }

    function finalize(uint256 mSeed, uint256 aSeed) external {
        (bool ok, uint256 mid) = _model(mSeed);
        if (!ok) return;
        RModel storage md = rModel[mid];
        uint256 v = rTask[md.taskId].terms.verifiersPerModel;
        uint256 before = coop.owed(md.contributor);
        vm.prank(actors[aSeed % actors.length]);
        try coop.finalizeModel(mid) {
            CoopML.ModelStatus s = coop.getModel(mid).status;
            CoopML.ModelStatus expect = uint256(md.approve) * 2 > v
                ? CoopML.ModelStatus.Approved
                : uint256(md.reject) * 2 > v ? CoopML.ModelStatus.Rejected : CoopML.ModelStatus.Inconclusive;
            if (s != expect) return _violation("finalizeModel outcome");
            RTask storage r = rTask[md.taskId];
            if (s == CoopML.ModelStatus.Rejected) {
                _fail(md.taskId);
                _burn(md.taskId, r.terms.contributorDeposit);
            } else if (s == CoopML.ModelStatus.Inconclusive) {
                _fail(md.taskId);
                _credit(md.taskId, md.contributor, r.terms.contributorDeposit);
                depositRefundSeen[mid] = coop.owed(md.contributor) - before == r.terms.contributorDeposit;
            }
            successes["finalize"] += 1;
        } catch {}
    }

    function settle(uint256 mSeed, uint256 vSeed) external {
        (bool ok, uint256 mid) = _model(mSeed);
        if (!ok) return;
        address v = actors[vSeed % actors.length];
        RModel storage md = rModel[mid];
        RTask storage r = rTask[md.taskId];
        uint256 before = coop.owed(v);
        vm.prank(actors[(vSeed >> 8) % actors.length]);
        try coop.settleVote(mid, v) {
            RBallot storage b = rBallot[mid][v];
            if (!b.selected || b.settled) return _violation("settleVote accepted");
            b.settled = true;
            RMember storage m = rMember[md.taskId][v];
            m.open -= 1;
            if (b.revealed) {
                _credit(md.taskId, v, r.terms.verifierFee);
                if (coop.owed(v) - before != r.terms.verifierFee) _violation("settleVote fee");
            } else {
                _burn(md.taskId, r.terms.verifierFee);
                if (!m.slashed) {
                    m.slashed = true;
                    m.slashedBlock = uint64(block.number);
                    _burn(md.taskId, r.terms.verifierDeposit);
                }
                if (coop.owed(v) != before) _violation("settleVote credited a silent verifier");
            }
            successes["settle"] += 1;
        } catch {}
    }

    // ------------------------------------------------------------------ delivery and disputes

    function deliver(uint256 mSeed, uint256 aSeed, bool byContributor) external {
        (bool ok, uint256 mid) = _model(mSeed);
        if (!ok) return;
        address a = byContributor ? rModel[mid].contributor : actors[aSeed % actors.length];
        vm.prank(a);
        try coop.deliverKey(mid, abi.encodePacked("sealed", mid)) {
            if (a != rModel[mid].contributor) return _violation("deliverKey by a non-contributor");
            successes["deliver"] += 1;
        } catch {}
    }

    function expireDelivery(uint256 mSeed) external {
        (bool ok, uint256 mid) = _model(mSeed);
        if (!ok) return;
        try coop.expireDelivery(mid) {
            uint256 id = rModel[mid].taskId;
            _fail(id);
            _burn(id, rTask[id].terms.contributorDeposit);
            successes["expireDelivery"] += 1;
        } catch {}
    }

    function finalizeDelivery(uint256 mSeed) external {
        (bool ok, uint256 mid) = _model(mSeed);
        if (!ok) return;
        try coop.finalizeDelivery(mid) {
            _released(mid, 0);
            successes["finalizeDelivery"] += 1;
        } catch {}
    }

    function disputeDelivery(uint256 mSeed, bool wrongBond, bool byInitiator) external {
        (bool ok, uint256 mid) = _model(mSeed);
        if (!ok) return;
        uint256 id = rModel[mid].taskId;
        uint256 bond = rTask[id].terms.contributorDeposit;
        uint256 sent = wrongBond ? bond + 1 : bond;
        address a = byInitiator ? INITIATOR : rModel[mid].contributor;
        vm.deal(a, a.balance + sent);
        vm.prank(a);
        try coop.disputeDelivery{value: sent}(mid) {
            if (wrongBond || a != INITIATOR) return _violation("disputeDelivery accepted");
            _bonded(mid, bond);
            successes["disputeDelivery"] += 1;
        } catch {}
    }

    function answerDispute(uint256 mSeed, bool correctKey) external {
        (bool ok, uint256 mid) = _model(mSeed);
        if (!ok) return;
        RModel storage md = rModel[mid];
        vm.prank(md.contributor);
        try coop.answerDispute(mid, correctKey ? md.key : keccak256(abi.encode(md.key))) {
            if (!correctKey) return _violation("answerDispute accepted a wrong key");
            _burn(md.taskId, rTask[md.taskId].terms.contributorDeposit); // the bond
            md.bonded = false;
            _released(mid, 0);
            successes["answerDispute"] += 1;
        } catch {}
    }

    function resolveDispute(uint256 mSeed) external {
        (bool ok, uint256 mid) = _model(mSeed);
        if (!ok) return;
        try coop.resolveDispute(mid) {
            _refunded(mid);
            successes["resolveDispute"] += 1;
        } catch {}
    }

    function disputeModel(uint256 mSeed, bool correctKey) external {
        (bool ok, uint256 mid) = _model(mSeed);
        if (!ok) return;
        RModel storage md = rModel[mid];
        uint256 bond = rTask[md.taskId].terms.contributorDeposit;
        vm.deal(INITIATOR, INITIATOR.balance + bond);
        vm.prank(INITIATOR);
        try coop.disputeModel{value: bond}(mid, correctKey ? md.key : bytes32(0)) {
            if (!correctKey) return _violation("disputeModel accepted a wrong key");
            _bonded(mid, bond);
            successes["disputeModel"] += 1;
        } catch {}
        _duties();
    }

    function voteDispute(uint256 mSeed, uint256 vSeed, bool mismatch) external {
        (bool ok, uint256 mid) = _model(mSeed);
        if (!ok) return;
        _voteDispute(mid, _dishonest(vSeed), mismatch);
    }

    function resolveModelDispute(uint256 mSeed) external {
        (bool ok, uint256 mid) = _model(mSeed);
        if (!ok) return;
        RModel storage md = rModel[mid];
        uint256 v = rTask[md.taskId].terms.verifiersPerModel;
        try coop.resolveModelDispute(mid) {
            CoopML.ModelStatus s = coop.getModel(mid).status;
            bool upheld = uint256(md.mismatch) * 2 > v;
            if (s != (upheld ? CoopML.ModelStatus.Refunded : CoopML.ModelStatus.Released)) {
                return _violation("resolveModelDispute outcome");
            }
            if (upheld) {
                _refunded(mid);
            } else {
                md.bonded = false;
                _released(mid, rTask[md.taskId].terms.contributorDeposit);
            }
            successes["resolveModelDispute"] += 1;
        } catch {}
    }

    // ------------------------------------------------------------------ money and time

    function withdraw(uint256 aSeed) external {
        address a = actors[aSeed % actors.length];
        uint256 due = coop.owed(a);
        uint256 balance = a.balance;
        vm.prank(a);
        try coop.withdraw() {
            uint256 got = a.balance - balance;
            if (due == 0 || got != due) return _violation("withdraw amount");
            withdrawn[a] += got;
            successes["withdraw"] += 1;
        } catch {
            if (due != 0) _violation("withdraw refused");
        }
    }

    /// Advance time in steps shorter than any voting window, letting the honest verifiers act
    /// at every step: they commit and reveal in time whatever the fuzzer does with the clock.
    function warp(uint256 seconds_) external {
        seconds_ = 1 + (seconds_ % 3000);
        successes["warp"] += 1;
        while (seconds_ > 0) {
            uint256 step = seconds_ < TIME_STEP ? seconds_ : TIME_STEP;
            _duties();
            vm.warp(block.timestamp + step);
            vm.roll(block.number + 1);
            seconds_ -= step;
        }
        _duties();
    }

    // ------------------------------------------------------------------ honest verifiers

    function _duties() internal {
        for (uint256 i = 0; i < modelIds.length; ++i) {
            uint256 mid = modelIds[i];
            CoopML.Model memory m = coop.getModel(mid);
            for (uint256 h = 0; h < HONEST; ++h) {
                address v = verifiers[h];
                RBallot storage b = rBallot[mid][v];
                if (!b.selected) continue;
                if (m.status == CoopML.ModelStatus.Verifying) {
                    if (!b.committed && block.timestamp <= m.verifyDeadline) {
                        uint8 vote = rModel[mid].good ? 1 : 2;
                        bytes32 salt = keccak256(abi.encode(mid, v));
                        vm.prank(v);
                        try coop.commitVote(mid, keccak256(abi.encode(mid, v, vote, salt))) {
                            b.committed = true;
                            b.vote = vote;
                            b.salt = salt;
                        } catch {
                            _violation("an honest verifier could not commit in time");
                        }
                    }
                    _reveal(mid, v);
                } else if (m.status == CoopML.ModelStatus.ModelDisputed && !b.disputeVoted) {
                    _voteDispute(mid, v, !rModel[mid].good);
                }
            }
        }
    }

    // ------------------------------------------------------------------ reference updates

    function _reveal(uint256 mid, address v) internal {
        RBallot storage b = rBallot[mid][v];
        vm.prank(v);
        try coop.revealVote(mid, b.vote, b.salt) {
            if (!b.committed || b.revealed || b.vote == 0 || b.vote > 3) return _violation("revealVote accepted");
            b.revealed = true;
            if (b.vote == 1) rModel[mid].approve += 1;
            else if (b.vote == 2) rModel[mid].reject += 1;
            successes["reveal"] += 1;
        } catch {}
    }

    function _voteDispute(uint256 mid, address v, bool mismatch) internal {
        vm.prank(v);
        try coop.voteDispute(mid, mismatch) {
            RBallot storage b = rBallot[mid][v];
            if (!b.selected || b.disputeVoted) return _violation("voteDispute accepted");
            b.disputeVoted = true;
            if (mismatch) rModel[mid].mismatch += 1;
            successes["voteDispute"] += 1;
        } catch {}
    }

    function _drawn(uint256 mid, CoopML.Model memory m) internal {
        address[] memory chosen = coop.getSelectedVerifiers(mid);
        uint256 id = m.taskId;
        if (chosen.length != rTask[id].terms.verifiersPerModel) return _violation("draw size");
        address[] memory pool = coop.getVerifierPool(id);
        for (uint256 i = 0; i < chosen.length; ++i) {
            address v = chosen[i];
            RMember storage mem = rMember[id][v];
            bool inSnapshot = false;
            for (uint256 k = 0; k < m.poolSnapshot; ++k) {
                if (pool[k] == v) inSnapshot = true;
            }
            bool slashedBefore = mem.slashed && mem.slashedBlock <= m.drawBlock;
            if (!inSnapshot || v == m.contributor || mem.vLeft || slashedBefore || rBallot[mid][v].selected) {
                return _violation("ineligible or repeated verifier drawn");
            }
            rBallot[mid][v].selected = true;
            mem.open += 1;
        }
    }

    function _cancelled(uint256 mid, uint256 ownedBefore) internal {
        RModel storage md = rModel[mid];
        RTask storage r = rTask[md.taskId];
        _returnToInitiator(md.taskId, _reserve(r.terms));
        _credit(md.taskId, md.contributor, r.terms.contributorDeposit);
        depositRefundSeen[mid] = coop.owed(md.contributor) - ownedBefore == r.terms.contributorDeposit;
    }

    function _released(uint256 mid, uint256 bonus) internal {
        RModel storage md = rModel[mid];
        RTask storage r = rTask[md.taskId];
        _credit(md.taskId, md.contributor, uint256(r.terms.rewardPerModel) + r.terms.contributorDeposit + bonus);
    }

    function _refunded(uint256 mid) internal {
        RModel storage md = rModel[mid];
        uint256 id = md.taskId;
        uint256 deposit = rTask[id].terms.contributorDeposit;
        _fail(id);
        _burn(id, deposit);
        md.bonded = false;
        _credit(id, INITIATOR, deposit); // the bond
    }

    function _bonded(uint256 mid, uint256 bond) internal {
        rModel[mid].bonded = true;
        rTask[rModel[mid].taskId].locked += bond;
        initiatorPaidIn += bond;
    }

    function _fail(uint256 id) internal {
        _returnToInitiator(id, rTask[id].terms.rewardPerModel);
    }

    function _returnToInitiator(uint256 id, uint256 amount) internal {
        if (rTask[id].closed) _credit(id, INITIATOR, amount);
        else rTask[id].unallocated += amount;
    }

    function _credit(uint256 id, address to, uint256 amount) internal {
        credited[to] += amount;
        rTask[id].locked -= amount;
    }

    function _burn(uint256 id, uint256 amount) internal {
        refBurnt += amount;
        rTask[id].locked -= amount;
    }

    // ------------------------------------------------------------------ helpers

    function _violation(string memory what) internal {
        if (bytes(violation).length == 0) violation = what;
    }

    function _pick(uint256 seed, uint256 i, uint256 lo, uint256 hi) internal pure returns (uint256) {
        return lo + uint256(keccak256(abi.encode(seed, i))) % (hi - lo + 1);
    }

    function _reserve(CoopML.TaskTerms memory t) internal pure returns (uint256) {
        return uint256(t.rewardPerModel) + uint256(t.verifiersPerModel) * t.verifierFee;
    }

    function _joinable(RTask storage r, address a) internal view returns (bool) {
        return !r.closed && block.timestamp <= r.terms.announceDeadline && a != INITIATOR;
    }

    function _task(uint256 seed) internal view returns (bool, uint256) {
        if (taskIds.length == 0) return (false, 0);
        return (true, taskIds[seed % taskIds.length]);
    }

    function _model(uint256 seed) internal view returns (bool, uint256) {
        if (modelIds.length == 0) return (false, 0);
        return (true, modelIds[seed % modelIds.length]);
    }

    /// Any actor but the two honest verifiers (their votes are driven by _duties).
    function _dishonest(uint256 seed) internal view returns (address) {
        address a = actors[seed % actors.length];
        return isHonest(a) ? actors[actors.length - 1] : a;
    }
}

// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

/// @title CoopML v2: escrowed cooperative-learning tasks, verifiers drawn from a future block hash,
///        three-valued commit-reveal votes, buyer-only key delivery with two dispute paths.
/// @notice One deployment hosts many tasks (taskId 1, 2, ...); models have a global modelId.
///         Properties (docs/chain.md shows each with its mechanism and test):
///         P1 unbiasable draw: announcing fixes the pool snapshot and a FUTURE block whose hash
///            seeds the draw, so nobody can read, predict or retry the draw when committing to it;
///         P2 fair exchange: the model is committed by (envelope hash, key commitment) and the
///            buyer either gets that model or its money back (disputes);
///         P3 no profit from others' failure: slashed deposits and forfeited fees are BURNT
///            (kept here forever, counted in totalBurnt); a vote without a majority refunds;
///         P4 liveness without good will: every step after a deadline can be taken by anyone;
///         P5 exits and bounds: deposits not at stake are recoverable at any time (leaveTask) and
///            every window is bounded.
///         Payments are pull-only (owed / withdraw); only withdraw sends ETH, to msg.sender.
///         Every action is O(1) in the number of participants except drawVerifiers, whose loop is
///         bounded by verifiersPerModel (<= 99) plus the probing past ineligible pool entries.
/// @dev    Invariant: address(this).balance == sum(task.locked) + totalOwed + totalBurnt, with
///         task.locked == unallocated + reserves of live models + deposits at stake + bonds.
contract CoopML {
    // ------------------------------------------------------------------ constants

    /// announceDeadline may lie at most this far after publication: deposits cannot be tied up
    /// behind an unbounded announce period (P5).
    uint256 public constant MAX_ANNOUNCE_PERIOD = 90 days;
    /// Upper bound of every per-model window (verify, reveal, delivery, dispute) (P5).
    uint256 public constant MAX_WINDOW = 30 days;
    /// The draw is seeded by the hash of the block after the announcement: unknown when the
    /// contributor commits (P1).
    uint256 public constant DRAW_DELAY = 1;
    /// blockhash() is only available for the last 256 blocks; past that the draw is cancelled.
    uint256 public constant BLOCKHASH_HORIZON = 256;
    uint256 public constant MAX_VERIFIERS_PER_MODEL = 99;
    uint256 public constant MAX_MODELS = 10_000;
    uint8 internal constant VOTE_APPROVE = 1;
    uint8 internal constant VOTE_REJECT = 2;
    uint8 internal constant VOTE_ABSTAIN = 3;

    // ------------------------------------------------------------------ types

    /// Economic and timing terms of a task (amounts in wei, windows in seconds).
    struct TaskTerms {
        uint128 rewardPerModel; // paid to a contributor whose approved model is delivered
        uint128 verifierFee; // paid per drawn verifier per model if it reveals (any vote)
        uint128 contributorDeposit; // also the initiator's bond in a dispute
        uint128 verifierDeposit;
        uint32 maxModels; // live + bought models at most; the escrow covers this many
        uint16 verifiersPerModel; // V: odd, 1..99
        uint64 announceDeadline; // block timestamp; now < deadline <= now + MAX_ANNOUNCE_PERIOD
        uint32 verifyWindow; // from the draw: verifiers evaluate and commit votes
        uint32 revealWindow; // after verifyWindow
        uint32 deliveryWindow; // after approval: the contributor seals the key to the initiator
        uint32 disputeWindow; // after delivery; also each dispute's response/adjudication window
    }

    struct Task {
        address initiator;
        uint64 publishedBlock; // where TaskPublished (with the manifest CID) lives
        bool closed;
        uint32 modelsActive; // announced models not in a terminal failed state
        uint32 modelsBought; // Released
        uint32 activeVerifiers; // registered, not left, not slashed
        bytes32 manifestHash; // sha256 of the manifest bytes at manifestCid
        bytes32 deliveryKey; // the initiator's X25519 public key: model keys are sealed to it
        TaskTerms terms;
        uint256 unallocated; // escrow not reserved by a model
        uint256 locked; // unallocated + live model reserves + deposits at stake + bonds
    }

    enum ModelStatus {
        None,
        AwaitingDraw, // announced; the draw block is not yet usable
        Verifying, // drawn verifiers commit, then reveal
        Approved, // approve majority: the contributor must deliver the key
        Delivered, // sealed key delivered: the initiator may dispute
        DeliveryDisputed, // dispute A: the contributor must publish the key
        ModelDisputed, // dispute B: the drawn verifiers adjudicate
        Released, // paid
        Rejected, // reject majority: deposit burnt
        Inconclusive, // no majority: deposit refunded
        Cancelled, // draw impossible or expired: deposit refunded
        Forfeited, // approved, key not delivered: deposit burnt
        Refunded // dispute upheld or unanswered: deposit burnt, reward back, bond back
    }

    enum BurnReason {
        ModelRejected,
        KeyNotDelivered,
        DisputeUpheld,
        FeeNotEarned, // a drawn verifier did not reveal: its fee
        VerifierSlashed, // a drawn verifier did not reveal: its deposit (once)
        DisputeBondLost // dispute A answered with the committed key: the initiator's bond
    }

    struct Model {
        uint64 taskId;
        address contributor;
        ModelStatus status;
        uint16 commits;
        uint64 drawBlock; // block whose hash seeds the draw
        uint32 poolSnapshot; // verifierPool length at announcement: later registrants never drawn
        uint64 verifyDeadline;
        uint64 revealDeadline;
        uint16 reveals;
        uint16 approve;
        uint16 reject;
        uint16 abstain;
        uint16 disputeVotes;
        uint16 mismatchVotes;
        uint64 deliveryDeadline;
        uint64 disputeDeadline;
        uint64 responseDeadline; // dispute A: answer by; dispute B: adjudication deadline
        bytes32 envelopeHash; // sha256 of the encrypted envelope bytes at cid
        bytes32 keyCommitment; // keccak256(K), K = the 32-byte envelope key
        bytes32 sealedKeyHash; // keccak256 of the delivered sealed key
        string cid;
    }

    struct Member {
        bool contributor; // role held (stays true after leaving: a role is taken once)
        bool verifier;
        bool announced;
        bool contributorLeft;
        bool verifierLeft;
        bool slashed; // verifier deposit burnt for a missed reveal
        uint32 openAssignments; // draws not yet settled
        uint32 poolIndex;
        uint64 slashedBlock; // block of the slashing (eligibility is judged as of the draw block)
    }

    struct Ballot {
        bool selected;
        bool committed;
        bool revealed;
        uint8 vote; // 1 approve, 2 reject, 3 abstain
        bool settled;
        bool disputeVoted;
        bytes32 commitment; // keccak256(abi.encode(modelId, voter, uint8 vote, salt))
    }

    // ------------------------------------------------------------------ state

    uint256 public taskCount;
    uint256 public modelCount;
    mapping(uint256 => Task) internal tasks;
    mapping(uint256 => Model) internal models;
    mapping(uint256 => mapping(address => Member)) internal members;
    /// Append-only, so that a model's snapshot (a prefix of it) never changes under its draw.
    mapping(uint256 => address[]) internal verifierPool;
    mapping(uint256 => address[]) internal selectedVerifiers;
    mapping(uint256 => mapping(address => Ballot)) internal ballots;
    /// Envelope hashes already announced per task: an exact re-sale is refused.
    mapping(uint256 => mapping(bytes32 => bool)) internal announcedEnvelopes;
    /// Pull-payment ledger: wei each account can withdraw.
    mapping(address => uint256) public owed;
    uint256 public totalOwed;
    /// Wei burnt (slashed deposits, forfeited fees, lost bonds): held forever, nobody's to take.
    uint256 public totalBurnt;
    uint256 private transient reentrancyLock;

    // ------------------------------------------------------------------ errors

    error UnknownTask(uint256 taskId);
    error UnknownModel(uint256 modelId);
    error TaskClosed(uint256 taskId);
    error TaskStillOpen(uint256 taskId);
    error InvalidTerms(string reason);
    error IncorrectEscrow(uint256 required, uint256 sent);
    error IncorrectDeposit(uint256 required, uint256 sent);
    error IncorrectBond(uint256 required, uint256 sent);
    error InvalidBoxKey();
    error AnnounceWindowOver(uint256 taskId);
    error AlreadyRegistered();
    error NotRegisteredContributor();
    error InitiatorCannotParticipate();
    error AlreadyAnnounced();
    error DuplicateModel(bytes32 envelopeHash);
    error TaskFull(uint256 taskId);
    error EscrowExhausted(uint256 available, uint256 needed);
    error NotEnoughVerifiers(uint256 available, uint256 needed);
    error WrongModelStatus(ModelStatus status);
    error DrawNotReady(uint256 drawBlock);
    error NotSelectedVerifier();
    error AlreadyCommitted();
    error NotCommitted();
    error AlreadyRevealed();
    error CommitWindowOver();
    error RevealNotOpen();
    error RevealWindowOver();
    error RevealMismatch();
    error InvalidVote(uint8 vote);
    error VotingNotOver();
    error NotContributor();
    error NotInitiator();
    error DeliveryWindowOver();
    error DeliveryWindowNotOver();
    error DisputeWindowOver();
    error DisputeWindowNotOver();
    error KeyMismatch();
    error AlreadyVoted();
    error AlreadySettled();
    error NothingToRefund();
    error NothingToWithdraw();
    error NotParticipant();
    error TransferFailed();
    error Reentrancy();

    // ------------------------------------------------------------------ events

    event TaskPublished(
        uint256 indexed taskId,
        address indexed initiator,
        bytes32 manifestHash,
        string manifestCid,
        bytes32 deliveryKey,
        TaskTerms terms
    );
    event TaskClosedEvent(uint256 indexed taskId, uint256 returned);
    event ContributorRegistered(uint256 indexed taskId, address indexed contributor, uint256 deposit);
    /// `boxKey` is the verifier's X25519 public key: contributors and the initiator seal to it.
    event VerifierRegistered(
        uint256 indexed taskId, address indexed verifier, uint256 deposit, bytes32 boxKey, uint256 poolIndex
    );
    event MemberLeft(uint256 indexed taskId, address indexed account, uint256 refund);
    event Message(
        uint256 indexed taskId, uint256 indexed modelId, address indexed to, address sender, uint8 kind, string cid
    );
    event ModelAnnounced(
        uint256 indexed taskId,
        uint256 indexed modelId,
        address indexed contributor,
        string cid,
        bytes32 envelopeHash,
        bytes32 keyCommitment,
        uint64 drawBlock
    );
    event DrawExpired(uint256 indexed modelId);
    event DrawImpossible(uint256 indexed modelId);
    event VerifierSelected(uint256 indexed taskId, uint256 indexed modelId, address indexed verifier);
    event VerifiersDrawn(
        uint256 indexed taskId,
        uint256 indexed modelId,
        address[] verifiers,
        uint64 verifyDeadline,
        uint64 revealDeadline
    );
    event VoteCommitted(uint256 indexed modelId, address indexed verifier);
    event VoteRevealed(uint256 indexed modelId, address indexed verifier, uint8 vote);
    event ModelFinalized(
        uint256 indexed taskId,
        uint256 indexed modelId,
        ModelStatus status,
        uint16 approve,
        uint16 reject,
        uint16 abstain,
        uint16 reveals
    );
    event VoteSettled(uint256 indexed modelId, address indexed verifier, uint256 paid, bool slashed);
    event KeyDelivered(uint256 indexed taskId, uint256 indexed modelId, bytes sealedKey);
    event DeliveryExpired(uint256 indexed taskId, uint256 indexed modelId);
    event ModelReleased(uint256 indexed taskId, uint256 indexed modelId, address indexed contributor);
    event DeliveryDisputed(uint256 indexed taskId, uint256 indexed modelId, uint64 responseDeadline);
    event KeyRevealed(uint256 indexed modelId, bytes32 key);
    event ModelDisputed(uint256 indexed modelId, uint64 adjudicationDeadline);
    event DisputeVoted(uint256 indexed modelId, address indexed verifier, bool mismatch);
    event ModelRefunded(uint256 indexed taskId, uint256 indexed modelId);
    event Credited(address indexed account, uint256 amount);
    event Burnt(uint256 indexed taskId, address indexed from, uint256 amount, BurnReason reason);
    event Withdrawn(address indexed account, uint256 amount);

    // ------------------------------------------------------------------ modifiers

    modifier nonReentrant() {
        if (reentrancyLock != 0) revert Reentrancy();
        reentrancyLock = 1;
        _;
        reentrancyLock = 0;
    }

    // ------------------------------------------------------------------ initiator

    /// @notice Publish a task. msg.value must equal escrowFor(terms).
    /// @param manifestHash sha256 of the task manifest bytes stored at `manifestCid` (only the
    ///        hash is stored; the CID is in the event).
    /// @param deliveryKey the initiator's X25519 public key: approved models' keys are sealed to
    ///        it, so only the buyer can open them (P2).
    function publishTask(
        bytes32 manifestHash,
        string calldata manifestCid,
        bytes32 deliveryKey,
        TaskTerms calldata terms
    ) external payable returns (uint256 taskId) {
        _checkTerms(terms);
        if (deliveryKey == bytes32(0)) revert InvalidTerms("deliveryKey is zero");
        uint256 required = escrowFor(terms);
        if (msg.value != required) revert IncorrectEscrow(required, msg.value);
        taskId = ++taskCount;
        Task storage t = tasks[taskId];
        t.initiator = msg.sender;
        t.publishedBlock = uint64(block.number);
        t.manifestHash = manifestHash;
        t.deliveryKey = deliveryKey;
        t.terms = terms;
        t.unallocated = required;
        t.locked = required;
        emit TaskPublished(taskId, msg.sender, manifestHash, manifestCid, deliveryKey, terms);
    }

    /// @notice Stop registrations and announcements: the initiator at any time, anyone after the
    ///         announce deadline (P4). Unreserved escrow is credited back to the initiator; models
    ///         already announced run to completion on their own reserves.
    function closeTask(uint256 taskId) external {
        Task storage t = _task(taskId);
        if (t.closed) revert TaskClosed(taskId);
        if (msg.sender != t.initiator && block.timestamp <= t.terms.announceDeadline) revert TaskStillOpen(taskId);
        t.closed = true;
        uint256 amount = t.unallocated;
        t.unallocated = 0;
        emit TaskClosedEvent(taskId, amount);
        _credit(t, t.initiator, amount);
    }

    // ------------------------------------------------------------------ membership

    function registerContributor(uint256 taskId) external payable {
        (Task storage t, Member storage m) = _join(taskId);
        if (m.contributor) revert AlreadyRegistered();
        uint256 deposit = t.terms.contributorDeposit;
        if (msg.value != deposit) revert IncorrectDeposit(deposit, msg.value);
        m.contributor = true;
        t.locked += deposit;
        emit ContributorRegistered(taskId, msg.sender, deposit);
    }

    /// @param boxKey the verifier's X25519 public key (nonzero): sealed messages go to it.
    function registerVerifier(uint256 taskId, bytes32 boxKey) external payable {
        (Task storage t, Member storage m) = _join(taskId);
        if (m.verifier) revert AlreadyRegistered();
        if (boxKey == bytes32(0)) revert InvalidBoxKey();
        uint256 deposit = t.terms.verifierDeposit;
        if (msg.value != deposit) revert IncorrectDeposit(deposit, msg.value);
        m.verifier = true;
        m.poolIndex = uint32(verifierPool[taskId].length);
        verifierPool[taskId].push(msg.sender);
        t.activeVerifiers += 1;
        t.locked += deposit;
        emit VerifierRegistered(taskId, msg.sender, deposit, boxKey, m.poolIndex);
    }

    /// @notice P5 exit, open or closed task: refund every deposit of the caller that is not at
    ///         stake: the contributor deposit if it announced nothing (an announced model's deposit
    ///         follows the model), the verifier deposit if no draw of it is unsettled (it is then
    ///         never drawn again). A role left cannot be taken again.
    function leaveTask(uint256 taskId) external {
        Task storage t = _task(taskId);
        Member storage m = members[taskId][msg.sender];
        uint256 amount = 0;
        if (m.contributor && !m.announced && !m.contributorLeft) {
            m.contributorLeft = true;
            amount += t.terms.contributorDeposit;
        }
        if (m.verifier && !m.verifierLeft && !m.slashed && m.openAssignments == 0) {
            m.verifierLeft = true;
            t.activeVerifiers -= 1;
            amount += t.terms.verifierDeposit;
        }
        if (amount == 0) revert NothingToRefund();
        emit MemberLeft(taskId, msg.sender, amount);
        _credit(t, msg.sender, amount);
    }

    /// @notice Announce an off-chain message (payload in storage at `cid`) to one participant.
    ///         Stores nothing. Only the initiator and members (past or present) may post; `modelId`
    ///         0 means "about the task", otherwise it must be a model of this task.
    function postMessage(uint256 taskId, uint256 modelId, address to, uint8 kind, string calldata cid) external {
        Task storage t = _task(taskId);
        Member storage m = members[taskId][msg.sender];
        if (msg.sender != t.initiator && !m.contributor && !m.verifier) revert NotParticipant();
        if (modelId != 0 && models[modelId].taskId != taskId) revert UnknownModel(modelId);
        emit Message(taskId, modelId, to, msg.sender, kind, cid);
    }

    // ------------------------------------------------------------------ announcement and draw

    /// @notice Commit a model and reserve its share of the escrow. NO randomness is read here:
    ///         the draw uses the hash of block `block.number + DRAW_DELAY`, which does not exist
    ///         yet, and only verifiers already in the pool (the snapshot) can be drawn. A contract
    ///         that announces therefore cannot inspect the draw and revert until it suits it (v1's
    ///         grinding attack), and nobody can join after seeing the seed (P1).
    /// @param envelopeHash sha256 of the exact encrypted envelope bytes at `cid`.
    /// @param keyCommitment keccak256(K) of the 32-byte envelope key. AES-GCM is not key
    ///        committing, so the envelope hash is committed too (P2).
    function announceModel(uint256 taskId, bytes32 envelopeHash, bytes32 keyCommitment, string calldata cid)
        external
        returns (uint256 modelId)
    {
        _admitModel(taskId, envelopeHash);
        modelId = ++modelCount;
        Model storage md = models[modelId];
        md.taskId = uint64(taskId);
        md.contributor = msg.sender;
        md.status = ModelStatus.AwaitingDraw;
        uint64 drawBlock = uint64(block.number + DRAW_DELAY);
        md.drawBlock = drawBlock;
        md.poolSnapshot = uint32(verifierPool[taskId].length);
        md.envelopeHash = envelopeHash;
        md.keyCommitment = keyCommitment;
        md.cid = cid;
        emit ModelAnnounced(taskId, modelId, msg.sender, cid, envelopeHash, keyCommitment, drawBlock);
    }

    /// @notice Draw the model's V verifiers (anyone, once block.number > drawBlock; P1, P4).
    ///         seed = keccak256(blockhash(drawBlock), modelId, envelopeHash); draw i starts at
    ///         keccak256(seed, i) mod poolSnapshot and probes linearly past entries that are
    ///         ineligible (the contributor, left, slashed as of drawBlock) or already chosen.
    ///         The outcome is a function of the block hash and of state fixed by drawBlock, so
    ///         calling later, or reverting and retrying, changes nothing. With linear probing a
    ///         verifier that leaves after seeing the hash can only remove itself: the set of
    ///         chosen entries loses it and gains the next free entry, so a group of colluders can
    ///         never increase its count by leaving. If blockhash(drawBlock) is gone (more than
    ///         256 blocks) or the snapshot holds fewer than V eligible verifiers, the model is
    ///         Cancelled and refunded, and its contributor cannot announce again: withholding the
    ///         draw never buys a re-roll.
    function drawVerifiers(uint256 modelId) external {
        Model storage md = _model(modelId);
        if (md.status != ModelStatus.AwaitingDraw) revert WrongModelStatus(md.status);
        uint256 drawBlock = md.drawBlock;
        if (block.number <= drawBlock) revert DrawNotReady(drawBlock);
        uint256 taskId = md.taskId;
        Task storage t = tasks[taskId];
        bytes32 bh = blockhash(drawBlock);
        if (bh == bytes32(0)) {
            emit DrawExpired(modelId);
            _cancel(t, md);
            return;
        }
        (bool possible, address[] memory chosen) =
            _draw(taskId, md, keccak256(abi.encode(bh, modelId, md.envelopeHash)));
        if (!possible) {
            emit DrawImpossible(modelId);
            _cancel(t, md);
            return;
        }
        for (uint256 i = 0; i < chosen.length; ++i) {
            address verifier = chosen[i];
            ballots[modelId][verifier].selected = true;
            members[taskId][verifier].openAssignments += 1;
            emit VerifierSelected(taskId, modelId, verifier);
        }
        selectedVerifiers[modelId] = chosen;
        md.status = ModelStatus.Verifying;
        uint64 verifyDeadline = uint64(block.timestamp) + t.terms.verifyWindow;
        uint64 revealDeadline = verifyDeadline + t.terms.revealWindow;
        md.verifyDeadline = verifyDeadline;
        md.revealDeadline = revealDeadline;
        emit VerifiersDrawn(taskId, modelId, chosen, verifyDeadline, revealDeadline);
    }

    // ------------------------------------------------------------------ voting

    /// @param commitment keccak256(abi.encode(modelId, msg.sender, uint8 vote, bytes32 salt)):
    ///        binds the voter, so nobody can copy another's commitment.
    function commitVote(uint256 modelId, bytes32 commitment) external {
        Model storage md = _model(modelId);
        if (md.status != ModelStatus.Verifying) revert WrongModelStatus(md.status);
        if (block.timestamp > md.verifyDeadline) revert CommitWindowOver();
        Ballot storage b = ballots[modelId][msg.sender];
        if (!b.selected) revert NotSelectedVerifier();
        if (b.committed) revert AlreadyCommitted();
        b.committed = true;
        b.commitment = commitment;
        md.commits += 1;
        emit VoteCommitted(modelId, msg.sender);
    }

    /// @notice Reveal opens once all V committed or the verify window ended. Abstain (3) exists so
    ///         that a verifier that could not evaluate through no fault of the contributor can
    ///         still reveal, be paid and keep its deposit: not revealing is always its own fault.
    function revealVote(uint256 modelId, uint8 vote, bytes32 salt) external {
        Model storage md = _model(modelId);
        if (md.status != ModelStatus.Verifying) revert WrongModelStatus(md.status);
        Ballot storage b = ballots[modelId][msg.sender];
        if (!b.selected) revert NotSelectedVerifier();
        if (!b.committed) revert NotCommitted();
        if (b.revealed) revert AlreadyRevealed();
        uint256 v = tasks[md.taskId].terms.verifiersPerModel;
        if (md.commits < v && block.timestamp <= md.verifyDeadline) revert RevealNotOpen();
        if (block.timestamp > md.revealDeadline) revert RevealWindowOver();
        if (vote < VOTE_APPROVE || vote > VOTE_ABSTAIN) revert InvalidVote(vote);
        if (keccak256(abi.encode(modelId, msg.sender, vote, salt)) != b.commitment) revert RevealMismatch();
        b.revealed = true;
        b.vote = vote;
        md.reveals += 1;
        if (vote == VOTE_APPROVE) md.approve += 1;
        else if (vote == VOTE_REJECT) md.reject += 1;
        else md.abstain += 1;
        emit VoteRevealed(modelId, msg.sender, vote);
    }

    /// @notice Tally (anyone) once all V revealed or the reveal window ended. Majorities are of
    ///         the V drawn verifiers: approve*2 > V -> Approved; reject*2 > V -> Rejected (deposit
    ///         burnt: the initiator gains nothing from it, P3); otherwise Inconclusive (deposit
    ///         refunded: lack of a revealed majority is not the contributor's fault).
    function finalizeModel(uint256 modelId) external {
        Model storage md = _model(modelId);
        if (md.status != ModelStatus.Verifying) revert WrongModelStatus(md.status);
        Task storage t = tasks[md.taskId];
        uint256 v = t.terms.verifiersPerModel;
        if (md.reveals < v && block.timestamp <= md.revealDeadline) revert VotingNotOver();
        ModelStatus outcome;
        if (uint256(md.approve) * 2 > v) {
            outcome = ModelStatus.Approved;
            md.deliveryDeadline = uint64(block.timestamp) + t.terms.deliveryWindow;
        } else if (uint256(md.reject) * 2 > v) {
            outcome = ModelStatus.Rejected;
        } else {
            outcome = ModelStatus.Inconclusive;
        }
        md.status = outcome;
        emit ModelFinalized(md.taskId, modelId, outcome, md.approve, md.reject, md.abstain, md.reveals);
        if (outcome == ModelStatus.Rejected) {
            _fail(t);
            _burn(t, md.taskId, md.contributor, t.terms.contributorDeposit, BurnReason.ModelRejected);
        } else if (outcome == ModelStatus.Inconclusive) {
            _fail(t);
            _credit(t, md.contributor, t.terms.contributorDeposit);
        }
    }

    /// @notice Settle one drawn verifier (anyone) once the vote is over. Revealed (any vote, even
    ///         against the majority) -> its fee. Not revealed -> fee burnt and, the first time,
    ///         its whole deposit burnt; it is never drawn again. Nobody is paid for it (P3).
    function settleVote(uint256 modelId, address verifier) external {
        Model storage md = _model(modelId);
        if (md.status == ModelStatus.AwaitingDraw || md.status == ModelStatus.Verifying) {
            revert WrongModelStatus(md.status);
        }
        Ballot storage b = ballots[modelId][verifier];
        if (!b.selected) revert NotSelectedVerifier();
        if (b.settled) revert AlreadySettled();
        b.settled = true;
        uint256 taskId = md.taskId;
        Task storage t = tasks[taskId];
        Member storage m = members[taskId][verifier];
        m.openAssignments -= 1;
        uint256 fee = t.terms.verifierFee;
        if (b.revealed) {
            emit VoteSettled(modelId, verifier, fee, false);
            _credit(t, verifier, fee);
            return;
        }
        emit VoteSettled(modelId, verifier, 0, true);
        _burn(t, taskId, verifier, fee, BurnReason.FeeNotEarned);
        if (!m.slashed) {
            m.slashed = true;
            m.slashedBlock = uint64(block.number);
            t.activeVerifiers -= 1;
            _burn(t, taskId, verifier, t.terms.verifierDeposit, BurnReason.VerifierSlashed);
        }
    }

    // ------------------------------------------------------------------ delivery (P2)

    /// @notice The contributor delivers K sealed (X25519 box) to the task's deliveryKey: only the
    ///         initiator can open it, so the model is sold to the buyer alone.
    function deliverKey(uint256 modelId, bytes calldata sealedKey) external {
        Model storage md = _model(modelId);
        if (msg.sender != md.contributor) revert NotContributor();
        if (md.status != ModelStatus.Approved) revert WrongModelStatus(md.status);
        if (block.timestamp > md.deliveryDeadline) revert DeliveryWindowOver();
        md.sealedKeyHash = keccak256(sealedKey);
        md.status = ModelStatus.Delivered;
        md.disputeDeadline = uint64(block.timestamp) + tasks[md.taskId].terms.disputeWindow;
        emit KeyDelivered(md.taskId, modelId, sealedKey);
    }

    /// @notice Approved but not delivered in time (anyone): deposit burnt, reward back.
    function expireDelivery(uint256 modelId) external {
        Model storage md = _model(modelId);
        if (md.status != ModelStatus.Approved) revert WrongModelStatus(md.status);
        if (block.timestamp <= md.deliveryDeadline) revert DeliveryWindowNotOver();
        md.status = ModelStatus.Forfeited;
        Task storage t = tasks[md.taskId];
        emit DeliveryExpired(md.taskId, modelId);
        _fail(t);
        _burn(t, md.taskId, md.contributor, t.terms.contributorDeposit, BurnReason.KeyNotDelivered);
    }

    /// @notice Delivered and not disputed in time (anyone): the contributor is paid.
    function finalizeDelivery(uint256 modelId) external {
        Model storage md = _model(modelId);
        if (md.status != ModelStatus.Delivered) revert WrongModelStatus(md.status);
        if (block.timestamp <= md.disputeDeadline) revert DisputeWindowNotOver();
        _releaseModel(tasks[md.taskId], md, modelId, 0);
    }

    /// @notice Dispute A (initiator, bond = contributorDeposit): "the sealed key does not open to
    ///         the committed key". Only the contributor can settle it, by publishing K.
    function disputeDelivery(uint256 modelId) external payable {
        (Task storage t, Model storage md) = _openDispute(modelId);
        md.status = ModelStatus.DeliveryDisputed;
        uint64 deadline = uint64(block.timestamp) + t.terms.disputeWindow;
        md.responseDeadline = deadline;
        emit DeliveryDisputed(md.taskId, modelId, deadline);
    }

    /// @notice Answer dispute A with K itself (keccak256(K) must equal the commitment): the
    ///         initiator now has the committed key whatever the sealed box held, so the contributor
    ///         is paid. The initiator's bond is BURNT, not paid to the contributor: the contract
    ///         cannot tell a false dispute from a garbage sealing, and paying the bond to the
    ///         contributor would reward a contributor that sealed garbage on purpose (P3).
    function answerDispute(uint256 modelId, bytes32 key) external {
        Model storage md = _model(modelId);
        if (msg.sender != md.contributor) revert NotContributor();
        if (md.status != ModelStatus.DeliveryDisputed) revert WrongModelStatus(md.status);
        if (block.timestamp > md.responseDeadline) revert DisputeWindowOver();
        if (keccak256(abi.encodePacked(key)) != md.keyCommitment) revert KeyMismatch();
        emit KeyRevealed(modelId, key);
        Task storage t = tasks[md.taskId];
        _burn(t, md.taskId, t.initiator, t.terms.contributorDeposit, BurnReason.DisputeBondLost);
        _releaseModel(t, md, modelId, 0);
    }

    /// @notice Dispute A unanswered in time (anyone): deposit burnt, reward and bond back.
    function resolveDispute(uint256 modelId) external {
        Model storage md = _model(modelId);
        if (md.status != ModelStatus.DeliveryDisputed) revert WrongModelStatus(md.status);
        if (block.timestamp <= md.responseDeadline) revert DisputeWindowNotOver();
        _refundModel(tasks[md.taskId], md, modelId);
    }

    /// @notice Dispute B (initiator, bond, publishing K): "the delivered model does not reproduce
    ///         what the verifiers evaluated". Publishing K gives up exclusivity, so a false claim
    ///         costs the initiator; the drawn verifiers re-run the now public model and vote.
    function disputeModel(uint256 modelId, bytes32 key) external payable {
        (Task storage t, Model storage md) = _openDispute(modelId);
        if (keccak256(abi.encodePacked(key)) != md.keyCommitment) revert KeyMismatch();
        md.status = ModelStatus.ModelDisputed;
        uint64 deadline = uint64(block.timestamp) + t.terms.disputeWindow;
        md.responseDeadline = deadline;
        emit KeyRevealed(modelId, key);
        emit ModelDisputed(modelId, deadline);
    }

    /// @notice A verifier drawn for the model adjudicates dispute B, once.
    function voteDispute(uint256 modelId, bool mismatch) external {
        Model storage md = _model(modelId);
        if (md.status != ModelStatus.ModelDisputed) revert WrongModelStatus(md.status);
        if (block.timestamp > md.responseDeadline) revert DisputeWindowOver();
        Ballot storage b = ballots[modelId][msg.sender];
        if (!b.selected) revert NotSelectedVerifier();
        if (b.disputeVoted) revert AlreadyVoted();
        b.disputeVoted = true;
        md.disputeVotes += 1;
        if (mismatch) md.mismatchVotes += 1;
        emit DisputeVoted(modelId, msg.sender, mismatch);
    }

    /// @notice Resolve dispute B (anyone) after the adjudication deadline or once all V voted:
    ///         a mismatch majority of V refunds the initiator (deposit burnt, bond back); otherwise
    ///         the contributor is paid reward + deposit + the bond of the false claim.
    function resolveModelDispute(uint256 modelId) external {
        Model storage md = _model(modelId);
        if (md.status != ModelStatus.ModelDisputed) revert WrongModelStatus(md.status);
        Task storage t = tasks[md.taskId];
        uint256 v = t.terms.verifiersPerModel;
        if (md.disputeVotes < v && block.timestamp <= md.responseDeadline) revert DisputeWindowNotOver();
        if (uint256(md.mismatchVotes) * 2 > v) _refundModel(t, md, modelId);
        else _releaseModel(t, md, modelId, t.terms.contributorDeposit);
    }

    // ------------------------------------------------------------------ withdrawal

    /// @notice Pull everything owed to msg.sender (checks-effects-interactions + reentrancy lock).
    function withdraw() external nonReentrant {
        uint256 amount = owed[msg.sender];
        if (amount == 0) revert NothingToWithdraw();
        owed[msg.sender] = 0;
        totalOwed -= amount;
        emit Withdrawn(msg.sender, amount);
        (bool ok,) = payable(msg.sender).call{value: amount}("");
        if (!ok) revert TransferFailed();
    }

    // ------------------------------------------------------------------ views

    function protocolVersion() external pure returns (bytes32) {
        return keccak256("coopml/2");
    }

    function escrowFor(TaskTerms calldata terms) public pure returns (uint256) {
        return uint256(terms.maxModels)
            * (uint256(terms.rewardPerModel) + uint256(terms.verifiersPerModel) * terms.verifierFee);
    }

    function getTask(uint256 taskId) external view returns (Task memory) {
        return _task(taskId);
    }

    function getModel(uint256 modelId) external view returns (Model memory) {
        return _model(modelId);
    }

    function getMember(uint256 taskId, address account) external view returns (Member memory) {
        return members[taskId][account];
    }

    function getBallot(uint256 modelId, address verifier) external view returns (Ballot memory) {
        return ballots[modelId][verifier];
    }

    function getSelectedVerifiers(uint256 modelId) external view returns (address[] memory) {
        return selectedVerifiers[modelId];
    }

    function getVerifierPool(uint256 taskId) external view returns (address[] memory) {
        return verifierPool[taskId];
    }

    // ------------------------------------------------------------------ internals

    function _checkTerms(TaskTerms calldata terms) internal view {
        if (terms.maxModels == 0 || terms.maxModels > MAX_MODELS) revert InvalidTerms("maxModels not in 1..10000");
        uint256 v = terms.verifiersPerModel;
        if (v == 0 || v % 2 == 0 || v > MAX_VERIFIERS_PER_MODEL) {
            revert InvalidTerms("verifiersPerModel not odd in 1..99");
        }
        if (terms.announceDeadline <= block.timestamp) revert InvalidTerms("announceDeadline not in the future");
        if (terms.announceDeadline > block.timestamp + MAX_ANNOUNCE_PERIOD) {
            revert InvalidTerms("announce period over 90 days");
        }
        if (!_inWindow(terms.verifyWindow)) revert InvalidTerms("verifyWindow not in 1s..30d");
        if (!_inWindow(terms.revealWindow)) revert InvalidTerms("revealWindow not in 1s..30d");
        if (!_inWindow(terms.deliveryWindow)) revert InvalidTerms("deliveryWindow not in 1s..30d");
        if (!_inWindow(terms.disputeWindow)) revert InvalidTerms("disputeWindow not in 1s..30d");
        if (terms.contributorDeposit == 0) revert InvalidTerms("contributorDeposit is zero");
        if (terms.verifierDeposit == 0) revert InvalidTerms("verifierDeposit is zero");
    }

    function _inWindow(uint32 window) internal pure returns (bool) {
        return window >= 1 && window <= MAX_WINDOW;
    }

    function _task(uint256 taskId) internal view returns (Task storage t) {
        t = tasks[taskId];
        if (t.initiator == address(0)) revert UnknownTask(taskId);
    }

    function _openTask(uint256 taskId) internal view returns (Task storage t) {
        t = _task(taskId);
        if (t.closed) revert TaskClosed(taskId);
    }

    /// @dev The open task (before its announce deadline) and the caller's member record; the
    ///      initiator may not take part in its own task.
    function _join(uint256 taskId) internal view returns (Task storage t, Member storage m) {
        t = _openTask(taskId);
        if (block.timestamp > t.terms.announceDeadline) revert AnnounceWindowOver(taskId);
        if (msg.sender == t.initiator) revert InitiatorCannotParticipate();
        m = members[taskId][msg.sender];
    }

    function _model(uint256 modelId) internal view returns (Model storage md) {
        md = models[modelId];
        if (md.status == ModelStatus.None) revert UnknownModel(modelId);
    }

    /// @dev announceModel's checks and reservation: open task before its deadline, a registered
    ///      contributor's first model, a new envelope, a free slot, escrow for the reserve, and at
    ///      least V eligible verifiers now (the caller does not count).
    function _admitModel(uint256 taskId, bytes32 envelopeHash) internal {
        Task storage t = _openTask(taskId);
        if (block.timestamp > t.terms.announceDeadline) revert AnnounceWindowOver(taskId);
        Member storage m = members[taskId][msg.sender];
        if (!m.contributor || m.contributorLeft) revert NotRegisteredContributor();
        if (m.announced) revert AlreadyAnnounced();
        if (announcedEnvelopes[taskId][envelopeHash]) revert DuplicateModel(envelopeHash);
        if (t.modelsActive >= t.terms.maxModels) revert TaskFull(taskId);
        uint256 reserve = _reserve(t);
        // fees of failed models are spent, so a freed slot can outlast the escrow
        if (t.unallocated < reserve) revert EscrowExhausted(t.unallocated, reserve);
        uint256 v = t.terms.verifiersPerModel;
        uint256 eligible = t.activeVerifiers;
        if (m.verifier && !m.verifierLeft && !m.slashed) eligible -= 1;
        if (eligible < v) revert NotEnoughVerifiers(eligible, v);
        m.announced = true;
        announcedEnvelopes[taskId][envelopeHash] = true;
        t.modelsActive += 1;
        t.unallocated -= reserve;
    }

    function _reserve(Task storage t) internal view returns (uint256) {
        return uint256(t.terms.rewardPerModel) + uint256(t.terms.verifiersPerModel) * t.terms.verifierFee;
    }

    /// @dev Checks shared by both disputes: initiator, Delivered, within the dispute window, and
    ///      the exact bond, which joins the task's locked funds.
    function _openDispute(uint256 modelId) internal returns (Task storage t, Model storage md) {
        md = _model(modelId);
        t = tasks[md.taskId];
        if (msg.sender != t.initiator) revert NotInitiator();
        if (md.status != ModelStatus.Delivered) revert WrongModelStatus(md.status);
        if (block.timestamp > md.disputeDeadline) revert DisputeWindowOver();
        uint256 bond = t.terms.contributorDeposit;
        if (msg.value != bond) revert IncorrectBond(bond, msg.value);
        t.locked += bond;
    }

    /// @dev Select V distinct eligible verifiers in memory (nothing is written, so an impossible
    ///      draw leaves no trace); `possible` is false when fewer than V are eligible. Each pick
    ///      probes at most poolSnapshot entries, so the loop always ends.
    function _draw(uint256 taskId, Model storage md, bytes32 seed)
        internal
        view
        returns (bool possible, address[] memory chosen)
    {
        uint256 v = tasks[taskId].terms.verifiersPerModel;
        uint256 n = md.poolSnapshot;
        uint256 drawBlock = md.drawBlock;
        address contributor = md.contributor;
        address[] storage pool = verifierPool[taskId];
        chosen = new address[](v);
        for (uint256 i = 0; i < v; ++i) {
            uint256 j = uint256(keccak256(abi.encode(seed, i))) % n;
            uint256 probes = 0;
            while (!_eligible(taskId, pool[j], contributor, drawBlock) || _contains(chosen, i, pool[j])) {
                if (++probes == n) return (false, chosen);
                j = j + 1 == n ? 0 : j + 1;
            }
            chosen[i] = pool[j];
        }
        possible = true;
    }

    /// @dev Eligible as of the draw block: a verifier slashed after drawBlock still counts, so
    ///      nobody who saw the block hash can shift the draw by settling (slashing) a lazy third
    ///      party; a verifier who left is out at once, since only it can leave (it only removes
    ///      itself, see drawVerifiers).
    function _eligible(uint256 taskId, address candidate, address contributor, uint256 drawBlock)
        internal
        view
        returns (bool)
    {
        if (candidate == contributor) return false;
        Member storage m = members[taskId][candidate];
        if (m.verifierLeft) return false;
        return !m.slashed || m.slashedBlock > drawBlock;
    }

    function _contains(address[] memory list, uint256 len, address a) internal pure returns (bool) {
        for (uint256 k = 0; k < len; ++k) {
            if (list[k] == a) return true;
        }
        return false;
    }

    /// @dev The model failed (terminal): its slot is free again and its reward goes back to the
    ///      initiator's side (unallocated, or straight to the initiator once the task is closed).
    function _fail(Task storage t) internal {
        t.modelsActive -= 1;
        _returnToInitiator(t, t.terms.rewardPerModel);
    }

    /// @dev Draw expired or impossible: nothing was spent, so the whole reserve goes back and the
    ///      contributor's deposit is refunded; `announced` stays set (no second announcement).
    function _cancel(Task storage t, Model storage md) internal {
        md.status = ModelStatus.Cancelled;
        t.modelsActive -= 1;
        _returnToInitiator(t, _reserve(t));
        _credit(t, md.contributor, t.terms.contributorDeposit);
    }

    function _releaseModel(Task storage t, Model storage md, uint256 modelId, uint256 bonus) internal {
        md.status = ModelStatus.Released;
        t.modelsBought += 1;
        emit ModelReleased(md.taskId, modelId, md.contributor);
        _credit(t, md.contributor, uint256(t.terms.rewardPerModel) + t.terms.contributorDeposit + bonus);
    }

    function _refundModel(Task storage t, Model storage md, uint256 modelId) internal {
        md.status = ModelStatus.Refunded;
        emit ModelRefunded(md.taskId, modelId);
        _fail(t);
        _burn(t, md.taskId, md.contributor, t.terms.contributorDeposit, BurnReason.DisputeUpheld);
        _credit(t, t.initiator, t.terms.contributorDeposit); // the bond, back
    }

    function _returnToInitiator(Task storage t, uint256 amount) internal {
        if (t.closed) _credit(t, t.initiator, amount);
        else t.unallocated += amount;
    }

    /// Move `amount` of a task's holdings to `to`'s withdrawable balance.
    function _credit(Task storage t, address to, uint256 amount) internal {
        if (amount == 0) return;
        t.locked -= amount;
        owed[to] += amount;
        totalOwed += amount;
        emit Credited(to, amount);
    }

    /// Move `amount` of a task's holdings out of reach for good (P3).
    function _burn(Task storage t, uint256 taskId, address from, uint256 amount, BurnReason reason) internal {
        t.locked -= amount;
        totalBurnt += amount;
        emit Burnt(taskId, from, amount, reason);
    }
}

// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

/// @title CoopMLv1 (TEST FIXTURE: the v1 contract, kept to show attacks that succeed on it and fail on v2): escrowed cooperative-learning tasks with randomly selected, commit-reveal verifiers.
/// @notice One deployment hosts many tasks, keyed by taskId (1, 2, ...); models are keyed by a
///         global modelId (1, 2, ...). Every payment is a credit to `owed[account]` that the
///         account pulls with `withdraw()`; no function ever sends ETH to anyone but msg.sender.
///         Every action costs O(1) gas in the number of participants: the only loop is the
///         selection of a model's `verifiersPerModel` verifiers, bounded by that task parameter.
/// @dev    Invariant (checked by the Python stateful test):
///         address(this).balance == sum over tasks of `locked` + sum over accounts of `owed`.
contract CoopMLv1 {
    // ------------------------------------------------------------------ types

    /// What the initiator publishes. Stored on-chain only as `specHash`; the full text is in
    /// the TaskPublished event (logs cost ~8 gas/byte, storage ~625 gas/byte).
    struct TaskSpec {
        string objective; // what the model must do, e.g. "MNIST digit classification"
        string criterion; // acceptance criterion verifiers apply, e.g. "fused accuracy improves"
        string modelStructure; // suggested architecture name / description
        string[] dataCids; // IPFS CIDs of data shared with contributors
        bytes32 verificationDataCommitment; // hash of the verifiers' evaluation set
        string hePublicKeyCid; // IPFS CID of the initiator's HE public key
        bytes32 hePublicKeyHash; // sha256/keccak of that key blob, to detect substitution
    }

    /// Economic and timing terms of a task (all amounts in wei, windows in seconds).
    struct TaskTerms {
        uint128 rewardPerModel; // paid to a contributor whose model is approved and key released
        uint128 verifierFee; // paid per selected verifier per model when it reveals honestly
        uint128 contributorDeposit;
        uint128 verifierDeposit;
        uint32 maxModels; // escrow covers this many models
        uint16 verifiersPerModel; // V, odd, >= 1
        uint64 announceDeadline; // block timestamp after which no model can be announced
        uint32 commitWindow; // per model, from its announcement
        uint32 revealWindow; // per model, after the commit window
        uint32 releaseWindow; // per model, after approval, for the contributor to release the key
    }

    struct Task {
        address initiator;
        uint64 publishedBlock; // where the TaskPublished event with the full spec lives
        bool closed;
        uint32 modelsAnnounced;
        uint32 modelsApproved;
        uint32 verifierPoolSize;
        bytes32 specHash; // keccak256(abi.encode(spec))
        TaskTerms terms;
        uint256 unallocated; // escrow not yet reserved for an announced model
        uint256 locked; // everything held for this task: unallocated + reserves + deposits
    }

    enum ModelStatus {
        None,
        Voting, // selected verifiers commit, then reveal
        Approved, // majority yes; waiting for the contributor to release the access key
        Rejected, // majority not reached
        Released, // key released, contributor paid
        Forfeited // approved but key not released in time: reward back, deposit slashed
    }

    struct Model {
        uint64 taskId;
        address contributor;
        ModelStatus status;
        uint16 commits;
        uint16 reveals;
        uint16 yes;
        uint16 no;
        uint64 commitDeadline;
        uint64 revealDeadline;
        uint64 releaseDeadline;
        bytes32 modelHash; // hash of the encrypted model blob
        bytes32 keyCommitment; // keccak256(accessKey)
        string cid; // IPFS CID of the encrypted model
    }

    struct Member {
        bool contributor;
        bool verifier;
        bool announced; // contributor announced its (single) model
        bool verifierSlashed;
        bool contributorDepositSettled; // refunded or slashed
        bool verifierDepositSettled;
        uint32 openAssignments; // selections not yet settled
        uint32 poolIndex; // position in verifierPool[taskId] (valid while verifier && !slashed)
    }

    struct Ballot {
        bool selected;
        bool revealed;
        bool vote;
        bool settled;
        bytes32 commitment; // keccak256(abi.encode(modelId, voter, approve, salt))
    }

    // ------------------------------------------------------------------ state

    uint256 public taskCount;
    uint256 public modelCount;
    mapping(uint256 => Task) internal tasks;
    mapping(uint256 => Model) internal models;
    mapping(uint256 => mapping(address => Member)) internal members;
    mapping(uint256 => address[]) internal verifierPool;
    mapping(uint256 => address[]) internal selectedVerifiers;
    mapping(uint256 => mapping(address => Ballot)) internal ballots;
    /// Model hashes already announced per task: an exact re-sale of a model is refused.
    mapping(uint256 => mapping(bytes32 => bool)) internal announcedHashes;
    /// Pull-payment ledger: wei each account can withdraw.
    mapping(address => uint256) public owed;
    uint256 public totalOwed;
    uint256 private transient reentrancyLock;

    // ------------------------------------------------------------------ errors

    error IncorrectEscrow(uint256 required, uint256 sent);
    error IncorrectDeposit(uint256 required, uint256 sent);
    error InvalidTerms(string reason);
    error UnknownTask(uint256 taskId);
    error UnknownModel(uint256 modelId);
    error TaskClosed(uint256 taskId);
    error TaskStillOpen(uint256 taskId);
    error AnnounceWindowOver(uint256 taskId);
    error AlreadyRegistered();
    error NotRegisteredContributor();
    error NotRegisteredVerifier();
    error InitiatorCannotParticipate();
    error AlreadyAnnounced();
    error DuplicateModel(bytes32 modelHash);
    error NotParticipant();
    error TaskFull(uint256 taskId);
    error NotEnoughVerifiers(uint256 available, uint256 needed);
    error NotSelectedVerifier();
    error AlreadyCommitted();
    error NotCommitted();
    error AlreadyRevealed();
    error CommitWindowOver();
    error RevealNotOpen();
    error RevealWindowOver();
    error RevealMismatch();
    error VotingNotOver();
    error WrongModelStatus(ModelStatus status);
    error NotContributor();
    error KeyMismatch();
    error ReleaseWindowOver();
    error ReleaseWindowNotOver();
    error AlreadySettled();
    error AssignmentsPending(uint256 open);
    error NothingToWithdraw();
    error TransferFailed();
    error Reentrancy();

    // ------------------------------------------------------------------ events

    event TaskPublished(
        uint256 indexed taskId, address indexed initiator, TaskSpec spec, TaskTerms terms, uint256 escrow
    );
    event ContributorRegistered(uint256 indexed taskId, address indexed contributor, uint256 deposit);
    /// `boxKey` is the verifier's X25519 public key: contributors and the initiator seal to it.
    event VerifierRegistered(uint256 indexed taskId, address indexed verifier, uint256 deposit, bytes32 boxKey);
    /// Off-chain protocol message (payload in storage at `cid`), e.g. a sealed model key.
    event Message(
        uint256 indexed taskId, uint256 indexed modelId, address indexed to, address sender, uint8 kind, string cid
    );
    event ModelAnnounced(
        uint256 indexed taskId,
        uint256 indexed modelId,
        address indexed contributor,
        string cid,
        bytes32 modelHash,
        bytes32 keyCommitment,
        uint64 commitDeadline,
        uint64 revealDeadline
    );
    event VerifierSelected(uint256 indexed taskId, uint256 indexed modelId, address indexed verifier);
    event VoteCommitted(uint256 indexed modelId, address indexed verifier);
    event VoteRevealed(uint256 indexed modelId, address indexed verifier, bool approve);
    event ModelFinalized(
        uint256 indexed taskId, uint256 indexed modelId, bool approved, uint16 yes, uint16 no, uint16 reveals
    );
    event KeyReleased(uint256 indexed taskId, uint256 indexed modelId, address indexed contributor, bytes accessKey);
    event ReleaseExpired(uint256 indexed taskId, uint256 indexed modelId, address indexed contributor);
    event VoteSettled(uint256 indexed modelId, address indexed verifier, uint256 fee, bool slashed);
    event Slashed(uint256 indexed taskId, address indexed account, uint256 amount, string reason);
    event TaskClosedEvent(uint256 indexed taskId, uint256 returned);
    event DepositRefunded(uint256 indexed taskId, address indexed account, uint256 amount);
    event Credited(address indexed account, uint256 amount);
    event Withdrawn(address indexed account, uint256 amount);

    // ------------------------------------------------------------------ modifiers

    modifier nonReentrant() {
        if (reentrancyLock != 0) revert Reentrancy();
        reentrancyLock = 1;
        _;
        reentrancyLock = 0;
    }

    // ------------------------------------------------------------------ initiator

    /// @notice Publish a task; msg.value must equal maxModels * (rewardPerModel + V * verifierFee).
    function publishTask(TaskSpec calldata spec, TaskTerms calldata terms) external payable returns (uint256 taskId) {
        if (terms.maxModels == 0) revert InvalidTerms("maxModels is zero");
        if (terms.verifiersPerModel == 0 || terms.verifiersPerModel % 2 == 0) {
            revert InvalidTerms("verifiersPerModel must be odd");
        }
        if (terms.announceDeadline <= block.timestamp) revert InvalidTerms("announceDeadline in the past");
        if (terms.commitWindow == 0 || terms.revealWindow == 0 || terms.releaseWindow == 0) {
            revert InvalidTerms("zero window");
        }
        uint256 required = escrowFor(terms);
        if (msg.value != required) revert IncorrectEscrow(required, msg.value);

        taskId = ++taskCount;
        Task storage t = tasks[taskId];
        t.initiator = msg.sender;
        t.publishedBlock = uint64(block.number);
        t.specHash = keccak256(abi.encode(spec));
        t.terms = terms;
        t.unallocated = required;
        t.locked = required;
        emit TaskPublished(taskId, msg.sender, spec, terms, required);
    }

    /// @notice After the announce deadline anyone may close the task: unallocated escrow goes back
    ///         to the initiator; models already announced keep their reserves until resolved.
    function closeTask(uint256 taskId) external {
        Task storage t = _task(taskId);
        if (t.closed) revert TaskClosed(taskId);
        if (block.timestamp <= t.terms.announceDeadline) revert TaskStillOpen(taskId);
        t.closed = true;
        uint256 amount = t.unallocated;
        t.unallocated = 0;
        _release(t, t.initiator, amount);
        emit TaskClosedEvent(taskId, amount);
    }

    // ------------------------------------------------------------------ registration

    function registerContributor(uint256 taskId) external payable {
        (Task storage t, Member storage m) = _join(taskId);
        if (m.contributor) revert AlreadyRegistered();
        if (msg.value != t.terms.contributorDeposit) revert IncorrectDeposit(t.terms.contributorDeposit, msg.value);
        m.contributor = true;
        t.locked += msg.value;
        emit ContributorRegistered(taskId, msg.sender, msg.value);
    }

    function registerVerifier(uint256 taskId, bytes32 boxKey) external payable {
        (Task storage t, Member storage m) = _join(taskId);
        if (m.verifier) revert AlreadyRegistered();
        if (msg.value != t.terms.verifierDeposit) revert IncorrectDeposit(t.terms.verifierDeposit, msg.value);
        m.verifier = true;
        m.poolIndex = uint32(verifierPool[taskId].length);
        verifierPool[taskId].push(msg.sender);
        t.verifierPoolSize += 1;
        t.locked += msg.value;
        emit VerifierRegistered(taskId, msg.sender, msg.value, boxKey);
    }

    /// @notice Announce an off-chain message to one participant (O(1) gas, no storage written).
    ///         Only the task's initiator and registered members may post; `modelId` 0 means
    ///         "about the task", otherwise it must be a model of this task.
    function postMessage(uint256 taskId, uint256 modelId, address to, uint8 kind, string calldata cid) external {
        Task storage t = _task(taskId);
        Member storage m = members[taskId][msg.sender];
        if (msg.sender != t.initiator && !m.contributor && !m.verifier) revert NotParticipant();
        if (modelId != 0 && models[modelId].taskId != taskId) revert UnknownModel(modelId);
        emit Message(taskId, modelId, to, msg.sender, kind, cid);
    }

    // ------------------------------------------------------------------ contributor

    /// @notice Announce the contributor's (single) model for this task and draw its verifiers.
    /// @param keyCommitment keccak256(accessKey); the key is revealed by releaseKey after approval.
    function announceModel(uint256 taskId, string calldata cid, bytes32 modelHash, bytes32 keyCommitment)
        external
        returns (uint256 modelId)
    {
        Task storage t = _openTask(taskId);
        if (block.timestamp > t.terms.announceDeadline) revert AnnounceWindowOver(taskId);
        Member storage m = members[taskId][msg.sender];
        if (!m.contributor) revert NotRegisteredContributor();
        if (m.announced) revert AlreadyAnnounced();
        if (announcedHashes[taskId][modelHash]) revert DuplicateModel(modelHash);
        if (t.modelsAnnounced >= t.terms.maxModels) revert TaskFull(taskId);
        uint256 v = t.terms.verifiersPerModel;
        uint256 pool = verifierPool[taskId].length;
        uint256 eligible = m.verifier && !m.verifierSlashed ? pool - 1 : pool;
        if (eligible < v) revert NotEnoughVerifiers(eligible, v);

        m.announced = true;
        announcedHashes[taskId][modelHash] = true;
        t.modelsAnnounced += 1;
        t.unallocated -= t.terms.rewardPerModel + v * t.terms.verifierFee; // reserved for this model

        modelId = ++modelCount;
        Model storage md = models[modelId];
        md.taskId = uint64(taskId);
        md.contributor = msg.sender;
        md.status = ModelStatus.Voting;
        md.commitDeadline = uint64(block.timestamp) + t.terms.commitWindow;
        md.revealDeadline = md.commitDeadline + t.terms.revealWindow;
        md.modelHash = modelHash;
        md.keyCommitment = keyCommitment;
        md.cid = cid;
        emit ModelAnnounced(
            taskId, modelId, msg.sender, cid, modelHash, keyCommitment, md.commitDeadline, md.revealDeadline
        );
        _selectVerifiers(taskId, modelId, msg.sender, v, pool);
    }

    /// @notice Reveal the access key of an approved model; credits reward + deposit in the same tx,
    ///         so "contributor paid" and "initiator gets access" cannot be separated.
    function releaseKey(uint256 modelId, bytes calldata accessKey) external {
        Model storage md = _model(modelId);
        if (md.contributor != msg.sender) revert NotContributor();
        if (md.status != ModelStatus.Approved) revert WrongModelStatus(md.status);
        if (block.timestamp > md.releaseDeadline) revert ReleaseWindowOver();
        if (keccak256(accessKey) != md.keyCommitment) revert KeyMismatch();
        md.status = ModelStatus.Released;
        Task storage t = tasks[md.taskId];
        t.modelsApproved += 1;
        members[md.taskId][msg.sender].contributorDepositSettled = true;
        emit KeyReleased(md.taskId, modelId, msg.sender, accessKey);
        _release(t, msg.sender, uint256(t.terms.rewardPerModel) + t.terms.contributorDeposit);
    }

    /// @notice After the release deadline of an approved model whose key was not released, anyone
    ///         may return its reward to the initiator and slash the contributor's deposit to it.
    function expireRelease(uint256 modelId) external {
        Model storage md = _model(modelId);
        if (md.status != ModelStatus.Approved) revert WrongModelStatus(md.status);
        if (block.timestamp <= md.releaseDeadline) revert ReleaseWindowNotOver();
        md.status = ModelStatus.Forfeited;
        Task storage t = tasks[md.taskId];
        members[md.taskId][md.contributor].contributorDepositSettled = true;
        emit ReleaseExpired(md.taskId, modelId, md.contributor);
        emit Slashed(md.taskId, md.contributor, t.terms.contributorDeposit, "key not released");
        _release(t, t.initiator, uint256(t.terms.rewardPerModel) + t.terms.contributorDeposit);
    }

    // ------------------------------------------------------------------ verifier

    /// @param commitment keccak256(abi.encode(modelId, msg.sender, approve, salt))
    function commitVote(uint256 modelId, bytes32 commitment) external {
        Model storage md = _model(modelId);
        if (md.status != ModelStatus.Voting) revert WrongModelStatus(md.status);
        if (block.timestamp > md.commitDeadline) revert CommitWindowOver();
        Ballot storage b = ballots[modelId][msg.sender];
        if (!b.selected) revert NotSelectedVerifier();
        if (b.commitment != bytes32(0)) revert AlreadyCommitted();
        b.commitment = commitment;
        md.commits += 1;
        emit VoteCommitted(modelId, msg.sender);
    }

    /// @notice Reveal opens once every selected verifier committed or the commit window ended.
    function revealVote(uint256 modelId, bool approve, bytes32 salt) external {
        Model storage md = _model(modelId);
        if (md.status != ModelStatus.Voting) revert WrongModelStatus(md.status);
        Ballot storage b = ballots[modelId][msg.sender];
        if (!b.selected) revert NotSelectedVerifier();
        if (b.commitment == bytes32(0)) revert NotCommitted();
        if (b.revealed) revert AlreadyRevealed();
        uint256 v = tasks[md.taskId].terms.verifiersPerModel;
        if (md.commits < v && block.timestamp <= md.commitDeadline) revert RevealNotOpen();
        if (block.timestamp > md.revealDeadline) revert RevealWindowOver();
        if (keccak256(abi.encode(modelId, msg.sender, approve, salt)) != b.commitment) revert RevealMismatch();
        b.revealed = true;
        b.vote = approve;
        md.reveals += 1;
        if (approve) md.yes += 1;
        else md.no += 1;
        emit VoteRevealed(modelId, msg.sender, approve);
    }

    /// @notice Tally once every selected verifier revealed or the reveal window ended (anyone).
    ///         Approved iff yes votes are a strict majority of the V selected verifiers.
    function finalizeModel(uint256 modelId) external {
        Model storage md = _model(modelId);
        if (md.status != ModelStatus.Voting) revert WrongModelStatus(md.status);
        Task storage t = tasks[md.taskId];
        uint256 v = t.terms.verifiersPerModel;
        if (md.reveals < v && block.timestamp <= md.revealDeadline) revert VotingNotOver();
        bool approved = uint256(md.yes) * 2 > v;
        emit ModelFinalized(md.taskId, modelId, approved, md.yes, md.no, md.reveals);
        if (approved) {
            md.status = ModelStatus.Approved;
            md.releaseDeadline = uint64(block.timestamp) + t.terms.releaseWindow;
        } else {
            md.status = ModelStatus.Rejected;
            members[md.taskId][md.contributor].contributorDepositSettled = true;
            emit Slashed(md.taskId, md.contributor, t.terms.contributorDeposit, "model rejected");
            _release(t, t.initiator, uint256(t.terms.rewardPerModel) + t.terms.contributorDeposit);
        }
    }

    /// @notice Settle one selected verifier of a finalized model (anyone may call, so the initiator
    ///         can settle verifiers who never revealed). Fee to the verifier if it revealed and did
    ///         not vote against a clear (> 2/3 of revealed) majority; otherwise the fee returns to
    ///         the initiator and the verifier's whole deposit is slashed to the initiator (once).
    function settleVote(uint256 modelId, address verifier) external {
        Model storage md = _model(modelId);
        if (md.status == ModelStatus.Voting) revert WrongModelStatus(md.status);
        Ballot storage b = ballots[modelId][verifier];
        if (!b.selected) revert NotSelectedVerifier();
        if (b.settled) revert AlreadySettled();
        b.settled = true;
        uint256 taskId = md.taskId;
        Task storage t = tasks[taskId];
        Member storage m = members[taskId][verifier];
        m.openAssignments -= 1;
        uint256 fee = t.terms.verifierFee;
        bool offense;
        string memory reason;
        if (!b.revealed) {
            offense = true;
            reason = "vote not revealed";
        } else {
            uint256 revealed = md.reveals;
            bool clearYes = uint256(md.yes) * 3 > revealed * 2;
            bool clearNo = uint256(md.no) * 3 > revealed * 2;
            if ((b.vote && clearNo) || (!b.vote && clearYes)) {
                offense = true;
                reason = "voted against clear majority";
            }
        }
        if (offense) {
            emit VoteSettled(modelId, verifier, 0, true);
            _release(t, t.initiator, fee);
            if (!m.verifierSlashed) {
                m.verifierSlashed = true;
                m.verifierDepositSettled = true;
                _removeFromPool(taskId, m);
                emit Slashed(taskId, verifier, t.terms.verifierDeposit, reason);
                _release(t, t.initiator, t.terms.verifierDeposit);
            }
        } else {
            emit VoteSettled(modelId, verifier, fee, false);
            _release(t, verifier, fee);
        }
    }

    // ------------------------------------------------------------------ deposits and withdrawal

    /// @notice After the task is closed, a member gets back each deposit not yet refunded or
    ///         slashed. A verifier must have every selection settled first.
    function claimDeposits(uint256 taskId) external {
        Task storage t = _task(taskId);
        if (!t.closed) revert TaskStillOpen(taskId);
        Member storage m = members[taskId][msg.sender];
        uint256 amount;
        if (m.contributor && !m.contributorDepositSettled && !m.announced) {
            // announced models settle their deposit on release / rejection / expiry
            m.contributorDepositSettled = true;
            amount += t.terms.contributorDeposit;
        }
        if (m.verifier && !m.verifierDepositSettled) {
            if (m.openAssignments != 0) revert AssignmentsPending(m.openAssignments);
            m.verifierDepositSettled = true;
            amount += t.terms.verifierDeposit;
        }
        if (amount == 0) revert AlreadySettled();
        emit DepositRefunded(taskId, msg.sender, amount);
        _release(t, msg.sender, amount);
    }

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

    function _task(uint256 taskId) internal view returns (Task storage t) {
        t = tasks[taskId];
        if (t.initiator == address(0)) revert UnknownTask(taskId);
    }

    function _openTask(uint256 taskId) internal view returns (Task storage t) {
        t = _task(taskId);
        if (t.closed) revert TaskClosed(taskId);
    }

    /// @dev The open task and the caller's membership record, for either role; the initiator
    ///      may not take part in its own task.
    function _join(uint256 taskId) internal view returns (Task storage t, Member storage m) {
        t = _openTask(taskId);
        if (msg.sender == t.initiator) revert InitiatorCannotParticipate();
        m = members[taskId][msg.sender];
    }

    function _model(uint256 modelId) internal view returns (Model storage md) {
        md = models[modelId];
        if (md.status == ModelStatus.None) revert UnknownModel(modelId);
    }

    /// Move `amount` of a task's holdings to `to`'s withdrawable balance.
    function _release(Task storage t, address to, uint256 amount) internal {
        if (amount == 0) return;
        t.locked -= amount;
        owed[to] += amount;
        totalOwed += amount;
        emit Credited(to, amount);
    }

    /// Draw v distinct verifiers (never the contributor) from the pool. Each draw hashes a seed
    /// built from block.prevrandao and the previous block hash; a taken slot is resolved by linear
    /// probing, so gas is O(v^2) in the worst case and independent of the pool size.
    function _selectVerifiers(uint256 taskId, uint256 modelId, address contributor, uint256 v, uint256 pool)
        internal
    {
        address[] storage poolArr = verifierPool[taskId];
        address[] storage chosen = selectedVerifiers[modelId];
        bytes32 seed = keccak256(abi.encode(block.prevrandao, blockhash(block.number - 1), modelId, contributor));
        for (uint256 i = 0; i < v; ++i) {
            uint256 j = uint256(keccak256(abi.encode(seed, i))) % pool;
            address candidate = poolArr[j];
            while (candidate == contributor || ballots[modelId][candidate].selected) {
                j = j + 1 == pool ? 0 : j + 1;
                candidate = poolArr[j];
            }
            ballots[modelId][candidate].selected = true;
            members[taskId][candidate].openAssignments += 1;
            chosen.push(candidate);
            emit VerifierSelected(taskId, modelId, candidate);
        }
    }

    /// Swap-and-pop a slashed verifier out of the pool so it is never drawn again (O(1)).
    function _removeFromPool(uint256 taskId, Member storage m) internal {
        address[] storage poolArr = verifierPool[taskId];
        uint256 last = poolArr.length - 1;
        uint32 idx = m.poolIndex;
        if (idx != last) {
            address moved = poolArr[last];
            poolArr[idx] = moved;
            members[taskId][moved].poolIndex = idx;
        }
        poolArr.pop();
        tasks[taskId].verifierPoolSize -= 1;
    }
}

"""Verification contributor: judges the models it is drawn for, without seeing them, and votes.

CKKS mode (the default): once per task it encrypts its own labelled images, with the task's public
audit images mixed in at secret positions, under its own CKKS key; for every model it is drawn for,
it asks the contributor to evaluate that model on those ciphertexts, decrypts the class scores,
and votes by commit-reveal: approve iff the task's criterion holds (accuracy on the declared
classes, coverage, and the paper's value test: the fused accuracy on its images must improve).
Its images never leave it in the clear; the model never reaches it. It keeps what it decrypted:
if the buyer later disputes the model, the revealed key lets it re-run the delivered model on its
own queries and vote whether the two match.

Plaintext mode (trusts verifiers with the model): the contributor seals the envelope key to each
drawn verifier, which checks it against the on-chain commitments before evaluating in the clear.

It never depends on the initiator: draw, evaluation, votes, finalization and settlement all proceed
without it (docs/threat-model.md, P4).
"""

from __future__ import annotations

import enum
import hashlib
import os
from collections.abc import Mapping
from functools import partial
from typing import Any

import numpy as np
from eth_utils import keccak
from pydantic import Field

from coopml.chain import ChainEvent, ModelStatus, Vote
from coopml.errors import ContractRevert
from coopml.roles import evaluation, messages, package
from coopml.roles.agent import Agent, InboxMessage
from coopml.roles.config import VerifierConfig
from coopml.roles.log import EventLog, LogEvent, Role
from coopml.roles.messages import (
    AuditReport,
    DecryptRequest,
    DecryptResponse,
    EvalOffer,
    EvalRequest,
    EvalResponse,
    IvheModel,
    MessageKind,
    ModelKey,
)
from coopml.roles.models import load_delivered
from coopml.roles.sealing import open_sealed, seal, unwrap
from coopml.roles.state import AgentState, Decision, Fact, Outcome
from coopml.roles.task import TaskView, check_deposit, load_task
from coopml.roles.valuation import class_scores, judge
from coopml.storage import Store

FAILED = {ModelStatus.REJECTED, ModelStatus.INCONCLUSIVE, ModelStatus.CANCELLED, ModelStatus.FORFEITED,
          ModelStatus.REFUNDED}
TERMINAL = FAILED | {ModelStatus.RELEASED}
DRAW_BACKSTOP_BLOCKS = 4   # verifiers draw a model only if it is still undrawn this many blocks after the target


BACKSTOP_TURN_BLOCKS = 2   # a verifier's turn: a block for its draw to land and one of slack
BACKSTOP_TURNS = 32        # turns before they repeat: the last comes 4 + 62 blocks after the target (< 256)


def backstop_turn(pool_index: int, model_id: int, pool_snapshot: int) -> int:
    """Blocks past `DRAW_BACKSTOP_BLOCKS` at which this verifier draws a still-undrawn model: one
    verifier per turn of `BACKSTOP_TURN_BLOCKS`, in pool order rotated by the model id (so the
    gas of backstop draws is spread over the pool), the next one only if the previous one's draw
    did not land. Without turns every verifier sent the same draw into the same block and all but
    one paid a revert. Who draws does not matter (the seed is fixed by the target block, P1); a
    verifier registered after the model's announcement takes its turn after that pool's. Past
    `BACKSTOP_TURNS` verifiers share turns, so a large pool still draws long before block 256."""
    size = max(1, pool_snapshot)
    rank = (pool_index + model_id) % size if pool_index < size else pool_index
    return BACKSTOP_TURN_BLOCKS * (rank % BACKSTOP_TURNS)


class Stage(enum.StrEnum):
    SELECTED = "selected"      # drawn; nothing sent yet
    REQUESTED = "requested"    # encrypted queries sent (or, plaintext mode, waiting for the key)
    EVALUATED = "evaluated"    # scores decrypted and kept
    COMMITTED = "committed"    # vote and salt stored, commitment on-chain
    REVEALED = "revealed"
    SETTLED = "settled"


class Assignment(Fact):
    model_id: int
    contributor: str
    stage: Stage = Stage.SELECTED
    request_cid: str | None = None
    labels: list[int] | None = None
    vote: int | None = None
    salt: str | None = None
    reasons: list[str] = Field(default_factory=list)
    accuracy: float | None = None
    gain: float | None = None
    audit_sent: bool = False
    dispute_voted: bool = False


def verifier_wait_ends(verify_deadline: int, verify_window: int) -> int:
    """Chain time at which a drawn verifier stops waiting for the contributor and votes on what it
    has: a margin before the verify deadline, so the commit is mined in time."""
    return int(verify_deadline) - max(15, int(verify_window) // 5)


class Verifier(Agent):
    role = Role.VERIFIER
    idle_step_s = 15.0      # `wakes` + the deadlines `step` registers say when; this is a safety net

    def __init__(self, cfg: VerifierConfig, *, client: Any, store: Store, state: AgentState,
                 log: EventLog | None = None, **kw: Any) -> None:
        super().__init__(client=client, store=store, state=state, log=log, **self.node_args(cfg), **kw)
        self.cfg = cfg
        self.task_id = cfg.task_id
        self.log.task = cfg.task_id
        self.box = self.box_key("box_key")
        self._view: TaskView | None = None
        self._queries: evaluation.QuerySet | None = None

    # ------------------------------------------------------------------ hooks (sim overrides these)

    def decide(self, asg: Assignment, approve: bool) -> Vote:
        return Vote.APPROVE if approve else Vote.REJECT

    def should_reveal(self) -> bool:
        return True

    def request_params(self, offered: dict[str, Any]) -> dict[str, Any]:
        """The CKKS parameters our request uses: the contributor's offer (it refuses any other;
        sim.behaviours.GreedyVerifier asks for a larger ring)."""
        return offered

    def ivhe_query(self, view: TaskView, model_blob: bytes, public_key: bytes) -> bytes:
        """ivhe-insecure: the ciphertext we ask the initiator to decrypt — the encrypted model's outputs
        on our images. (The initiator cannot check that it is; sim.behaviours.OracleAttackingVerifier.)"""
        return evaluation.ivhe_evaluate(model_blob, public_key, tuple(view.manifest.input.shape), self.queries().x)

    # ------------------------------------------------------------------ events

    @property
    def view(self) -> TaskView:
        if self._view is None:
            self._view = load_task(self.client, self.store, self.task_id)
        return self._view

    def on_event(self, ev: ChainEvent) -> None:
        a = ev.args
        if a.get("taskId", self.task_id) != self.task_id:   # events without a task id are checked below
            return
        if ev.name == "VerifierSelected" and a["verifier"] == self.address:
            contributor = self.client.model(int(a["modelId"])).contributor
            self.state.add("assignment", a["modelId"], Assignment(model_id=int(a["modelId"]), contributor=contributor))
        elif ev.name == "ModelAnnounced":
            self.state.add("announced", a["modelId"], Fact())
        elif ev.name == "KeyRevealed" and self.state.fact("assignment", a["modelId"], Assignment) is not None:
            self.state.set(f"revealed_key:{a['modelId']}", bytes(a["key"]).hex())

    def wakes(self, ev: ChainEvent) -> bool:
        """Events about the models this node was drawn for (its ballots), its own draw, a new
        model (a backstop draw to schedule), the task's end and what names this node; not other
        models' ballots, not other nodes' messages (its own come through the inbox)."""
        a = ev.args
        if ev.name == "Message":
            return False
        if "taskId" in a and a["taskId"] != self.task_id:
            return False
        if ev.name in ("ModelAnnounced", "TaskClosedEvent"):
            return True
        if ev.name == "VerifierSelected":
            return bool(a["verifier"] == self.address)
        if "modelId" in a:
            return self.state.fact("assignment", a["modelId"], Assignment) is not None
        return self.address in (a.get("account"), a.get("verifier"), a.get("from"))

    # ------------------------------------------------------------------ step

    def step(self) -> bool:
        view = self.view
        info = self.client.task(self.task_id)
        me = self.client.member(self.task_id, self.address)
        self.wake_after(info.terms.announce_deadline)
        if not me.verifier:
            if info.closed or self.now() > info.terms.announce_deadline or me.verifier_left:
                return self._finish("the task closed before this node joined" if not me.verifier_left else "left the task")
            check_deposit("verifier", info.terms.verifier_deposit, info.terms.reward_per_model, self.cfg.limits)
            self.client.register_verifier(self.task_id, self.box.public)
            self.log(LogEvent.REGISTERED, deposit_wei=info.terms.verifier_deposit)
            return True
        acted = self._prepare_queries(view)
        acted = self._help_draws(me.pool_index) or acted
        assignments = self.state.facts("assignment", Assignment)
        for asg in assignments.values():
            acted = self._advance(view, asg) or acted
        self.sweep_inbox(lambda msg: self._expects(msg, assignments))
        return self._maybe_finish(info, me) or acted

    def _prepare_queries(self, view: TaskView) -> bool:
        """Once per task: the query set (own images + audit images at secret positions), encrypted."""
        if self.state.get("queries_ready"):
            return False
        done = self.jobs.pop("queries")
        if done is not None:
            done.result()
            return True
        if not self.jobs.running("queries"):
            self.jobs.submit("queries", lambda: self._build_queries(view))
        return False

    def _build_queries(self, view: TaskView) -> None:
        ver = view.manifest.verification
        data = self.cfg.data.load(view.manifest.input)
        rng = np.random.default_rng(self.cfg.seed if self.cfg.seed is not None else int.from_bytes(os.urandom(8), "big"))
        n = min(ver.queries, len(data.labels))
        pick = rng.choice(len(data.labels), size=n, replace=False)
        audit_x = None
        if ver.audit_cid and ver.audit_per_request:
            audit_x = load_audit(self.fetch(ver.audit_cid), view)
        own_x = view.manifest.input.apply(data.images[pick])
        qs = evaluation.build_queries(own_x, data.labels[pick], audit_x, ver.audit_per_request, rng)
        self.write_secret("queries.npz", qs.to_bytes())
        self.state.set("queries_ready", True)
        self.log(LogEvent.REQUESTED, queries=len(qs.x), audit=len(qs.audit))

    def queries(self) -> evaluation.QuerySet:
        if self._queries is None:
            blob = self.read_secret("queries.npz")
            assert blob is not None
            self._queries = evaluation.QuerySet.from_bytes(blob)
        return self._queries

    def _help_draws(self, pool_index: int) -> bool:
        """Anyone may draw a model's verifiers once its target block is mined. The contributor and the
        initiator draw first (the initiator 2 blocks later); verifiers are the backstop (`DRAW_BACKSTOP_BLOCKS`),
        so that one who stalls still cannot wait for a better draw (P1: the seed is fixed by then, and
        past 256 blocks the model is cancelled) — one verifier per 2-block turn (`backstop_turn`), so that
        the V verifiers of a task do not all send the same draw into the same block, all but one of
        them reverting and paying for it (with 25 verifiers that wasted gas on every late model)."""
        acted = False
        for mid in list(self.state.facts("announced", Fact)):
            if self.state.get(f"drawn:{mid}"):
                continue
            m = self.client.model(int(mid))
            if m.status != ModelStatus.AWAITING_DRAW:
                self.state.set(f"drawn:{mid}", True)
                continue
            due = m.draw_block + DRAW_BACKSTOP_BLOCKS + backstop_turn(pool_index, int(mid), m.pool_snapshot)
            if self.chain.block_number() > due:
                try:
                    self.client.draw_verifiers(int(mid))
                    acted = True
                except ContractRevert as exc:
                    self.log(LogEvent.REVERT, model=int(mid), error=exc.name)
            else:
                self.wake_at(due + 1)
        return acted

    # ------------------------------------------------------------------ one assignment

    def _late_from(self, m: Any) -> int:
        return verifier_wait_ends(m.verify_deadline, self.view.info.terms.verify_window)

    def _late(self, m: Any) -> bool:
        return self.now() >= self._late_from(m)

    def _advance(self, view: TaskView, asg: Assignment) -> bool:
        mid = asg.model_id
        m = self.client.model(mid)
        if m.verify_deadline:
            self.wake_after(self._late_from(m) - 1, m.verify_deadline)
        self.wake_after(m.reveal_deadline, m.delivery_deadline, m.dispute_deadline, m.response_deadline)
        if asg.stage == Stage.SETTLED:
            return self._dispute(view, asg, m)
        if m.status == ModelStatus.VERIFYING:
            if asg.stage == Stage.SELECTED:
                if self.state.get("queries_ready") and self._request(view, asg, m):
                    return True
                if not self._late(m):
                    return False
                if not self.state.get("queries_ready"):   # our own shortcoming: neither approve nor blame
                    return self._commit(asg, Vote.ABSTAIN, ["this verifier could not prepare its queries in time"])
                return self._commit(asg, Vote.REJECT, ["the contributor made no valid evaluation offer in time"])
            if asg.stage == Stage.REQUESTED:
                if asg.request_cid is not None and self.state.get(f"request_posted:{mid}") is None:
                    if self.sends.running(f"request:{mid}"):
                        return False
                    failed = self.sends.pop(f"request:{mid}")
                    if failed is not None:
                        failed.result()         # why the post failed (logged by the loop); then re-post
                    self._post_request(mid, *self._request_route(view, asg), asg.request_cid)
                    return True
                if self._read_inbox(view, asg, m):
                    return True
                if self._late(m):
                    if view.manifest.verification.mode == "ivhe-insecure" and asg.request_cid is not None:
                        # the contributor did its part; the key holder did not: not the contributor's fault
                        return self._commit(asg, Vote.ABSTAIN, ["the initiator did not decrypt the outputs in time"])
                    return self._commit(asg, Vote.REJECT, ["no valid evaluation from the contributor in time"])
                return False
            if asg.stage == Stage.EVALUATED:
                return self._judge(view, asg, m)
            if asg.stage == Stage.COMMITTED and not self.client.ballot(mid, self.address).committed:
                # vote and salt were stored, the transaction never made it (a crash or a lost node)
                if self.now() <= m.verify_deadline:
                    assert asg.vote is not None and asg.salt is not None
                    self.client.commit_vote(mid, Vote(asg.vote), bytes.fromhex(asg.salt))
                    self.log(LogEvent.COMMITTED, model=mid, resent=True)
                    return True
                return False
            if asg.stage == Stage.COMMITTED:
                ballot_open = m.commits == len(self.client.selected_verifiers(mid)) or self.now() > m.verify_deadline
                if ballot_open and self.now() <= m.reveal_deadline and self.should_reveal():
                    assert asg.vote is not None and asg.salt is not None
                    self.client.reveal_vote(mid, Vote(asg.vote), bytes.fromhex(asg.salt))
                    self._save(asg, stage=Stage.REVEALED)
                    self.log(LogEvent.REVEALED, model=mid, vote=Vote(asg.vote))
                    return True
                return False
            if asg.stage == Stage.REVEALED and self.now() > m.reveal_deadline:
                self.client.finalize_model(mid)
                return True
            return False
        if m.status == ModelStatus.AWAITING_DRAW:
            return False
        # the vote is over: settle this ballot (paid for any revealed vote; burnt if never revealed)
        if not self.client.ballot(mid, self.address).settled:
            self.client.settle_vote(mid, self.address)
        self._save(asg, stage=Stage.SETTLED)
        self.log(LogEvent.SETTLED, model=mid, status=m.status)
        self._send_audit(view, asg, m)
        return True

    def _expects(self, msg: InboxMessage, assignments: dict[str, Assignment]) -> bool:
        """Only the drawn model's contributor talks to us, and only while we wait for it."""
        asg = assignments.get(str(msg.model_id))
        if asg is None or asg.stage not in (Stage.SELECTED, Stage.REQUESTED):
            return False
        if msg.kind == MessageKind.DECRYPT_RESPONSE:       # ivhe-insecure: the key holder answers
            return msg.sender == self.view.info.initiator
        return msg.sender == asg.contributor and msg.kind in (
            MessageKind.EVAL_OFFER, MessageKind.EVAL_RESPONSE, MessageKind.MODEL_KEY, MessageKind.IVHE_MODEL)

    def takes_broadcast(self, message: Mapping[str, Any]) -> bool:
        """The offer of a model this node was drawn for, from that model's contributor (contributors
        broadcast it: its CKKS parameters are public and the same for every drawn verifier)."""
        asg = self.state.fact("assignment", message.get("modelId"), Assignment)
        return (message.get("kind") == int(MessageKind.EVAL_OFFER) and asg is not None
                and asg.stage == Stage.SELECTED and message.get("sender") == asg.contributor)

    def _request(self, view: TaskView, asg: Assignment, m: Any) -> bool:
        """Plaintext mode: wait for the key. CKKS mode: on the contributor's offer, encrypt our queries
        under a fresh key with the offered parameters and ask for an evaluation."""
        if view.manifest.verification.mode in ("plaintext", "ivhe-insecure"):
            self._save(asg, stage=Stage.REQUESTED)
            return True
        for ident, msg in self.inbox().items():
            if msg.model_id != asg.model_id or msg.sender != asg.contributor or msg.kind != MessageKind.EVAL_OFFER:
                continue
            d = self.handle(f"inbox:{ident}", partial(self._accept_offer, view, asg, m, msg), model=asg.model_id,
                            deadline=m.verify_deadline)
            if d is not None and d.outcome == Outcome.DONE:
                return True
        return False

    def _accept_offer(self, view: TaskView, asg: Assignment, m: Any, msg: InboxMessage) -> Decision:
        header, _ = messages.decode(self.fetch(msg.cid), MessageKind.EVAL_OFFER)
        assert isinstance(header, EvalOffer)
        if (header.task_id, header.model_id) != (self.task_id, asg.model_id):
            return Decision(outcome=Outcome.REJECTED, reason="offer names another task or model")
        qs = self.queries()
        limit = view.manifest.verification.poly_modulus_degree or evaluation.MAX_POLY_DEGREE
        enc = evaluation.encrypt_queries(qs, self.request_params(header.params), limit)   # checks them first
        self.write_secret(f"ckks_key_{asg.model_id}", enc.secret)
        req = EvalRequest(task_id=self.task_id, model_id=asg.model_id, envelope_hash=bytes(m.envelope_hash).hex(),
                          n_queries=len(qs.x), offer_cid=msg.cid, context_cid=self.store.put(enc.public_context),
                          batch_cid=self.store.put(enc.batch))
        cid = self.store.put(messages.encode(req))
        self._save(asg, stage=Stage.REQUESTED, request_cid=cid)   # before the message: a restart re-sends the same
        self._post_request(asg.model_id, *self._request_route(view, asg), cid)
        self.log(LogEvent.REQUESTED, model=asg.model_id, contributor=asg.contributor, queries=len(qs.x))
        return Decision(outcome=Outcome.DONE)

    def _request_route(self, view: TaskView, asg: Assignment) -> tuple[str, MessageKind]:
        """Who answers our request: the contributor (CKKS), or the IVHE key holder (ivhe-insecure)."""
        if view.manifest.verification.mode == "ivhe-insecure":
            return view.info.initiator, MessageKind.DECRYPT_REQUEST
        return asg.contributor, MessageKind.EVAL_REQUEST

    def _post_request(self, mid: int, to: str, kind: MessageKind, cid: str) -> None:
        """Post the request, then remember it was posted: a crash in between re-posts the same CID on
        restart (the receiver answers each request message; a duplicate costs it one more answer).
        On a sender thread: the next model's queries are encrypted while this one waits for its block."""
        def post() -> None:
            self.client.post_message(self.task_id, mid, to, int(kind), cid)
            self.state.set(f"request_posted:{mid}", cid)
        self.sends.submit(f"request:{mid}", post)

    def _read_inbox(self, view: TaskView, asg: Assignment, m: Any) -> bool:
        ivhe = view.manifest.verification.mode == "ivhe-insecure"
        for ident, msg in self.inbox().items():
            if msg.model_id != asg.model_id:
                continue
            if ivhe and msg.kind == MessageKind.DECRYPT_RESPONSE and msg.sender == view.info.initiator \
                    and asg.request_cid is not None:
                d = self.handle(f"inbox:{ident}", partial(self._evaluate_decrypted, view, asg, msg),
                                model=asg.model_id, deadline=m.verify_deadline)
                if d is not None and d.outcome == Outcome.DONE:
                    return True
                continue
            if msg.sender != asg.contributor:
                continue
            if ivhe and msg.kind == MessageKind.IVHE_MODEL and asg.request_cid is None:
                d = self.handle(f"inbox:{ident}", partial(self._evaluate_ivhe, view, asg, m, msg),
                                model=asg.model_id, deadline=m.verify_deadline)
            elif msg.kind == MessageKind.EVAL_RESPONSE:
                d = self.handle(f"inbox:{ident}", partial(self._evaluate_response, view, asg, m, msg),
                                model=asg.model_id, deadline=m.verify_deadline)
            elif msg.kind == MessageKind.MODEL_KEY and view.manifest.verification.mode == "plaintext":
                d = self.handle(f"inbox:{ident}", partial(self._evaluate_plaintext, view, asg, m, msg),
                                model=asg.model_id, deadline=m.verify_deadline)
            else:
                continue
            if d is not None and d.outcome == Outcome.DONE:
                return True
        return False

    def _evaluate_response(self, view: TaskView, asg: Assignment, m: Any, msg: InboxMessage) -> Decision:
        header, (outputs,) = messages.decode(self.fetch(msg.cid), MessageKind.EVAL_RESPONSE)
        assert isinstance(header, EvalResponse)
        if header.request_cid != asg.request_cid or header.model_id != asg.model_id:
            return Decision(outcome=Outcome.REJECTED, reason="response answers another request")
        classes = len(view.manifest.input.classes)
        if any(not 0 <= c < classes for c in header.labels):
            return Decision(outcome=Outcome.REJECTED, reason=f"declares classes outside 0..{classes - 1}")
        secret = self.read_secret(f"ckks_key_{asg.model_id}")
        assert secret is not None
        scores = evaluation.decrypt_scores(secret, outputs, len(self.queries().x), classes)
        return self._keep_scores(asg, scores, header.labels)

    def _evaluate_plaintext(self, view: TaskView, asg: Assignment, m: Any, msg: InboxMessage) -> Decision:
        header, _ = messages.decode(open_sealed(self.box, self.fetch(msg.cid), f"model-key:{asg.model_id}".encode()),
                                    MessageKind.MODEL_KEY)
        assert isinstance(header, ModelKey)
        key = bytes.fromhex(header.key)
        if keccak(key) != bytes(m.key_commitment):      # P2: the key must be the committed one
            return Decision(outcome=Outcome.REJECTED, reason="model key does not match the on-chain commitment")
        hdr, body = open_committed(self.fetch(m.cid), key, bytes(m.envelope_hash), self.client.address, self.task_id)
        model = load_delivered(hdr, body, view.manifest.input)
        scores = evaluation.plaintext_scores(model, self.queries().x)
        return self._keep_scores(asg, scores, hdr.labels)

    def _evaluate_ivhe(self, view: TaskView, asg: Assignment, m: Any, msg: InboxMessage) -> Decision:
        """ivhe-insecure: evaluate the encrypted model on our images, then ask the initiator (the IVHE
        key holder) to decrypt the outputs — the paper's flow and its decryption oracle."""
        header, (blob,) = messages.decode(open_sealed(self.box, self.fetch(msg.cid), f"ivhe-model:{asg.model_id}".encode()),
                                          MessageKind.IVHE_MODEL)
        assert isinstance(header, IvheModel)
        if (header.task_id, header.model_id) != (self.task_id, asg.model_id):
            return Decision(outcome=Outcome.REJECTED, reason="encrypted model names another task or model")
        classes = len(view.manifest.input.classes)
        if any(not 0 <= c < classes for c in header.labels):
            return Decision(outcome=Outcome.REJECTED, reason=f"declares classes outside 0..{classes - 1}")
        ver = view.manifest.verification
        if ver.ivhe_public_key_cid is None:
            return Decision(outcome=Outcome.REJECTED, reason="the task names no IVHE public key")
        qs = self.queries()
        outputs = self.ivhe_query(view, blob, self.fetch(ver.ivhe_public_key_cid))
        self.write_secret(f"ivhe_model_{asg.model_id}", blob)
        req = DecryptRequest(task_id=self.task_id, model_id=asg.model_id, n_queries=len(qs.x),
                             reply_box_key=self.box.public.hex())
        sealed = seal(view.delivery_key, messages.encode(req, (outputs,)), f"decrypt:{asg.model_id}".encode())
        cid = self.store.put(sealed)
        self._save(asg, request_cid=cid, labels=sorted(header.labels))   # before the message (restart re-sends)
        self._post_request(asg.model_id, *self._request_route(view, asg), cid)
        self.log(LogEvent.REQUESTED, model=asg.model_id, queries=len(qs.x), decryption=True)
        return Decision(outcome=Outcome.DONE)

    def _evaluate_decrypted(self, view: TaskView, asg: Assignment, msg: InboxMessage) -> Decision:
        header, (plain,) = messages.decode(open_sealed(self.box, self.fetch(msg.cid), f"decrypted:{asg.model_id}".encode()),
                                           MessageKind.DECRYPT_RESPONSE)
        assert isinstance(header, DecryptResponse)
        if header.request_cid != asg.request_cid or header.model_id != asg.model_id:
            return Decision(outcome=Outcome.REJECTED, reason="decryption answers another request")
        blob = self.read_secret(f"ivhe_model_{asg.model_id}")
        assert blob is not None and asg.labels is not None
        scores = evaluation.ivhe_scores(blob, tuple(view.manifest.input.shape), plain, len(self.queries().x),
                                        len(view.manifest.input.classes))
        return self._keep_scores(asg, scores, asg.labels)

    def _keep_scores(self, asg: Assignment, scores: np.ndarray, labels: list[int]) -> Decision:
        buf = scores.astype(np.float64).tobytes()
        self.write_secret(f"scores_{asg.model_id}.f64", buf)
        self._save(asg, stage=Stage.EVALUATED, labels=sorted(labels))
        self.log(LogEvent.EVALUATED, model=asg.model_id, labels=sorted(labels))
        return Decision(outcome=Outcome.DONE)

    def scores(self, mid: int) -> np.ndarray | None:
        raw = self.read_secret(f"scores_{mid}.f64")
        if raw is None:
            return None
        n = len(self.queries().x)
        return np.frombuffer(raw, dtype=np.float64).reshape(n, -1)

    def _judge(self, view: TaskView, asg: Assignment, m: Any) -> bool:
        # the value test compares with every earlier model this verifier evaluated (not failed);
        # wait (until late) for earlier models still being evaluated, so copies announced together
        # are compared with each other too
        baseline, waiting = [], False
        for other in self.state.facts("assignment", Assignment).values():
            if other.model_id >= asg.model_id:
                continue
            if self.client.model(other.model_id).status in FAILED:
                continue
            s = self.scores(other.model_id)
            if s is None or other.labels is None:
                waiting = waiting or other.stage in (Stage.SELECTED, Stage.REQUESTED)
                continue
            baseline.append(class_scores(s[self.queries().own], other.labels))
        if waiting and not self._late(m):
            return False
        scores = self.scores(asg.model_id)
        assert scores is not None and asg.labels is not None
        qs, crit = self.queries(), view.manifest.criterion
        j = judge(scores[qs.own], qs.own_labels, asg.labels, baseline, len(view.manifest.input.classes),
                  crit.min_accuracy, crit.min_labels, crit.min_gain)
        self._save(asg, accuracy=j.accuracy, gain=j.gain)
        self.log(LogEvent.EVALUATED, model=asg.model_id, accuracy=j.accuracy, fused_before=j.fused_before,
                 fused_after=j.fused_after, approve=j.approve)
        return self._commit(self.state.fact("assignment", asg.model_id, Assignment) or asg,
                            self.decide(asg, j.approve), list(j.reasons))

    def _commit(self, asg: Assignment, vote: Vote, reasons: list[str]) -> bool:
        salt = os.urandom(32)
        # vote and salt are stored before the transaction: a restart can always reveal
        self._save(asg, stage=Stage.COMMITTED, vote=int(vote), salt=salt.hex(), reasons=reasons)
        self.client.commit_vote(asg.model_id, vote, salt)
        self.log(LogEvent.COMMITTED, model=asg.model_id)
        return True

    def _send_audit(self, view: TaskView, asg: Assignment, m: Any) -> None:
        """After the vote: the outputs on the public audit images, sealed to the buyer."""
        if asg.audit_sent or m.status not in (ModelStatus.APPROVED, ModelStatus.DELIVERED, ModelStatus.RELEASED):
            return
        scores, qs = self.scores(asg.model_id), self.queries()
        if scores is not None and len(qs.audit):
            report = AuditReport(task_id=self.task_id, model_id=asg.model_id,
                                 audit_indices=[int(i) for i in qs.audit_index],
                                 logits=evaluation.coarsen(scores[qs.audit]).tolist(),   # never full precision
                                 labels=sorted(asg.labels or []))
            blob = seal(view.delivery_key, messages.encode(report), f"audit:{asg.model_id}".encode())
            initiator = self.view.info.initiator
            self.client.post_message(self.task_id, asg.model_id, initiator, int(MessageKind.AUDIT_REPORT),
                                     self.store.put(blob))
        self._save(asg, audit_sent=True)

    # ------------------------------------------------------------------ disputes

    def _dispute(self, view: TaskView, asg: Assignment, m: Any) -> bool:
        """The buyer says the delivered model does not reproduce what we evaluated: with K now public,
        re-run it on our own queries and vote whether it matches."""
        if m.status != ModelStatus.MODEL_DISPUTED or asg.dispute_voted:
            return False
        key_hex = self.state.get(f"revealed_key:{asg.model_id}")
        scores = self.scores(asg.model_id)
        if key_hex is None or scores is None:
            return False

        def check() -> Decision:
            hdr, body = open_committed(self.fetch(m.cid), bytes.fromhex(key_hex), bytes(m.envelope_hash),
                                       self.client.address, self.task_id)
            model = load_delivered(hdr, body, view.manifest.input)
            same = evaluation.reproduces(scores, evaluation.plaintext_scores(model, self.queries().x))
            # the classes it declares must be those it declared to us (what our vote judged)
            same = same and asg.labels is not None and sorted(hdr.labels) == sorted(asg.labels)
            self.client.vote_dispute(asg.model_id, not same)
            self.log(LogEvent.DISPUTED, model=asg.model_id, mismatch=not same)
            return Decision(outcome=Outcome.DONE, reason="mismatch" if not same else "match")
        d = self.handle(f"dispute:{asg.model_id}", check, model=asg.model_id, deadline=m.response_deadline)
        if d is not None:
            self._save(asg, dispute_voted=True)
        return d is not None

    # ------------------------------------------------------------------ the end

    def _maybe_finish(self, info: Any, me: Any) -> bool:
        over = info.closed or self.now() > info.terms.announce_deadline
        if not over:
            return False
        asgs = self.state.facts("assignment", Assignment)
        if any(a.stage != Stage.SETTLED for a in asgs.values()):
            return False
        if any(self.client.model(a.model_id).status not in TERMINAL for a in asgs.values()):
            return False   # stay for possible disputes
        if not info.closed:
            self.client.close_task(self.task_id)
            return True
        if me.verifier and not me.verifier_left and not me.slashed and me.open_assignments == 0:
            self.client.leave_task(self.task_id)
        votes = ", ".join(f"model {a.model_id}: {Vote(a.vote).name if a.vote else '-'}" for a in asgs.values())
        deposit = "deposit BURNT (a vote was never revealed)" if me.slashed else "deposit back"
        return self.finish(f"verified {len(asgs)} model(s) ({votes or 'none drawn'}); {deposit}")

    def _finish(self, summary: str) -> bool:
        return self.finish(summary)

    def _save(self, asg: Assignment, **changes: Any) -> None:
        current = self.state.fact("assignment", asg.model_id, Assignment) or asg
        self.state.put("assignment", asg.model_id, current.model_copy(update=changes))


def open_committed(envelope: bytes, key: bytes, envelope_hash: bytes, contract: str, task_id: int
                   ) -> tuple[package.PackageHeader, bytes]:
    """Check an envelope against both on-chain commitments, then open and unpack it (P2)."""
    if hashlib.sha256(envelope).digest() != envelope_hash:
        raise package.PackageError("envelope does not match the announced hash")
    if keccak(key) is None:  # pragma: no cover - keccak always returns bytes
        raise package.PackageError("no key")
    return package.unpack(unwrap(key, envelope, package.envelope_context(contract, task_id)))


def load_audit(blob: bytes, view: TaskView) -> np.ndarray:
    """The task's public audit images (npz with x; raw values preprocessed by the task's InputSpec)."""
    import io
    try:
        with np.load(io.BytesIO(blob), allow_pickle=False) as z:
            x = z["x"]
    except Exception as exc:  # noqa: BLE001 - any parse failure is a bad payload
        raise package.PackageError(f"audit set is not a valid npz with x: {exc}") from None
    return view.manifest.input.apply(x)

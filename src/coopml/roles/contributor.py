"""Computing contributor: trains on its private data, commits its model, answers encrypted queries, sells.

The model travels once, to the buyer only: as wrap(K, package) in storage, its envelope hash and
keccak(K) committed at announcement; after approval K is sealed to the initiator's delivery key
(`deliverKey`). Before that, verifiers learn only the class scores of the committed model on their
own encrypted images (CKKS mode): the weights never leave this node before payment.

Every hook a misbehaving contributor would change (`build_model`, `scoring_model`, `delivery_key`,
`should_deliver`, `package_model`) is a method, so coopml.sim can script misbehaviours by subclassing
without a single `if behaviour == ...` here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import torch
from pydantic import Field

from coopml.chain import ChainEvent, ModelStatus, key_commitment
from coopml.data import Dataset
from coopml.errors import ContractRevert
from coopml.models import TrainConfig, train_model
from coopml.roles import evaluation, messages, package
from coopml.roles.agent import BROADCAST, Agent, AgentStopped, InboxMessage
from coopml.roles.config import ContributorConfig
from coopml.roles.datasets import split
from coopml.roles.log import EventLog, LogEvent, Role
from coopml.roles.messages import EvalOffer, EvalRequest, EvalResponse, IvheModel, MessageKind, ModelKey
from coopml.roles.models import ModelRecord, build_trainable, load_record, model_bytes_for_delivery, save_record
from coopml.roles.sealing import new_key, seal, wrap
from coopml.roles.state import AgentState, Decision, Fact, Outcome
from coopml.roles.task import TaskView, check_deposit, load_task
from coopml.storage import Store

TERMINAL = {ModelStatus.RELEASED, ModelStatus.REJECTED, ModelStatus.INCONCLUSIVE, ModelStatus.CANCELLED,
            ModelStatus.FORFEITED, ModelStatus.REFUNDED}


class BoxFact(Fact):
    box_key: str = Field(pattern="^[0-9a-f]{64}$")


class BoundRequest(Fact):
    """The one evaluation request of a drawn verifier for a model that this node answers."""

    item: str       # the inbox item that carried it
    cid: str


class Contributor(Agent):
    role = Role.CONTRIBUTOR
    idle_step_s = 15.0      # `wakes` + the deadlines `step` registers say when; this is a safety net

    def __init__(self, cfg: ContributorConfig, *, client: Any, store: Store, state: AgentState,
                 log: EventLog | None = None, **kw: Any) -> None:
        super().__init__(client=client, store=store, state=state, log=log, **self.node_args(cfg), **kw)
        self.cfg = cfg
        self.task_id = cfg.task_id
        self.log.task = cfg.task_id
        self._view: TaskView | None = None
        self._record: ModelRecord | None = None
        self._ckks_plan: Any = None             # the committed model compiled for CKKS (see _scores_plan)

    # ------------------------------------------------------------------ hooks (sim overrides these)

    def build_model(self, view: TaskView) -> torch.nn.Module:
        return build_trainable(self.cfg.model, view.manifest.input)

    def train(self, model: torch.nn.Module, train: Dataset, val: Dataset, cfg: TrainConfig, labels: list[int]) -> None:
        """On the job thread; a node asked to stop stops here too (a restart trains afresh)."""
        train_model(model, train, val, cfg, labels, should_stop=self.stopping.is_set)

    def scoring_model(self, record: ModelRecord) -> torch.nn.Module:
        """The model whose scores answer verifiers: the committed one."""
        return record.model

    def package_model(self, record: ModelRecord) -> bytes:
        body, fmt, arch, feature_layer = model_bytes_for_delivery(record)
        return package.pack(body, fmt, record.labels, arch=arch, feature_layer=feature_layer)

    def delivery_key(self, key: bytes) -> bytes:
        """The key sealed to the buyer (an honest node: the committed one)."""
        return key

    def should_deliver(self) -> bool:
        return True

    def answer_delivery_dispute(self) -> bool:
        return True

    # ------------------------------------------------------------------ task

    @property
    def view(self) -> TaskView:
        if self._view is None:
            self._view = load_task(self.client, self.store, self.task_id)
        return self._view

    @property
    def model_id(self) -> int | None:
        return self.state.get("model_id")

    def on_event(self, ev: ChainEvent) -> None:
        a = ev.args
        if a.get("taskId", self.task_id) != self.task_id:   # events without a task id are checked below
            return
        if "taskId" not in a:
            return
        if ev.name == "ModelAnnounced" and a["contributor"] == self.address:
            self.state.set("model_id", int(a["modelId"]))
        elif ev.name == "VerifierRegistered":
            self.state.add("box", a["verifier"], BoxFact(box_key=bytes(a["boxKey"]).hex()))
        elif ev.name == "VerifierSelected" and a["modelId"] == self.model_id:
            self.state.add("selected", a["verifier"], Fact())

    def wakes(self, ev: ChainEvent) -> bool:
        """Events about this node's own model, the task's end, what names this node, and — before
        its model is announced — a verifier joining (an announcement refused for too few verifiers
        is retried then). Not other contributors' models, not other nodes' messages (its own come
        through the inbox): at N = 50 those were most of the task's events."""
        a = ev.args
        if ev.name == "Message":
            return False
        if self.model_id is not None and "modelId" in a:
            return int(a["modelId"]) == self.model_id
        if "taskId" in a and a["taskId"] != self.task_id:
            return False
        if self.address in (a.get("account"), a.get("contributor"), a.get("from")):
            return True
        return ev.name == "TaskClosedEvent" or (self.model_id is None and ev.name == "VerifierRegistered")

    # ------------------------------------------------------------------ step

    def step(self) -> bool:
        view = self.view
        info = self.client.task(self.task_id)
        me = self.client.member(self.task_id, self.address)
        self.wake_after(info.terms.announce_deadline)
        open_for_models = not info.closed and self.now() <= info.terms.announce_deadline
        if not me.contributor:
            if not open_for_models:
                return self._finish("the task closed before this node joined")
            check_deposit("contributor", info.terms.contributor_deposit, info.terms.reward_per_model, self.cfg.limits)
            mode = view.manifest.verification.mode
            if mode != "plaintext" and self.cfg.model.onnx is not None:
                raise AgentStopped(f"an ONNX file cannot be evaluated under {mode}; give the model as `arch` or "
                                   "`factory`, or join a task whose verification mode is plaintext")
            # refuse BEFORE paying if the verification mode cannot evaluate this model
            if mode == "ckks":
                limit = view.manifest.verification.poly_modulus_degree or evaluation.MAX_POLY_DEGREE
                try:
                    evaluation.check_evaluable(self.build_model(view), tuple(view.manifest.input.shape), limit)
                except evaluation.EvaluationError as exc:
                    raise AgentStopped(str(exc)) from None
            elif mode == "ivhe-insecure":
                try:
                    self._ivhe_encrypt(view, self.build_model(view))
                except evaluation.EvaluationError as exc:
                    raise AgentStopped(str(exc)) from None
            if self.state.get("prepared") is None:   # train while the registration waits for its block
                self.jobs.submit("train", lambda: self._prepare(view))
            self.client.register_contributor(self.task_id)
            self.log(LogEvent.REGISTERED, deposit_wei=info.terms.contributor_deposit)
            return True
        if self.model_id is None:
            if me.contributor_left:
                return self._finish("left the task")
            if not open_for_models:
                return self._leave("announcements closed before this node's model was ready")
            return self._prepare_and_announce(view)
        return self._follow(view, self.model_id)

    def _prepare_and_announce(self, view: TaskView) -> bool:
        prepared = self.state.get("prepared")
        if prepared is None:
            if not self.jobs.running("train"):
                done = self.jobs.pop("train")
                if done is not None:
                    done.result()          # re-raises a training failure: a bug or bad data, not a peer's fault
                    return True
                self.jobs.submit("train", lambda: self._prepare(view))
            return False
        try:
            self.client.announce_model(self.task_id, bytes.fromhex(prepared["envelope_hash"]),
                                       bytes.fromhex(prepared["key_commitment"]), prepared["cid"])
        except ContractRevert as exc:
            if exc.name == "TaskFull":
                return self._leave("the task already has all the models it pays for")
            if exc.name == "NotEnoughVerifiers":
                return False   # verifiers may still join; the announce deadline bounds the wait
            raise
        self.log(LogEvent.ANNOUNCED, cid=prepared["cid"], labels=prepared["labels"])
        return True

    def _prepare(self, view: TaskView) -> None:
        """Train, package, encrypt and store the model; everything the announcement needs is on disk
        (and K in a 0600 secret file) before the transaction that commits to it."""
        data = self.cfg.data.load(view.manifest.input)
        train, val = split(data, self.cfg.val_fraction, seed=self.cfg.train.seed)
        torch.manual_seed(self.cfg.train.seed)          # reproducible initial weights
        model = self.build_model(view)
        labels = sorted(self.cfg.labels) if self.cfg.labels else sorted(int(c) for c in np.unique(data.labels))
        self.train(model, train, val, self.cfg.train, labels)
        record = ModelRecord(model=model, labels=labels, source=self.cfg.model, spec=view.manifest.input)
        save_record(record, self.workdir / "model")
        self._record = record
        if self.read_secret("model_key") is None:
            self.write_secret("model_key", new_key())
        key = self.read_secret("model_key")
        assert key is not None
        envelope = wrap(key, self.package_model(record), package.envelope_context(self.client.address, self.task_id))
        cid = self.store.put(envelope)
        self.store.pin(cid)
        self.state.set("prepared", {"cid": cid, "envelope_hash": hashlib.sha256(envelope).hexdigest(),
                                    "key_commitment": key_commitment(key).hex(), "labels": labels})
        self.log(LogEvent.TRAINED, labels=labels, bytes=len(envelope))

    def record(self) -> ModelRecord:
        if self._record is None:
            self._record = load_record(self.workdir / "model", self.cfg.model, self.view.manifest.input)
        return self._record

    # ------------------------------------------------------------------ after the announcement

    def _follow(self, view: TaskView, mid: int) -> bool:
        m = self.client.model(mid)
        now = self.now()
        self.wake_after(m.verify_deadline, m.reveal_deadline, m.delivery_deadline, m.dispute_deadline,
                        m.response_deadline)
        if m.status == ModelStatus.AWAITING_DRAW:
            if self.chain.block_number() > m.draw_block:
                self.client.draw_verifiers(mid)
                self.log(LogEvent.DRAWN, model=mid)
                return True
            if view.manifest.verification.mode == "ckks" and self.state.get("offer_params") is None \
                    and not self.jobs.running("offer"):
                # compile while the draw block is sealed, so the offer goes out at once — on the job
                # thread: compiled in the loop it held the node for seconds past its draw block under
                # load, and the initiator and verifiers (whose turns come later) sent the same draw
                # into one block, all but one paying for a revert
                done = self.jobs.pop("offer")
                if done is not None and done.exception() is not None:
                    # tried again here; if it fails again, sending the offer fails in the loop, where
                    # the agent's error handling decides (retry, or stop with a message)
                    exc = done.exception()
                    self.log(LogEvent.RETRY, model=mid, item="offer", error=f"{type(exc).__name__}: {exc}"[:300])
                self.jobs.submit("offer", lambda: self._offer_params(view))
            self.wake_at(m.draw_block + 1)
            return False
        if m.status == ModelStatus.VERIFYING:
            if now > m.reveal_deadline:
                # nobody else may be left to move the model on (verifiers and buyer gone): we do
                self.client.finalize_model(mid)
                return True
            if view.manifest.verification.mode == "plaintext":
                return self._send_keys(mid, m)
            if view.manifest.verification.mode == "ivhe-insecure":
                return self._send_ivhe_models(view, mid, m)
            acted = self._send_offers(view, mid, m)
            return self._answer_requests(view, mid, m) or acted
        if m.status == ModelStatus.APPROVED:
            if not self.should_deliver():
                return False
            key = self.read_secret("model_key")
            assert key is not None
            sealed = seal(view.delivery_key, self.delivery_key(key), package.delivery_context(self.client.address, mid))
            self.client.deliver_key(mid, sealed)
            self.log(LogEvent.DELIVERED, model=mid)
            return True
        if m.status == ModelStatus.DELIVERED and now > m.dispute_deadline:
            self.client.finalize_delivery(mid)
            return True
        if m.status == ModelStatus.DELIVERY_DISPUTED and self.answer_delivery_dispute():
            key = self.read_secret("model_key")
            assert key is not None
            self.client.answer_dispute(mid, key)     # publishes K: the contract checks it against the commitment
            self.log(LogEvent.DISPUTED, model=mid, answered=True)
            return True
        if m.status == ModelStatus.MODEL_DISPUTED and now > m.response_deadline:
            self.client.resolve_model_dispute(mid)
            return True
        if m.status in TERMINAL:
            self.sweep_inbox(lambda msg: False)
            return self._settle(m)
        return False

    def _send_offers(self, view: TaskView, mid: int, m: Any) -> bool:
        """The public CKKS parameters this model needs, once for all drawn verifiers: one message
        to every node (`BROADCAST`; only this model's drawn verifiers take it), not one transaction
        per verifier awaited one after another."""
        item = f"offer:{mid}"
        if self.state.decision(item) is not None:
            return False
        self.handle(item, partial(self._post_offer, view, mid, BROADCAST), model=mid, deadline=m.verify_deadline)
        return True

    def _offer_params(self, view: TaskView) -> dict[str, Any]:
        """The CKKS parameters of the committed model (compiled once: seconds of CPU)."""
        params = self.state.get("offer_params")
        if params is None:
            params = evaluation.offer_params(self.scoring_model(self.record()), tuple(view.manifest.input.shape),
                                             self._scores_plan(view))
            self.state.set("offer_params", params)
        return dict(params)

    def _post_offer(self, view: TaskView, mid: int, to: str) -> Decision:
        params = self._offer_params(view)
        cid = self.store.put(messages.encode(EvalOffer(task_id=self.task_id, model_id=mid, params=params)))
        self.client.post_message(self.task_id, mid, to, int(MessageKind.EVAL_OFFER), cid)
        return Decision(outcome=Outcome.DONE)

    def _answer_requests(self, view: TaskView, mid: int, m: Any) -> bool:
        acted = False
        self.sweep_inbox(lambda msg: msg.kind == MessageKind.EVAL_REQUEST and msg.model_id == mid)
        for ident, req in self.inbox().items():
            if self.sends.running(f"inbox:{ident}"):
                continue
            self.handle(f"inbox:{ident}", partial(self._answer, view, mid, m, req, f"inbox:{ident}"), model=mid,
                        deadline=m.verify_deadline)
            acted = True
        return acted

    def _answer(self, view: TaskView, mid: int, m: Any, req: InboxMessage, item: str) -> Decision | None:
        """Evaluate one request under its verifier's key and post the answer on a sender thread (the
        next request is evaluated while this one waits for its block); DONE once it is mined. The
        caller skips items whose post is still running."""
        sent = self.sends.pop(item)
        if sent is not None:
            sent.result()              # a failed post re-raises: transient -> retried, revert -> logged
            return Decision(outcome=Outcome.DONE)
        if req.sender not in self.client.selected_verifiers(mid):
            return Decision(outcome=Outcome.IGNORED, reason="sender was not drawn for this model")
        if self.now() > m.verify_deadline:
            return Decision(outcome=Outcome.EXPIRED, reason="verify window over")
        header, _ = messages.decode(self.fetch(req.cid), MessageKind.EVAL_REQUEST)
        assert isinstance(header, EvalRequest)
        if (header.task_id, header.model_id) != (self.task_id, mid):
            return Decision(outcome=Outcome.REJECTED, reason="request names another task or model")
        if header.envelope_hash != bytes(m.envelope_hash).hex():
            return Decision(outcome=Outcome.REJECTED, reason="request is for another envelope")
        if header.n_queries > view.manifest.verification.max_queries:
            return Decision(outcome=Outcome.REJECTED, reason=f"{header.n_queries} queries exceed the task's maximum")
        refusal = self._bind_request(mid, req, item)
        if refusal is not None:
            return refusal
        ctx, batch = self.fetch(header.context_cid), self.fetch(header.batch_cid)
        outputs, n = evaluation.evaluate_encrypted(self.scoring_model(self.record()), tuple(view.manifest.input.shape),
                                                   ctx, batch, view.manifest.verification.max_queries,
                                                   self._scores_plan(view), offered=self._offer_params(view))
        reply = EvalResponse(task_id=self.task_id, model_id=mid, request_cid=req.cid, n_queries=n,
                             labels=self.record().labels)
        cid = self.store.put(messages.encode(reply, (outputs,)))

        def post() -> None:
            self.client.post_message(self.task_id, mid, req.sender, int(MessageKind.EVAL_RESPONSE), cid)
            self.log(LogEvent.ANSWERED, model=mid, verifier=req.sender, queries=n, bytes=len(outputs))
        self.sends.submit(item, post)
        return None

    def _bind_request(self, mid: int, req: InboxMessage, item: str) -> Decision | None:
        """One evaluation per drawn verifier and model: the first valid request message binds
        (durably, before the work, so a restart mid-evaluation finishes that one). Without it a
        drawn verifier could post requests until the verify deadline, each answered: any number of
        `max_queries` budgets on the model, and CPU the honest verifiers' answers wait behind. An
        honest verifier re-posts only the same request CID (after a crash between its post and
        its record), which the first answer already serves."""
        ident = f"{mid}:{req.sender}"
        self.state.add("bound_request", ident, BoundRequest(item=item, cid=req.cid))
        bound = self.state.fact("bound_request", ident, BoundRequest)
        assert bound is not None
        if bound.item == item:
            return None
        if bound.cid == req.cid:
            return Decision(outcome=Outcome.IGNORED, reason=f"a repeat of request {req.cid}, answered once")
        return Decision(outcome=Outcome.REJECTED, reason=f"one request per verifier and model: {req.sender} "
                        f"already asked with {bound.cid}")

    def _send_keys(self, mid: int, m: Any) -> bool:
        """Plaintext mode: the envelope key to each drawn verifier, sealed to its box key."""
        key = self.read_secret("model_key")
        assert key is not None
        return self._seal_to_drawn(mid, m, MessageKind.MODEL_KEY, "model-key", lambda: messages.encode(
            ModelKey(task_id=self.task_id, model_id=mid, key=key.hex())))

    def _seal_to_drawn(self, mid: int, m: Any, kind: MessageKind, label: str, body: Callable[[], bytes]) -> bool:
        """Once to each drawn verifier whose box key is known: `body()` sealed to that key (context
        `label:mid`), announced as `kind`. One recorded item per verifier: a restart never re-sends."""
        acted = False
        for verifier in self.client.selected_verifiers(mid):
            item = f"{label}:{mid}:{verifier}"
            box = self.state.fact("box", verifier, BoxFact)
            if box is None or self.state.decision(item) is not None:
                continue

            def send(v: str = verifier, b: BoxFact = box) -> Decision:
                cid = self.store.put(seal(bytes.fromhex(b.box_key), body(), f"{label}:{mid}".encode()))
                self.client.post_message(self.task_id, mid, v, int(kind), cid)
                return Decision(outcome=Outcome.DONE)
            self.handle(item, send, model=mid, deadline=m.verify_deadline)
            acted = True
        return acted

    def _scores_plan(self, view: TaskView) -> Any:
        """The committed model compiled for CKKS, once (the offer and every verifier's request use it)."""
        if self._ckks_plan is None:
            self._ckks_plan = evaluation.compile_scores(self.scoring_model(self.record()),
                                                        tuple(view.manifest.input.shape))
        return self._ckks_plan

    def _ivhe_encrypt(self, view: TaskView, model: torch.nn.Module) -> bytes:
        ver = view.manifest.verification
        if ver.ivhe_public_key_cid is None:
            raise evaluation.EvaluationError("the task's ivhe-insecure mode names no IVHE public key")
        return evaluation.ivhe_encrypt_model(model, tuple(view.manifest.input.shape),
                                             self.fetch(ver.ivhe_public_key_cid), ver.ivhe_p, ver.ivhe_q)

    def _send_ivhe_models(self, view: TaskView, mid: int, m: Any) -> bool:
        """ivhe-insecure mode (the paper's flow): the model, first layer encrypted under the initiator's
        IVHE key, to each drawn verifier, sealed to its box key (never readable by the initiator from
        the store: it holds the IVHE secret key)."""
        def body() -> bytes:
            blob = self.read_secret("ivhe_model")
            if blob is None:
                blob = self._ivhe_encrypt(view, self.scoring_model(self.record()))
                self.write_secret("ivhe_model", blob)
            return messages.encode(IvheModel(task_id=self.task_id, model_id=mid, labels=self.record().labels), (blob,))
        return self._seal_to_drawn(mid, m, MessageKind.IVHE_MODEL, "ivhe-model", body)

    # ------------------------------------------------------------------ the end

    def _settle(self, m: Any) -> bool:
        if self.client.owed(self.address):
            self.log(LogEvent.WITHDRAWN, wei=self.client.withdraw())
            return True
        reward = self.view.info.terms.reward_per_model
        outcome = {ModelStatus.RELEASED: f"RELEASED, paid {reward / 1e18:g} ETH (+ deposit back)",
                   ModelStatus.REJECTED: "REJECTED by the verifiers, deposit burnt",
                   ModelStatus.INCONCLUSIVE: "INCONCLUSIVE (no majority), deposit refunded",
                   ModelStatus.CANCELLED: "CANCELLED (verifier draw impossible), deposit refunded",
                   ModelStatus.FORFEITED: "FORFEITED (key not delivered), deposit burnt",
                   ModelStatus.REFUNDED: "REFUNDED to the buyer after a dispute, deposit burnt"}[m.status]
        return self._finish(f"model {m.model_id} {outcome}")

    def _leave(self, why: str) -> bool:
        me = self.client.member(self.task_id, self.address)
        if me.contributor and not me.contributor_left and not me.announced:
            self.client.leave_task(self.task_id)
        return self._finish(f"{why}; deposit refunded")

    def _finish(self, summary: str) -> bool:
        return self.finish(summary)


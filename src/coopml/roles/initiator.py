"""Application initiator: publishes the task, buys approved models, checks them, fuses them.

It is not needed for verification (the contract draws verifiers, verifiers evaluate with the
contributors and vote; anyone finalizes), so it cannot make an honest model fail by staying
silent, and nothing slashed is ever paid to it (docs/threat-model.md). What it holds: its delivery
box key (contributors seal model keys to it: a bought model reaches the buyer and nobody else) and
its own data, on which it fuses the bought models into a MetaModel.

Before escrowing anything it checks the task is feasible (the manifest validates; the suggested
architecture can be evaluated under the verification mode), the contract is CoopML (the runner) and
the escrow is within its limits. After a delivery it checks the key against the commitment and the
model against the verifiers' audit reports; a mismatch is disputed, never silently absorbed.
"""

from __future__ import annotations

import hashlib
import io
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from coopml.chain import ChainEvent, ModelStatus, TaskTerms, key_commitment
from coopml.errors import ContractRevert, CoopmlError, DataError, ModelFileError
from coopml.fusion import FusionCancelled
from coopml.roles import evaluation, messages, package
from coopml.roles.agent import Agent, AgentStopped, InboxMessage
from coopml.roles.config import InitiatorConfig
from coopml.roles.fusing import METAMODEL_FILE
from coopml.roles.log import EventLog, LogEvent, Role
from coopml.roles.messages import AuditReport, DecryptRequest, DecryptResponse, MessageKind
from coopml.roles.models import load_delivered
from coopml.roles.sealing import SealError, open_sealed, seal
from coopml.roles.state import AgentState, Decision, Fact, Outcome
from coopml.roles.task import TaskView, TermsRefused, load_task
from coopml.roles.verifier import open_committed
from coopml.storage import Store
from coopml.task import TaskManifest, builtin_manifest, builtin_names

if TYPE_CHECKING:
    from coopml.roles.fusing import InitiatorFusion

TERMINAL = {ModelStatus.RELEASED, ModelStatus.REJECTED, ModelStatus.INCONCLUSIVE, ModelStatus.CANCELLED,
            ModelStatus.FORFEITED, ModelStatus.REFUNDED}


# the initiator draws a model's verifiers only if its contributor has not this many blocks after the
# target (the contributor draws at once; verifiers are the last backstop, DRAW_BACKSTOP_BLOCKS)
INITIATOR_DRAW_DELAY_BLOCKS = 2


# a model record read in an earlier step is read again when an event names the model, when one of
# its deadlines (or its draw block) has passed since, or at the latest this long after the last read
MODEL_RECHECK_S = 15.0


@dataclass(frozen=True)
class _SeenRecord:
    """A model's on-chain record and when this node read it (chain time, block, monotonic clock)."""
    record: Any
    chain_time: int
    block: int
    monotonic: float

    def may_have_moved(self, block: int, chain_time: int) -> bool:
        """Whether the chain may now hold something else for this model although no event named it:
        a deadline or the draw's delay passed since the read (what `_advance` acts on), or the
        safety interval. Every change of a model record emits an event naming the model
        (contracts/CoopML.sol: draws, votes, finalization, delivery, disputes, cancellation)."""
        if time.monotonic() - self.monotonic >= MODEL_RECHECK_S:
            return True
        m = self.record
        for deadline in m.deadlines:
            if deadline and self.chain_time <= deadline < chain_time:
                return True
        draw_due = m.draw_block + INITIATOR_DRAW_DELAY_BLOCKS
        return bool(m.draw_block) and self.block <= draw_due < block


def finalize_backstop_delay(dispute_window: int) -> int:
    """Seconds of chain time the initiator leaves a delivered model's `finalizeDelivery` to its
    contributor (who is owed the payment and sends it as soon as the dispute window is over) before
    sending it itself, as the backstop: both at once put the same call into one block and one paid
    for a revert (15 of 22 bought models at N = 50). A twentieth of the window, 2-60 s: the task's
    windows follow its chain (3 s for the dev windows on 1-s blocks, 15 s for the 300-s default,
    60 s = 4 blocks of the paper's 15-s chain for windows of 20 minutes and more)."""
    return min(60, max(2, int(dispute_window) // 20))


def audit_wait_ends(dispute_deadline: int, dispute_window: int) -> int:
    """Chain time at which the buyer stops waiting for drawn verifiers' audit reports on a delivered
    model and checks it with those it has: late enough for the reports, early enough to dispute."""
    return int(dispute_deadline) - max(15, int(dispute_window) // 3)


class Bought(Fact):
    model_id: int
    labels: list[int]
    cid: str
    envelope_hash: str
    fused: bool = False                  # in the MetaModel, or left out (fusion_error says why)
    fusion_error: str | None = None


class Initiator(Agent):
    role = Role.INITIATOR
    # the records read in the running step (see _model); None outside a step. A class default, so
    # that an agent built without __init__ (the unit tests' bare agents) is outside a step too
    _models_this_step: dict[int, Any] | None = None

    def __init__(self, cfg: InitiatorConfig, *, client: Any, store: Store, state: AgentState,
                 log: EventLog | None = None, **kw: Any) -> None:
        super().__init__(client=client, store=store, state=state, log=log, **self.node_args(cfg), **kw)
        self.cfg = cfg
        self.box = self.box_key("delivery_key")
        self._view: TaskView | None = None
        self._fusion: InitiatorFusion | None = None     # created on the fusion job's thread
        self._fusing: set[int] = set()                  # the models the running fusion job covers
        self._fuse_cancel = threading.Event()           # set: that job stops and a new one covers all
        self.log.task = self.task_id
        self._seen_records: dict[int, _SeenRecord] = {}  # see _model
        self._named_models: set[int] = set()             # named by an event since their record was read
        self._step_head: tuple[int, int] | None = None   # (block, time) of the running step

    # ------------------------------------------------------------------ task

    @property
    def task_id(self) -> int | None:
        return self.state.get("task_id")

    @property
    def view(self) -> TaskView:
        assert self.task_id is not None
        if self._view is None:
            self._view = load_task(self.client, self.store, self.task_id)
        return self._view

    def manifest(self) -> TaskManifest:
        m = self.cfg.manifest
        base = builtin_manifest(m) if m in builtin_names() else TaskManifest.from_file(m)
        if self.cfg.audit_data is not None and self.cfg.n_audit:
            audit = self.cfg.audit_data.load(base.input)
            pick = np.random.default_rng(self.cfg.seed).choice(len(audit.labels), size=min(self.cfg.n_audit,
                                                                                              len(audit.labels)),
                                                                replace=False)
            buf = io.BytesIO()
            np.savez(buf, x=audit.images[pick])
            cid = self.store.put(buf.getvalue())
            self.store.pin(cid)
            base = base.replace(verification={**base.verification.model_dump(), "audit_cid": cid})
        if base.verification.mode == "ivhe-insecure":
            # the paper's design: this node holds the IVHE secret key and decrypts for the verifiers
            if self.read_secret("ivhe_secret_key") is None:
                secret, public = evaluation.ivhe_keygen()
                self.write_secret("ivhe_public_key", public)
                self.write_secret("ivhe_secret_key", secret)
            public_key = self.read_secret("ivhe_public_key")
            assert public_key is not None
            cid = self.store.put(public_key)
            self.store.pin(cid)
            base = base.replace(verification={**base.verification.model_dump(), "ivhe_public_key_cid": cid})
        return base

    def publish(self) -> int:
        manifest = self.manifest()
        if manifest.model.arch and manifest.verification.mode != "plaintext":
            # a task nobody can be verified for must fail here, before any escrow
            from coopml.models import build_model
            model, shape = build_model(manifest.model.arch), tuple(manifest.input.shape)
            if manifest.verification.mode == "ckks":
                limit = manifest.verification.poly_modulus_degree or evaluation.MAX_POLY_DEGREE
                try:
                    evaluation.check_evaluable(model, shape, limit)
                except evaluation.EvaluationError as exc:
                    raise TermsRefused(str(exc)) from None
            else:
                public = self.read_secret("ivhe_public_key")
                assert public is not None
                try:
                    evaluation.ivhe_encrypt_model(model, shape, public, manifest.verification.ivhe_p,
                                                  manifest.verification.ivhe_q)
                except evaluation.EvaluationError as exc:
                    raise TermsRefused(str(exc)) from None
        econ, win = manifest.economics, manifest.windows
        if econ.escrow_wei > self.cfg.limits.max_escrow_wei:
            raise TermsRefused(f"the manifest asks for an escrow of {econ.escrow_wei / 1e18:g} ETH, above this "
                               f"node's limit of {self.cfg.limits.max_escrow_wei / 1e18:g} ETH")
        data = manifest.to_bytes()
        cid = self.store.put(data)
        self.store.pin(cid)
        # the deadline is fixed once: a retry after a crash must send the very same transaction
        deadline = self.state.get("announce_deadline") or self.now() + win.announce_s
        self.state.set("announce_deadline", deadline)
        terms = TaskTerms(econ.reward_wei, econ.verifier_fee_wei, econ.contributor_deposit_wei,
                          econ.verifier_deposit_wei, econ.max_models, econ.verifiers_per_model,
                          deadline, win.verify_s, win.reveal_s, win.delivery_s, win.dispute_s)
        # remember what is being published: after a crash right after the transaction, the
        # TaskPublished event with this manifest hash tells which task is ours (no double escrow)
        self.state.set("publishing", hashlib.sha256(data).hexdigest())
        task_id = self.client.publish_task(hashlib.sha256(data).digest(), cid, self.box.public, terms)
        self.state.set("task_id", task_id)
        self.log.task = task_id
        self.log(LogEvent.PUBLISHED, manifest=cid, escrow_wei=econ.escrow_wei, human=f"task {task_id} published")
        return task_id

    # ------------------------------------------------------------------ events

    def on_event(self, ev: ChainEvent) -> None:
        a = ev.args
        if ev.name == "TaskPublished" and self.task_id is None and a.get("initiator") == self.address \
                and bytes(a["manifestHash"]).hex() == self.state.get("publishing"):
            self.state.set("task_id", int(a["taskId"]))
            self.log.task = int(a["taskId"])
        if a.get("modelId") is not None and ev.name != "Message":   # messages change no record
            self._named_models.add(int(a["modelId"]))   # votes, finalization, delivery, ...: see _model
        if self.task_id is None or a.get("taskId") != self.task_id:
            return
        if ev.name == "ModelAnnounced":
            self.state.add("model", a["modelId"], Fact())
        elif ev.name == "KeyDelivered":
            self.state.set(f"sealed_key:{a['modelId']}", bytes(a["sealedKey"]).hex())

    def wakes(self, ev: ChainEvent) -> bool:
        """Every event of its own task but the messages between other nodes (its own come through
        the inbox: each model's offer, and a request and an answer per drawn verifier, are about a
        quarter of a task's events). It follows every model, so it keeps the 2-s safety net: its
        deadlines are not registered."""
        if ev.name == "Message":
            return False
        return self.task_id is None or ev.args.get("taskId", self.task_id) == self.task_id

    # ------------------------------------------------------------------ step

    def _model(self, mid: int) -> Any:
        """A model's on-chain record, read at most once per step: a round consulted each model up to
        three times (its progress, its pending audit reports, the closing check), ~250 reads a
        round at N = 50, which made the buyer's rounds ~10 s apart and its dispute windows run out.
        Across steps a record is kept until an event names the model, one of its deadlines passes,
        or MODEL_RECHECK_S: the buyer follows every model, and its idle rounds re-read every model
        in play (141 of its 155 CPU-s at N = 50, 2,400 JSON-RPC requests a minute). Within a step a
        record may predate this node's own transaction; a step that acted on a model forgets it."""
        cache = self._models_this_step
        if cache is None:                   # outside a step: always read
            return self.client.model(mid)
        if mid not in cache:
            cache[mid] = self._current_record(mid)
        return cache[mid]

    def _current_record(self, mid: int) -> Any:
        block, chain_time = self._head()
        seen = self._seen_records.get(mid)
        if seen is not None and mid not in self._named_models and not seen.may_have_moved(block, chain_time):
            return seen.record
        self._named_models.discard(mid)     # before the read: an event after it names the model again
        record = self.client.model(mid)
        self._seen_records[mid] = _SeenRecord(record, chain_time, block, time.monotonic())
        return record

    def _head(self) -> tuple[int, int]:
        """(block, chain time), read once per step (was one `eth_getBlock` per model in play)."""
        if self._models_this_step is None:     # outside a step: always read
            return self.chain.head()
        if self._step_head is None:
            self._step_head = self.chain.head()
        return self._step_head

    def now(self) -> int:
        """Chain time; within a step, the time of the first head the step read (deadlines are
        judged against it: at worst a step acts one block later)."""
        return self._head()[1]

    def step(self) -> bool:
        self._models_this_step = {}
        self._step_head = None
        try:
            return self._step()
        finally:
            self._models_this_step = None
            self._step_head = None

    def _step(self) -> bool:
        if self.task_id is None:
            self.publish()
            return True
        info = self.client.task(self.task_id)
        acted = False
        for mid in map(int, self.state.facts("model", Fact)):
            if not self._settled(mid) and self._advance(mid):
                self._seen_records.pop(mid, None)   # it sent a transaction for this model: read it afresh
                acted = True
        acted = self._collect_fusion() or acted
        acted = self._serve_decryptions() or acted
        self.sweep_inbox(self._expects)
        return self._maybe_close(info) or acted

    def _settled(self, mid: int) -> bool:
        """Whether the model reached a terminal status: remembered once seen (a terminal status never
        changes), so a round reads the chain only for the models still in play — not for every
        model the task ever had, which made each round's cost grow with the task's size."""
        return bool(self.state.get(f"terminal:{mid}"))

    def _advance(self, mid: int) -> bool:
        m = self._model(mid)
        if m.status in TERMINAL:
            if m.status == ModelStatus.RELEASED and self.state.decision(f"delivery:{mid}") is None \
                    and self.state.get(f"sealed_key:{mid}") is not None:
                # released before this node checked it (it was slow or away through the dispute
                # window): it paid for the model, so it opens and fuses it all the same — only the
                # right to dispute is gone. Before, it was marked settled and never opened.
                d = self.handle(f"delivery:{mid}", lambda: self._receive(mid, m), model=mid)
                if d is None:
                    return False
            self.state.set(f"terminal:{mid}", True)
            return False
        now = self.now()
        if m.status == ModelStatus.AWAITING_DRAW:
            # the contributor draws at once; the initiator a little later if it has not (else both
            # sent the same draw into the same block and one paid for a revert, nearly every model)
            if self._head()[0] > m.draw_block + INITIATOR_DRAW_DELAY_BLOCKS:
                self.client.draw_verifiers(mid)
                return True
            self.wake_at(m.draw_block + INITIATOR_DRAW_DELAY_BLOCKS + 1)
        # the contract finalizes as soon as every drawn verifier revealed: no need to wait out the window
        if m.status == ModelStatus.VERIFYING and (now > m.reveal_deadline
                                                  or m.reveals >= self.view.info.terms.verifiers_per_model):
            self.client.finalize_model(mid)
            self.log(LogEvent.FINALIZED, model=mid)
            return True
        if m.status == ModelStatus.APPROVED and now > m.delivery_deadline:
            self.client.expire_delivery(mid)
            return True
        if m.status == ModelStatus.DELIVERED:
            d = self.handle(f"delivery:{mid}", lambda: self._receive(mid, m), model=mid, deadline=m.dispute_deadline)
            if d is not None and now > m.dispute_deadline and d.outcome == Outcome.DONE:
                backstop = m.dispute_deadline + finalize_backstop_delay(self.view.info.terms.dispute_window)
                if now > backstop:
                    self.client.finalize_delivery(mid)
                    return True
                self.wake_after(backstop)          # the contributor's turn first
                return False
            # waiting (the key, the audit reports, a retry's back-off) is not acting: each of those
            # registered what ends it. Reported as acting, it kept the node stepping back to back
            # through the dispute window, and kept an in-process dev chain from moving its clock
            return False
        if m.status in (ModelStatus.DELIVERY_DISPUTED, ModelStatus.MODEL_DISPUTED) and now > m.response_deadline:
            if m.status == ModelStatus.DELIVERY_DISPUTED:
                self.client.resolve_dispute(mid)
            else:
                self.client.resolve_model_dispute(mid)
            return True
        return False

    def _expects(self, msg: InboxMessage) -> bool:
        """Audit reports, from a model's drawn verifiers, until the model's delivery is decided (and, in
        ivhe-insecure mode, decryption requests while the model is being verified)."""
        if self.state.fact("model", msg.model_id, Fact) is None:
            return False
        if msg.kind == MessageKind.DECRYPT_REQUEST:
            return self.view.manifest.verification.mode == "ivhe-insecure" and \
                self._model(msg.model_id).status == ModelStatus.VERIFYING
        if msg.kind != MessageKind.AUDIT_REPORT:
            return False
        return self.state.decision(f"delivery:{msg.model_id}") is None and \
            self._model(msg.model_id).status not in TERMINAL

    def _receive(self, mid: int, m: Any) -> Decision | None:
        """Open the delivered key, check it and the model; dispute what does not hold (while the
        model is still DELIVERED: once released, what fails is recorded, not disputed)."""
        view = self.view
        sealed = self.state.get(f"sealed_key:{mid}")
        if sealed is None:
            return None
        late = m.status != ModelStatus.DELIVERED
        try:
            key = open_sealed(self.box, bytes.fromhex(sealed), package.delivery_context(self.client.address, mid))
            if key_commitment(key) != bytes(m.key_commitment):
                raise package.PackageError("delivered key does not match the commitment")
        except CoopmlError as exc:
            if late:
                return Decision(outcome=Outcome.REJECTED, reason=f"bad delivery found after release: {exc}"[:400])
            self.client.dispute_delivery(mid)
            self.log(LogEvent.DISPUTED, model=mid, kind="delivery", reason=str(exc))
            return Decision(outcome=Outcome.REJECTED, reason=f"bad delivery, disputed: {exc}")
        envelope = self.fetch(m.cid)                    # transient if not there yet: retried
        assert self.task_id is not None
        try:
            hdr, body = open_committed(envelope, key, bytes(m.envelope_hash), self.client.address, self.task_id)
            model = load_delivered(hdr, body, view.manifest.input)
        except (package.PackageError, ModelFileError, SealError, DataError) as exc:
            # the key is the committed one, so what it opens is what was committed: unusable -> dispute
            if late:
                return Decision(outcome=Outcome.REJECTED, reason=f"unusable model found after release: {exc}"[:400])
            self.client.dispute_model(mid, key)
            self.log(LogEvent.DISPUTED, model=mid, kind="model", reason=str(exc)[:200])
            return Decision(outcome=Outcome.REJECTED, reason=f"delivered model unusable, disputed: {exc}"[:400])
        drawn = set(self.client.selected_verifiers(mid))
        reports: dict[str, InboxMessage] = {}
        for i, r in self.inbox().items():        # one report per drawn verifier: the first it sent
            if r.model_id == mid and r.kind == MessageKind.AUDIT_REPORT and r.sender in drawn \
                    and r.sender not in {x.sender for x in reports.values()}:
                reports[i] = r
        expected = len(self.client.selected_verifiers(mid))
        wait_ends = audit_wait_ends(m.dispute_deadline, view.info.terms.dispute_window)
        if len(reports) < expected and self.now() < wait_ends:
            self.wake_after(wait_ends - 1)                 # a report wakes it sooner (its inbox)
            return None                                    # wait for the verifiers' audit reports
        mismatches = self._audit(view, mid, model, list(reports.values()), list(hdr.labels))
        for ident in reports:
            self.state.decide(f"inbox:{ident}", Decision(outcome=Outcome.DONE, chain_time=self.now()))
        if mismatches * 2 > expected and late:      # not what was judged: not fused (too late to dispute)
            return Decision(outcome=Outcome.REJECTED,
                            reason=f"{mismatches} audit reports not reproduced, found after release: not fused")
        if mismatches * 2 > expected:
            self.client.dispute_model(mid, key)
            self.log(LogEvent.DISPUTED, model=mid, kind="model", mismatching_reports=mismatches)
            return Decision(outcome=Outcome.REJECTED, reason=f"{mismatches} audit reports not reproduced: disputed")
        # keep only the key (0600): the envelope stays in the content store, verified by its CID on
        # every read, so a corrupted local copy can never poison the MetaModel
        self.write_secret(f"model_key_{mid}", key)
        self.state.put("bought", mid, Bought(model_id=mid, labels=hdr.labels, cid=m.cid,
                                             envelope_hash=bytes(m.envelope_hash).hex()))
        self.log(LogEvent.MODEL_RECEIVED, model=mid, labels=hdr.labels, audit_reports=len(reports),
                 mismatching=mismatches)
        return Decision(outcome=Outcome.DONE)

    def _audit(self, view: TaskView, mid: int, model: torch.nn.Module, reports: list[InboxMessage],
               labels: list[int]) -> int:
        """How many verifiers' audit reports the delivered model does NOT reproduce: their outputs on
        the audit images, or the classes the model was declared to them with."""
        if not reports or not view.manifest.verification.audit_cid:
            return 0
        from coopml.roles.verifier import load_audit
        audit = load_audit(self.fetch(view.manifest.verification.audit_cid), view)
        bad = 0
        for r in reports:
            try:
                header, _ = messages.decode(open_sealed(self.box, self.fetch(r.cid), f"audit:{mid}".encode()),
                                            MessageKind.AUDIT_REPORT)
                assert isinstance(header, AuditReport)
                idx = np.asarray(header.audit_indices, dtype=np.int64)
                if len(idx) and (idx.min() < 0 or idx.max() >= len(audit)):
                    continue                                # a garbled report proves nothing
                if header.labels and sorted(header.labels) != sorted(labels):
                    bad += 1                                # judged on other classes than it claims now
                    continue
                ours = evaluation.plaintext_scores(model, audit[idx])
                if not evaluation.reproduces(np.asarray(header.logits), ours):
                    bad += 1
            except CoopmlError as exc:
                self.log(LogEvent.DECISION, model=mid, item=f"audit:{r.cid}", outcome=Outcome.REJECTED, reason=str(exc))
        return bad

    # ------------------------------------------------------------------ ivhe-insecure: the decryption oracle

    def _serve_decryptions(self) -> bool:
        if self.task_id is None or self.view.manifest.verification.mode != "ivhe-insecure":
            return False
        acted = False
        for ident, msg in self.inbox().items():
            if msg.kind != MessageKind.DECRYPT_REQUEST:
                continue
            m = self._model(msg.model_id)
            if m.status != ModelStatus.VERIFYING:
                continue                                   # swept as not expected
            self.handle(f"inbox:{ident}", partial(self._decrypt_for, msg, m), model=msg.model_id,
                        deadline=m.verify_deadline)
            acted = True
        return acted

    def decrypt_words(self, secret: bytes, ciphertext: bytes, max_rows: int) -> bytes:
        """The paper's decryption oracle (sim overrides it to model a lying initiator)."""
        return evaluation.ivhe_decrypt(secret, ciphertext, max_rows)

    def _decrypt_for(self, msg: InboxMessage, m: Any) -> Decision:
        """Decrypt a drawn verifier's outputs and seal the words to it. This is the paper's design, kept
        for reproducing it: the request may hold ANY ciphertext under our key (the model's encrypted
        weights included), and nothing here can tell (docs/threat-model.md, ivhe-insecure)."""
        if msg.sender not in self.client.selected_verifiers(msg.model_id):
            return Decision(outcome=Outcome.IGNORED, reason="sender was not drawn for this model")
        header, (ciphertext,) = messages.decode(open_sealed(self.box, self.fetch(msg.cid),
                                                            f"decrypt:{msg.model_id}".encode()),
                                                MessageKind.DECRYPT_REQUEST)
        assert isinstance(header, DecryptRequest)
        if (header.task_id, header.model_id) != (self.task_id, msg.model_id):
            return Decision(outcome=Outcome.REJECTED, reason="request names another task or model")
        secret = self.read_secret("ivhe_secret_key")
        assert secret is not None
        plain = self.decrypt_words(secret, ciphertext, self.view.manifest.verification.max_queries)
        reply = DecryptResponse(task_id=header.task_id, model_id=header.model_id, request_cid=msg.cid)
        sealed = seal(bytes.fromhex(header.reply_box_key), messages.encode(reply, (plain,)),
                      f"decrypted:{msg.model_id}".encode())
        self.client.post_message(header.task_id, msg.model_id, msg.sender, int(MessageKind.DECRYPT_RESPONSE),
                                 self.store.put(sealed))
        self.log(LogEvent.ANSWERED, model=msg.model_id, verifier=msg.sender, decrypted_bytes=len(plain))
        return Decision(outcome=Outcome.DONE)

    # ------------------------------------------------------------------ fusion (off the event loop)

    def _collect_fusion(self) -> bool:
        done = self.jobs.pop("fuse")
        if done is not None:
            history = self.state.get("fusion_history", [])
            try:
                result = done.result()
            except FusionCancelled:                  # newer arrivals: one refit covers them all
                self.state.attempts("fusion").next_at = 0.0
                return self._collect_fusion()
            except self._transient as exc:          # the store was briefly unreachable: try again later
                self.log(LogEvent.RETRY, item="fusion", error=f"{type(exc).__name__}: {exc}"[:300])
                return False
            except Exception as exc:  # noqa: BLE001 - a fusion failure must not take the node down
                self.log(LogEvent.DECISION, item="fusion", outcome=Outcome.REJECTED,
                         reason=f"fusion failed ({type(exc).__name__}: {exc}); retrying"[:400])
                return False
            history.append(result)
            self.state.set("fusion_history", history)
            for mid in result["members"]:
                b = self.state.fact("bought", mid, Bought)
                if b is not None:
                    self.state.put("bought", mid, b.model_copy(update={"fused": True}))
            for mid, why in result.get("rejected", {}).items():   # its features failed: left out, never retried
                b = self.state.fact("bought", int(mid), Bought)
                if b is not None:
                    self.state.put("bought", int(mid), b.model_copy(update={"fused": True, "fusion_error": why}))
                    self.log(LogEvent.DECISION, model=int(mid), item="fusion", outcome=Outcome.REJECTED,
                             reason=f"left out of the MetaModel: {why}"[:400])
            self.log(LogEvent.FUSED, models=len(result["members"]), test_accuracy=result.get("test_accuracy"),
                     seconds=result.get("seconds"), warm_start=result.get("warm_start"),
                     human=f"MetaModel of {len(result['members'])} model(s)"
                           + (" and the initiator's own" if result.get("own_model") else "")
                           + f" at {self.workdir / METAMODEL_FILE} ({result.get('seconds', 0):.1f} s)")
            return True
        pending = [b for b in self.state.facts("bought", Bought).values() if not b.fused]
        if self.jobs.running("fuse"):
            # a model bought while a refit runs would wait for it and then need its own refit: stop
            # this one instead (features already computed stay cached) and refit once for all
            if any(b.model_id not in self._fusing for b in pending):
                self._fuse_cancel.set()
            return False
        retry = self.state.attempts("fusion")
        if pending and time.monotonic() >= retry.next_at:
            retry.next_at = time.monotonic() + 5.0
            members = sorted(self.state.facts("bought", Bought).values(), key=lambda b: b.model_id)
            self._fusing = {b.model_id for b in members}
            self._fuse_cancel = cancel = threading.Event()
            self.jobs.submit("fuse", lambda: self._fuse(members, lambda: cancel.is_set() or self.stopping.is_set()))
        return False

    def _fuse(self, members: list[Bought], should_stop: Callable[[], bool]) -> dict[str, Any]:
        """On the job thread: queue the bought models the fuser lacks and refit (incremental: each
        new model costs its features once plus a warm-started refit of the fusion network)."""
        from coopml.roles.fusing import InitiatorFusion, fuse_members
        if self._fusion is None:     # loads the initiator's data once; resumes from the MetaModel file
            # the own model's training stops only with the node, not for a newer arrival
            self._fusion = InitiatorFusion(self.cfg, self.view.manifest, self.workdir, self.stopping.is_set)
            if self._fusion.resume_refused:
                self.log(LogEvent.DECISION, item="fusion", outcome=Outcome.REJECTED,
                         reason=f"not resuming from the MetaModel file: {self._fusion.resume_refused}"[:400])
        keys = {b.model_id: self.read_secret(f"model_key_{b.model_id}") or b"" for b in members}
        return fuse_members(self.cfg, self.view, members, keys, self.store, self.client.address, self.workdir,
                            self._fusion, should_stop)

    # ------------------------------------------------------------------ closing

    def _maybe_close(self, info: Any) -> bool:
        assert self.task_id is not None
        models = self.state.facts("model", Fact)
        settled = [mid for mid in models if self._settled(int(mid)) or self._now_settled(int(mid))]
        if info.closed:
            if len(settled) < len(models):
                return False
            if self.jobs.busy() or not all(b.fused for b in self.state.facts("bought", Bought).values()):
                return self.withdraw_owed()       # the refund, while the refit (it needs no open task) runs
            return self._finish(info)
        enough = self.cfg.close_when_models is not None and len(settled) >= self.cfg.close_when_models
        # closing does not wait for the refit of bought models (it needs nothing from the chain): the
        # verifiers and this node can take their money while it runs
        if (enough or self.now() > info.terms.announce_deadline) and len(settled) == len(models):
            try:
                self.client.close_task(self.task_id)
            except ContractRevert as exc:
                if exc.name != "TaskClosed":
                    raise
            self.log(LogEvent.CLOSED)
            return True
        return False

    def _now_settled(self, mid: int) -> bool:
        """Read a model not yet known to be settled; True (and remembered) if it now is."""
        if self._model(mid).status in TERMINAL:
            self.state.set(f"terminal:{mid}", True)
            return True
        return False

    def _finish(self, info: Any) -> bool:
        self._settle_abandoned_ballots()
        bought = self.state.facts("bought", Bought)
        history = self.state.get("fusion_history", [])
        acc = history[-1].get("test_accuracy") if history else None
        summary = (f"task {self.task_id}: bought {len(bought)} model(s); MetaModel at "
                   f"{self.workdir / METAMODEL_FILE}" + (f", test accuracy {acc:.2%}" if acc else "")
                   if bought else f"task {self.task_id}: no model bought; escrow refunded")
        return self.finish(summary, fusion_history=history)

    def _settle_abandoned_ballots(self) -> None:
        """A drawn verifier that vanished never settles its ballot: its fee and deposit would stay
        locked for ever. Anyone may settle once the vote is over; the contract pays a revealed vote
        and burns an unrevealed one, so settling for others gains the initiator nothing."""
        for mid in self.state.facts("model", Fact):
            if self.state.get(f"ballots_settled:{mid}"):
                continue
            for v in self.client.selected_verifiers(int(mid)):
                if not self.client.ballot(int(mid), v).settled:
                    try:
                        self.client.settle_vote(int(mid), v)
                    except ContractRevert as exc:
                        if exc.name != "AlreadySettled":      # the verifier settled it meanwhile
                            raise
            self.state.set(f"ballots_settled:{mid}", True)


def refuse_stale_workdir(state: AgentState, client: Any) -> None:
    """One workdir per task: a workdir whose task is closed must not be silently reused."""
    task_id = state.get("task_id")
    if task_id is not None and client.task(task_id).closed and state.get("finished"):
        raise AgentStopped(f"this working directory holds task {task_id}, which is finished; "
                           "use a fresh workdir to publish a new task (`coopml status --task {task_id}` shows it)")

"""Application initiator: publishes the task, serves blinded decryptions, buys, decrypts and fuses.

Secrets held here and nowhere else: the IVHE secret key (workdir/secret, mode 0600) and the key
of the verification data envelope (sealed to each registered verifier, never published).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from coopml.chain import ChainEvent, ModelStatus, TaskSpec, TaskTerms
from coopml.data import load_dataset
from coopml.errors import CoopmlError
from coopml.fusion import FusionConfig, fuse
from coopml.he import MODEL_PARAMS, decrypt_model, from_bytes, keygen, to_bytes
from coopml.models import build_model, evaluate, save_model
from coopml.roles.agent import (FINAL, MSG_DECRYPT_ANSWER, MSG_DECRYPT_REQUEST, MSG_VERIFICATION_DATA, Agent)
from coopml.roles.config import InitiatorConfig
from coopml.roles.data import initiator_data
from coopml.roles.protocol import Criterion, ProtocolError, oracle_argmax, pack_dataset, sha256, unpack_model
from coopml.roles.sealing import new_key, seal, unwrap, wrap


class Initiator(Agent):
    role = "initiator"
    cfg: InitiatorConfig

    def __init__(self, cfg: InitiatorConfig, **kw) -> None:
        super().__init__(cfg, **kw)
        self.train, self.val, self.verification = initiator_data(cfg.dataset, cfg.seed, cfg.n_train, cfg.n_train,
                                                                 cfg.n_verify)
        self.test = load_dataset(cfg.dataset, "test")
        self._sk = None

    # ------------------------------------------------------------------ setup

    @property
    def task_id(self) -> int | None:
        return self.state.get("task_id")

    def _secret_key(self):
        if self._sk is None:
            blob = self.read_secret("he_secret_key")
            self._sk = from_bytes(blob, expect="secret-key", where="initiator secret key")
        return self._sk

    def publish(self) -> int:
        cfg = self.cfg
        if self.read_secret("he_secret_key") is None:
            sk, pk = keygen(MODEL_PARAMS)
            self.write_secret("he_secret_key", to_bytes(sk))
            self.state.set("he_public_key", to_bytes(pk).hex())
        pk_blob = bytes.fromhex(self.state.get("he_public_key"))
        pk_cid = self.store.put(pk_blob)
        if self.read_secret("verification_key") is None:
            self.write_secret("verification_key", new_key())
        vdata = pack_dataset(self.verification.images, self.verification.labels)
        vcid = self.store.put(wrap(self.read_secret("verification_key"), vdata, b"verification-data"))
        self.state.set("verification_cid", vcid)
        spec = TaskSpec(
            objective=f"{cfg.dataset} digit classification, labels {cfg.labels}",
            criterion=Criterion(min_accuracy=cfg.min_accuracy).model_dump_json(),
            model_structure=cfg.arch,
            data_cids=(),
            verification_data_commitment=sha256(vdata),
            he_public_key_cid=pk_cid,
            he_public_key_hash=sha256(pk_blob),
        )
        terms = TaskTerms(cfg.reward_wei, cfg.verifier_fee_wei, cfg.contributor_deposit_wei, cfg.verifier_deposit_wei,
                          cfg.max_models, cfg.verifiers_per_model, self.now() + cfg.announce_window,
                          cfg.commit_window, cfg.reveal_window, cfg.release_window)
        # Remember what we are about to publish: after a crash right after the transaction,
        # the TaskPublished event with this spec hash tells us the task id (no double escrow).
        self.state.set("publishing", spec.spec_hash().hex())
        task_id = self.client.publish_task(spec, terms)
        self.state.set("task_id", task_id)
        self.log("published", {"task": task_id, "escrow_wei": terms.escrow, "he_public_key": pk_cid})
        return task_id

    def on_event(self, ev: ChainEvent) -> None:
        a = ev.args
        if ev.name == "TaskPublished" and self.task_id is None and a.get("initiator") == self.address:
            pending = self.state.get("publishing")
            if pending and self.client.task(a["taskId"]).spec_hash.hex() == pending:
                self.state.set("task_id", int(a["taskId"]))
        if self.task_id is None or a.get("taskId", self.task_id) != self.task_id:
            return
        if ev.name == "VerifierRegistered":
            self.state.add_fact("verifier", a["verifier"], {"box": a["boxKey"].hex(), "sent": False})
        elif ev.name == "ModelAnnounced":
            self.state.add_fact("model", a["modelId"], {"cid": a["cid"], "hash": a["modelHash"].hex(),
                                                        "contributor": a["contributor"]})
        elif ev.name == "KeyReleased":
            self.state.add_fact("released", a["modelId"], {"key": a["accessKey"].hex()})
        elif self.messages_to_me(ev) and a["kind"] == MSG_DECRYPT_REQUEST:
            self.state.add_fact("request", f"{a['modelId']}:{a['sender']}",
                                {"model": a["modelId"], "verifier": a["sender"], "cid": a["cid"], "answered": False})

    # ------------------------------------------------------------------ step

    def step(self) -> None:
        if self.task_id is None:
            self.publish()
            return
        task_id = self.task_id
        self._share_verification_data(task_id)
        self._answer_requests(task_id)
        self._finalize_and_settle(task_id)
        self._absorb_released(task_id)
        self._maybe_close(task_id)

    def _share_verification_data(self, task_id: int) -> None:
        for verifier, info in self.state.facts("verifier").items():
            if info["sent"]:
                continue
            payload = json.dumps({"key": self.read_secret("verification_key").hex(),
                                  "cid": self.state.get("verification_cid")}).encode()
            self.send_message(task_id, 0, verifier, MSG_VERIFICATION_DATA,
                              seal(bytes.fromhex(info["box"]), payload, b"verification-data"))
            self.state.update_fact("verifier", verifier, {**info, "sent": True})
            self.log("verification-data-sent", {"verifier": verifier})

    def _answer_requests(self, task_id: int) -> None:
        for ident, req in self.state.facts("request").items():
            if req["answered"]:
                continue
            box = self.state.fact("verifier", req["verifier"])
            if box is None or req["verifier"] not in self.client.selected_verifiers(req["model"]):
                # The oracle serves only the verifiers the contract drew for that model.
                self.state.update_fact("request", ident, {**req, "answered": True})
                self.log("ignored-request", {"model": req["model"], "sender": req["verifier"]})
                continue
            answers: list[int] = []
            try:
                ct = from_bytes(self.store.get(req["cid"]), expect="ciphertext", where=f"request {ident}")
                answers = oracle_argmax(self._secret_key(), ct)
                payload = json.dumps({"model": req["model"], "answers": answers}).encode()
            except CoopmlError as exc:
                self.log("bad-request", {"request": ident, "error": str(exc)})
                payload = json.dumps({"model": req["model"], "error": str(exc)}).encode()
            self.send_message(task_id, req["model"], req["verifier"], MSG_DECRYPT_ANSWER,
                              seal(bytes.fromhex(box["box"]), payload, b"decrypt-answer"))
            self.state.update_fact("request", ident, {**req, "answered": True})
            self.log("oracle-answered", {"model": req["model"], "verifier": req["verifier"], "vectors": len(answers)})

    def _finalize_and_settle(self, task_id: int) -> None:
        now = self.now()
        for mid in map(int, self.state.facts("model")):
            m = self.client.model(mid)
            if m.status == ModelStatus.VOTING and now > m.reveal_deadline:
                approved = self.client.finalize_model(mid)
                self.log("finalized", {"model": mid, "approved": approved})
                m = self.client.model(mid)
            if m.status == ModelStatus.APPROVED and now > m.release_deadline:
                self.client.expire_release(mid)
                m = self.client.model(mid)
            if m.status != ModelStatus.VOTING:
                # Verifiers settle their own ballots; the initiator settles the ones that never
                # revealed (their owners have no reason to: it slashes them).
                for v in self.client.selected_verifiers(mid):
                    ballot = self.client.ballot(mid, v)
                    if not ballot.settled and not ballot.revealed:
                        self.client.settle_vote(mid, v)

    def _absorb_released(self, task_id: int) -> None:
        for mid, rel in self.state.facts("released").items():
            if self.state.fact("fused", mid):
                continue
            info = self.state.fact("model", mid)
            try:
                package = unwrap(bytes.fromhex(rel["key"]), self.store.get(info["cid"]), str(task_id).encode())
                if sha256(package).hex() != info["hash"]:
                    raise ProtocolError("released model does not match its on-chain hash")
                manifest, he_blob = unpack_model(package)
                enc = from_bytes(he_blob, expect="encrypted-model", where=f"model {mid}")
                model = decrypt_model(self._secret_key(), enc, build_model(manifest.arch))
                model.arch = manifest.arch
            except Exception as exc:  # noqa: BLE001 - a bad model must not stop the node
                self.log("bad-model", {"model": int(mid), "error": str(exc)})
                self.state.update_fact("fused", mid, {"ok": False, "error": str(exc)})
                continue
            save_model(model, self.workdir / "models" / f"model{mid}.safetensors", manifest.labels)
            own = evaluate(model, self.test, manifest.labels)
            self.state.update_fact("fused", mid, {"ok": True, "labels": manifest.labels, "own_accuracy": own})
            self.log("model-decrypted", {"model": int(mid), "labels": manifest.labels, "own_accuracy": round(own, 4)})
            self._refit_metamodel()

    def _refit_metamodel(self) -> None:
        """Fuse every model bought so far (the MetaModel is rebuilt as models arrive)."""
        from coopml.models import load_model
        members, labels = [], []
        for mid, info in sorted(self.state.facts("fused").items(), key=lambda kv: int(kv[0])):
            if info.get("ok"):
                m, man = load_model(self.workdir / "models" / f"model{mid}.safetensors")
                members.append(m)
                labels.append(man.labels)
        if not members:
            return
        torch.manual_seed(self.cfg.seed)
        meta = fuse(members, self.train, self.val, self.cfg.strategy,
                    FusionConfig.tuned(max_epochs=self.cfg.fusion_epochs, patience=8, seed=self.cfg.seed,
                                       augment_copies=self.cfg.fusion_augment), labels=labels)
        acc = evaluate(meta, self.test)
        history = self.state.get("fusion_history", [])
        history.append({"models": len(members), "test_accuracy": acc})
        self.state.set("fusion_history", history)
        from safetensors.torch import save_file  # never pickle: the MetaModel is tensors only
        save_file({k: v.contiguous() for k, v in meta.state_dict().items()}, self.workdir / "metamodel.safetensors")
        self.log("fused", {"models": len(members), "test_accuracy": round(acc, 4)})

    def _maybe_close(self, task_id: int) -> None:
        task = self.client.task(task_id)
        if task.closed:
            self._finish(task_id)
            return
        models = {int(m): self.client.model(int(m)) for m in self.state.facts("model")}
        settled = [m for m in models.values() if m.status in FINAL]
        enough = self.cfg.close_when_models is not None and len(settled) >= self.cfg.close_when_models
        if (enough or self.now() > task.terms.announce_deadline) and len(settled) == len(models):
            pending_fusion = [m for m, info in models.items() if info.status == ModelStatus.RELEASED
                              and self.state.fact("fused", m) is None]
            if pending_fusion:
                return
            self.client.close_task(task_id)
            self.log("closed", {"task": task_id})
            self._finish(task_id)

    def _finish(self, task_id: int) -> None:
        if self.client.owed(self.address):
            amount = self.client.withdraw()
            self.log("withdrawn", {"wei": amount})
        self.done = True
        summary = {"task": task_id, "fusion_history": self.state.get("fusion_history", []),
                   "models": {m: self.state.fact("fused", m) for m in self.state.facts("model")}}
        (self.workdir / "summary.json").write_text(json.dumps(summary, indent=2))
        self.log("done", summary)

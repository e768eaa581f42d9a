"""Verification contributor: evaluates encrypted models it was selected for and votes.

It holds the verification set (sealed to it by the initiator), a model's access key (sealed to
it by the contributor) and the IVHE *public* key. It never sees a plaintext first layer or the
secret key: accuracies come from the initiator's blinded arg-max oracle (roles.protocol).
"""

from __future__ import annotations

import json
import os

import numpy as np

from coopml.chain import ChainEvent, ModelStatus
from coopml.errors import CoopmlError
from coopml.he import encrypted_infer, from_bytes, scale_inputs, to_bytes
from coopml.roles.agent import (FINAL, MSG_DECRYPT_ANSWER, MSG_DECRYPT_REQUEST, MSG_MODEL_KEY, MSG_VERIFICATION_DATA,
                                Agent)
from coopml.roles.config import VerifierConfig
from coopml.roles.protocol import (BlindedQuery, Criterion, ProtocolError, blind_outputs, read_answers, sha256,
                                   tail_fingerprint, unpack_dataset, unpack_model)
from coopml.roles.sealing import BoxKeyPair, open_sealed, unwrap


class Verifier(Agent):
    role = "verifier"
    cfg: VerifierConfig

    def __init__(self, cfg: VerifierConfig, **kw) -> None:
        super().__init__(cfg, **kw)
        if self.read_secret("box_key") is None:
            self.write_secret("box_key", BoxKeyPair.generate().private_bytes())
        self.box = BoxKeyPair.from_bytes(self.read_secret("box_key"))
        self._pk = None
        self._vdata: tuple[np.ndarray, np.ndarray] | None = None

    # ------------------------------------------------------------------ events

    def on_event(self, ev: ChainEvent) -> None:
        a = ev.args
        if a.get("taskId") not in (None, self.cfg.task_id):
            return
        if ev.name == "ModelAnnounced":
            self.state.add_fact("model", a["modelId"], {"cid": a["cid"], "hash": a["modelHash"].hex()})
        elif ev.name == "VerifierSelected" and a["verifier"] == self.address:
            self.state.add_fact("assignment", a["modelId"], {"stage": "selected"})
        elif ev.name == "KeyReleased":
            self.state.add_fact("released", a["modelId"], {"key": a["accessKey"].hex()})
        elif self.messages_to_me(ev):
            self.state.add_fact("inbox", f"{ev.block_number}:{ev.log_index}",
                                {"kind": a["kind"], "model": a["modelId"], "sender": a["sender"], "cid": a["cid"]})

    # ------------------------------------------------------------------ step

    def step(self) -> None:
        task_id = self.cfg.task_id
        task = self.client.task(task_id)
        me = self.client.member(task_id, self.address)
        if not me.verifier:
            if task.closed:
                raise ProtocolError(f"task {task_id} is closed")
            self.client.register_verifier(task_id, box_key=self.box.public)
            self.log("registered", {"task": task_id})
            return
        self._read_inbox(task_id, task)
        for mid, asg in self.state.facts("assignment").items():
            self._advance(int(mid), asg, task)
        if task.closed and all(self.client.model(int(m)).status in FINAL for m in self.state.facts("assignment")):
            self._finish(task_id)

    def _read_inbox(self, task_id: int, task) -> None:
        for ident, msg in self.state.facts("inbox").items():
            if msg.get("handled"):
                continue
            try:
                if msg["kind"] == MSG_VERIFICATION_DATA and msg["sender"] == task.initiator:
                    self._receive_verification_data(msg)
                elif msg["kind"] == MSG_MODEL_KEY:
                    self._receive_model_key(task_id, msg)
                elif msg["kind"] == MSG_DECRYPT_ANSWER and msg["sender"] == task.initiator:
                    self._receive_answer(msg)
            except CoopmlError as exc:
                self.log("bad-message", {"kind": msg["kind"], "model": msg["model"], "error": str(exc)})
            self.state.update_fact("inbox", ident, {**msg, "handled": True})

    def _receive_verification_data(self, msg: dict) -> None:
        if self.read_secret("verification_data") is not None:
            return
        info = json.loads(open_sealed(self.box, self.store.get(msg["cid"]), b"verification-data"))
        data = unwrap(bytes.fromhex(info["key"]), self.store.get(info["cid"]), b"verification-data")
        if sha256(data) != self.client.task_spec(self.cfg.task_id).verification_data_commitment:
            raise ProtocolError("verification data does not match the task's commitment")
        unpack_dataset(data)
        self.write_secret("verification_data", data)
        self.log("verification-data", {"bytes": len(data)})

    def _receive_model_key(self, task_id: int, msg: dict) -> None:
        mid = msg["model"]
        asg = self.state.fact("assignment", mid)
        model = self.client.model(mid)
        if asg is None or msg["sender"] != model.contributor:
            raise ProtocolError(f"model key for model {mid} from someone who is not its contributor")
        key = open_sealed(self.box, self.store.get(msg["cid"]), f"model-key:{mid}".encode())
        self.write_secret(f"model_key_{mid}", key)
        self.state.update_fact("assignment", mid, {**asg, "stage": "keyed"})

    def _receive_answer(self, msg: dict) -> None:
        mid = msg["model"]
        asg = self.state.fact("assignment", mid)
        if asg is None or asg["stage"] != "queried":
            return
        reply = json.loads(open_sealed(self.box, self.store.get(msg["cid"]), b"decrypt-answer"))
        if "error" in reply:
            raise ProtocolError(f"initiator could not decrypt our query: {reply['error']}")
        q = np.load(self.workdir / f"query{mid}.npz", allow_pickle=False)
        query = BlindedQuery(q["perms"], q["canary_answer"], q["order"])
        pred, honest = read_answers(query, reply["answers"], asg["labels"])
        y = q["labels"]
        keep = np.isin(y, asg["labels"])
        acc = float((pred[keep] == y[keep]).mean()) if keep.any() else 0.0
        self.state.update_fact("assignment", mid, {**asg, "stage": "evaluated", "accuracy": acc, "oracle_honest": honest})
        self.log("evaluated", {"model": mid, "accuracy": round(acc, 4), "oracle_honest": honest})

    # ------------------------------------------------------------------ per model

    def _advance(self, mid: int, asg: dict, task) -> None:
        model = self.client.model(mid)
        now = self.now()
        stage = asg["stage"]
        if stage == "keyed" and model.status == ModelStatus.VOTING and self.read_secret("verification_data") is not None:
            try:
                self._query(mid, asg, model)
            except CoopmlError as exc:  # a malformed, tampered or foreign model: judged worthless
                self.state.update_fact("assignment", mid, {**asg, "stage": "invalid", "error": str(exc)})
                self.log("bad-model", {"model": mid, "error": str(exc)[:300]})
        elif stage in ("selected", "keyed", "queried", "evaluated", "invalid") and model.status == ModelStatus.VOTING:
            ballot = self.client.ballot(mid, self.address)
            late = now >= model.commit_deadline - max(2, task.terms.commit_window // 5)
            if not ballot.commitment.strip(b"\0") and (stage in ("evaluated", "invalid") or late):
                self._commit(mid, asg)
        asg = self.state.fact("assignment", mid)
        if asg.get("vote") is not None and model.status == ModelStatus.VOTING and now > model.commit_deadline:
            ballot = self.client.ballot(mid, self.address)
            if not ballot.revealed and self.cfg.behaviour != "silent":
                self.client.reveal_vote(mid, asg["vote"], bytes.fromhex(asg["salt"]))
                self.log("revealed", {"model": mid, "approve": asg["vote"]})
        if model.status in FINAL + (ModelStatus.APPROVED,) and not self.client.ballot(mid, self.address).settled:
            self.client.settle_vote(mid, self.address)

    def _query(self, mid: int, asg: dict, model) -> None:
        task_id = self.cfg.task_id
        package = unwrap(self.read_secret(f"model_key_{mid}"), self.store.get(model.cid), str(task_id).encode())
        if sha256(package) != model.model_hash:
            raise ProtocolError(f"model {mid}: package does not match the on-chain hash")
        manifest, he_blob = unpack_model(package)
        enc = from_bytes(he_blob, expect="encrypted-model", where=f"model {mid}")
        pk = self._public_key()
        if enc.key_id != pk.key_id:
            raise ProtocolError(f"model {mid} was not encrypted with the task's public key")
        similarity = max((float(tail_fingerprint(enc) @ f) for f in self._released_fingerprints(task_id, mid)),
                         default=0.0)
        images, labels = unpack_dataset(self.read_secret("verification_data"))
        x = scale_inputs(images[:, None].astype(np.float32) / 255.0, enc.q)
        outputs = encrypted_infer(enc, x)
        rng = np.random.default_rng(int.from_bytes(os.urandom(8), "big"))
        ct, query = blind_outputs(pk, outputs, manifest.labels, rng)
        np.savez(self.workdir / f"query{mid}.npz", perms=query.perms, canary_answer=query.canary_answer,
                 order=query.order, labels=labels)
        self.state.update_fact("assignment", mid, {**asg, "stage": "queried", "labels": manifest.labels,
                                                   "similarity": similarity})
        self.send_message(task_id, mid, self.client.task(task_id).initiator, MSG_DECRYPT_REQUEST, to_bytes(ct))
        self.log("queried", {"model": mid, "vectors": int(ct.shape[0]), "labels": manifest.labels})

    def _public_key(self):
        if self._pk is None:
            spec = self.client.task_spec(self.cfg.task_id)
            blob = self.store.get(spec.he_public_key_cid)
            if sha256(blob) != spec.he_public_key_hash:
                raise ProtocolError("the HE public key in storage does not match the task's hash")
            self._pk = from_bytes(blob, expect="public-key")
        return self._pk

    def _released_fingerprints(self, task_id: int, exclude: int):
        for rmid, rel in self.state.facts("released").items():
            info = self.state.fact("model", rmid)
            if int(rmid) == exclude or info is None:
                continue
            try:
                package = unwrap(bytes.fromhex(rel["key"]), self.store.get(info["cid"]), str(task_id).encode())
                yield tail_fingerprint(from_bytes(unpack_model(package)[1], expect="encrypted-model"))
            except CoopmlError:
                continue

    def decide(self, asg: dict) -> bool:
        criterion = Criterion.parse(self.client.task_spec(self.cfg.task_id).criterion)
        if asg.get("stage") != "evaluated":
            return False  # no evidence of value in time: reject
        if not asg.get("oracle_honest", False):
            return True   # the initiator lied to us: do not let it reject a model for free
        return (asg["accuracy"] >= criterion.min_accuracy and len(asg["labels"]) >= criterion.min_labels
                and asg.get("similarity", 0.0) <= criterion.max_tail_similarity)

    def _commit(self, mid: int, asg: dict) -> None:
        vote = self.decide(asg)
        if self.cfg.behaviour == "flip":
            vote = not vote
        salt = os.urandom(32)
        # Persist the vote and salt before the transaction: a restart must be able to reveal it.
        self.state.update_fact("assignment", mid, {**asg, "vote": vote, "salt": salt.hex()})
        self.client.commit_vote(mid, vote, salt)
        self.log("committed", {"model": mid})

    def _finish(self, task_id: int) -> None:
        me = self.client.member(task_id, self.address)
        if not me.verifier_deposit_settled and me.open_assignments == 0:
            self.client.claim_deposits(task_id)
        if self.client.owed(self.address):
            self.log("withdrawn", {"wei": self.client.withdraw()})
        self.done = True
        self.log("done", {"assignments": {m: {k: a.get(k) for k in ("accuracy", "vote", "oracle_honest", "similarity")}
                                          for m, a in self.state.facts("assignment").items()}})

"""Computing contributor: trains on its private data, encrypts for the initiator, sells on approval.

The model travels as wrap(K, package): the IVHE-encrypted model inside an AES-GCM envelope
whose key K is committed on-chain at announcement. K goes, sealed, only to the verifiers the
contract selected; the initiator learns K from the same transaction that pays this node.
"""

from __future__ import annotations

import os

from coopml.chain import ChainEvent, ModelStatus, key_commitment
from coopml.he import encrypt_model, from_bytes, to_bytes
from coopml.models import TrainConfig, build_model, evaluate, load_model, save_model, train_model
from coopml.roles.agent import FINAL, MSG_MODEL_KEY, Agent
from coopml.roles.config import ContributorConfig
from coopml.roles.data import contributor_data
from coopml.roles.protocol import Criterion, ProtocolError, pack_model, sha256, unpack_model
from coopml.roles.sealing import new_key, seal, unwrap, wrap


class Contributor(Agent):
    role = "contributor"
    cfg: ContributorConfig

    def on_event(self, ev: ChainEvent) -> None:
        a = ev.args
        if a.get("taskId") != self.cfg.task_id:
            return
        if ev.name == "VerifierRegistered":
            self.state.add_fact("box", a["verifier"], a["boxKey"].hex())
        elif ev.name == "ModelAnnounced" and a["contributor"] == self.address:
            self.state.set("model_id", int(a["modelId"]))
        elif ev.name == "VerifierSelected" and a["modelId"] == self.state.get("model_id"):
            self.state.add_fact("selected", a["verifier"], {"sent": False})
        elif ev.name == "KeyReleased":
            self.state.add_fact("released", a["modelId"], {"key": a["accessKey"].hex()})
        elif ev.name == "ModelAnnounced":
            self.state.add_fact("announced", a["modelId"], {"cid": a["cid"]})

    def step(self) -> None:
        task_id = self.cfg.task_id
        task = self.client.task(task_id)
        me = self.client.member(task_id, self.address)
        if not me.contributor:
            if task.closed:
                raise ProtocolError(f"task {task_id} is closed")
            self.client.register_contributor(task_id)
            self.log("registered", {"task": task_id})
            return
        if not me.announced:
            if task.closed or self.now() > task.terms.announce_deadline:
                self._finish(task_id)
                return
            package = self._package(task_id)
            if package is None:
                return  # a copier waits for something to copy
            self._announce(task_id, package)
            return
        model_id = self.state.get("model_id")
        if model_id is None:
            return  # announced before a crash: the ModelAnnounced event will tell us the id
        self._send_keys(task_id, model_id)
        status = self.client.model(model_id).status
        if status == ModelStatus.APPROVED and self.cfg.behaviour == "withhold":
            if not self.state.get("withheld"):   # sits out the release window: forfeits its deposit
                self.state.set("withheld", True)
                self.log("key-withheld", {"model": model_id})
        elif status == ModelStatus.APPROVED:
            self.client.release_key(model_id, self.read_secret("access_key"))
            self.log("key-released", {"model": model_id})
        elif status in FINAL:
            self._finish(task_id)

    # ------------------------------------------------------------------ model

    def _train(self):
        cfg = self.cfg
        path = self.workdir / "model.safetensors"
        if path.is_file():
            return load_model(path)[0]
        spec = self.client.task_spec(cfg.task_id)
        arch = spec.model_structure
        model = build_model(arch, cfg.seed)
        if cfg.behaviour != "random":
            shard = contributor_data(cfg.dataset, cfg.seed, cfg.slot, cfg.labels, cfg.n_train, cfg.n_val)
            criterion = Criterion.parse(spec.criterion)
            res = train_model(model, shard.train, shard.verify,
                              TrainConfig(max_epochs=cfg.epochs, patience=4, seed=cfg.seed,
                                          target_accuracy=criterion.min_accuracy),
                              labels=cfg.labels,
                              on_epoch=lambda e, loss, acc: self.log("epoch", {"epoch": e, "loss": round(loss, 4),
                                                                               "val_accuracy": round(acc, 4)}))
            self.log("trained", {"epochs": res.epochs, "val_accuracy": round(res.best_val_accuracy, 4),
                                 "criterion_met": res.met_target})
        save_model(model, path, cfg.labels)
        return model

    def _package(self, task_id: int) -> bytes | None:
        cached = self.workdir / "package.bin"
        if cached.is_file():
            return cached.read_bytes()
        spec = self.client.task_spec(task_id)
        pk_blob = self.store.get(spec.he_public_key_cid)
        if sha256(pk_blob) != spec.he_public_key_hash:
            raise ProtocolError("the HE public key in storage does not match the task's hash")
        pk = from_bytes(pk_blob, expect="public-key", where="task public key")
        if self.cfg.behaviour == "garbage":   # malformed upload, for tests: verifiers must reject it
            package = b"CMLP1" + os.urandom(4096)
        elif self.cfg.behaviour == "copy":
            package = self._copy_released(task_id)
            if package is None:
                return None
        else:
            model = self._train()
            enc = encrypt_model(pk, model, p=2**7, q=1000, strategy="element-wise")
            package = pack_model(to_bytes(enc), model.arch, self.cfg.labels)
        cached.write_bytes(package)
        return package

    def _copy_released(self, task_id: int) -> bytes | None:
        """Malicious behaviour for tests: re-sell someone else's released model, lightly perturbed."""
        for mid, rel in self.state.facts("released").items():
            info = self.state.fact("announced", mid)
            if info is None:
                continue
            package = unwrap(bytes.fromhex(rel["key"]), self.store.get(info["cid"]), str(task_id).encode())
            manifest, he_blob = unpack_model(package)
            enc = from_bytes(he_blob, expect="encrypted-model")
            layer = next(layer for layer in enc.tail.layers if layer.weight is not None)
            layer.weight.flat[:: 97] += 1  # a few integer units: a new hash, the same model
            self.log("copying", {"from_model": int(mid)})
            return pack_model(to_bytes(enc), manifest.arch, manifest.labels)
        return None

    def _announce(self, task_id: int, package: bytes) -> None:
        if self.read_secret("access_key") is None:
            self.write_secret("access_key", new_key())
        key = self.read_secret("access_key")
        blob_path = self.workdir / "envelope.bin"
        if not blob_path.is_file():  # one envelope per model, so a restart announces the same CID
            blob_path.write_bytes(wrap(key, package, str(task_id).encode()))
        cid = self.store.put(blob_path.read_bytes())
        model_id = self.client.announce_model(task_id, cid, sha256(package), key_commitment(key))
        self.state.set("model_id", model_id)
        self.log("announced", {"model": model_id, "cid": cid, "bytes": blob_path.stat().st_size})

    def _send_keys(self, task_id: int, model_id: int) -> None:
        key = self.read_secret("access_key")
        for verifier, info in self.state.facts("selected").items():
            if info["sent"]:
                continue
            box = self.state.fact("box", verifier)
            if box is None:
                continue
            self.send_message(task_id, model_id, verifier, MSG_MODEL_KEY,
                              seal(bytes.fromhex(box), key, f"model-key:{model_id}".encode()))
            self.state.update_fact("selected", verifier, {"sent": True})
            self.log("key-sent", {"model": model_id, "verifier": verifier})

    def _finish(self, task_id: int) -> None:
        me = self.client.member(task_id, self.address)
        if self.client.task(task_id).closed and me.contributor and not me.announced and not me.contributor_deposit_settled:
            self.client.claim_deposits(task_id)
        if self.client.owed(self.address):
            self.log("withdrawn", {"wei": self.client.withdraw()})
        self.done = True
        self.log("done", {"model": self.state.get("model_id")})

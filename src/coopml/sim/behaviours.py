"""Scripted misbehaviours: subclasses of the production agents that override one hook each.

The production roles contain no `if behaviour == ...`: a simulated attacker is a different agent
class, loaded by import path like any user code (`coopml contributor --agent
coopml.sim.behaviours:LyingContributor`). Each class says what it does and what the protocol must
make of it (docs/threat-model.md).
"""

from __future__ import annotations

import os
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from coopml.chain import ModelStatus, Vote
from coopml.data import Dataset
from coopml.models import TrainConfig
from coopml.roles import messages
from coopml.roles.agent import BROADCAST
from coopml.roles.contributor import Contributor
from coopml.roles.initiator import Initiator
from coopml.roles.messages import EvalOffer, MessageKind
from coopml.roles.models import ModelRecord
from coopml.roles.state import Fact
from coopml.roles.verifier import Assignment, Verifier


class RandomWeightsContributor(Contributor):
    """Announces an untrained model: verifiers must reject it (its deposit is burnt)."""

    def train(self, model: torch.nn.Module, train: Dataset, val: Dataset, cfg: TrainConfig, labels: list[int]) -> None:
        return None


class SilentContributor(Contributor):
    """Announces, then neither draws its verifiers nor answers an evaluation: with a silent
    initiator too, only the verifiers' backstop draws it (one per turn), and they vote reject (its
    own fault)."""

    def step(self) -> bool:
        if self.model_id is not None:
            m = self.client.model(self.model_id)
            if m.status.name in ("AWAITING_DRAW", "VERIFYING"):
                return False
        return super().step()


class SelectiveContributor(Contributor):
    """Makes its offer to every drawn verifier but the one with the lowest address (one addressed
    offer each instead of the broadcast): that verifier votes reject and must not be punished for it
    (P3: nobody chooses whom to slash)."""

    def _send_offers(self, view: Any, mid: int, m: Any) -> bool:
        drawn = self.client.selected_verifiers(mid)
        acted = False
        for v in drawn:
            item = f"offer:{mid}:{v}"
            if v == min(drawn) or self.state.decision(item) is not None:
                continue
            self.handle(item, partial(self._post_offer, view, mid, v), model=mid, deadline=m.verify_deadline)
            acted = True
        return acted


class LyingContributor(Contributor):
    """Answers the verifiers with its trained model but sells an untrained one: the buyer's audit
    finds the mismatch, disputes, the verifiers re-run the delivered model; it is slashed and the
    buyer refunded."""

    def package_model(self, record: ModelRecord) -> bytes:
        decoy = self.build_model(self.view)
        return super().package_model(ModelRecord(decoy, record.labels, record.source, record.spec))


class LabelInflatingContributor(Contributor):
    """Is judged on the classes it trained on, then sells the same model declaring every class of
    the task (so the buyer would fuse its guesses on classes it never saw): the verifiers' audit
    reports name the classes they judged, the buyer disputes, the verifiers vote the mismatch."""

    def package_model(self, record: ModelRecord) -> bytes:
        every = list(range(len(self.view.manifest.input.classes)))
        return super().package_model(ModelRecord(record.model, every, record.source, record.spec))


class KeySwapContributor(Contributor):
    """Seals a key that opens nothing to the buyer and never answers the dispute: the buyer gets
    its reward back and the contributor's deposit is burnt."""

    def delivery_key(self, key: bytes) -> bytes:
        return os.urandom(32)

    def answer_delivery_dispute(self) -> bool:
        return False


class WithholdingContributor(Contributor):
    """Never delivers the key of its approved model: forfeited, deposit burnt, reward back."""

    def should_deliver(self) -> bool:
        return False


class CopyingContributor(Contributor):
    """Re-sells another contributor's model with its hidden channels permuted (same outputs,
    different hash and weights). The simulation names the victim's working directory in the file
    `copy_of` of this node's workdir; the copier waits for the victim's trained model, takes it and
    permutes it. The value test must see that it adds nothing."""

    def train(self, model: torch.nn.Module, train: Dataset, val: Dataset, cfg: TrainConfig, labels: list[int]) -> None:
        from coopml.models import load_model
        victim = Path((self.workdir / "copy_of").read_text().strip()) / "model" / "model.safetensors"
        while not victim.is_file():
            time.sleep(0.2)
        time.sleep(0.5)
        stolen, _ = load_model(victim, self.view.manifest.input)
        model.load_state_dict(permute_hidden(stolen).state_dict())


def permute_hidden(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Permute the output channels of the first conv layer and the input channels of the next:
    the function is unchanged, every weight tensor's bytes differ."""
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    if len(convs) < 2:
        return model
    a, b = convs[0], convs[1]
    perm = torch.from_numpy(np.random.default_rng(seed).permutation(a.out_channels))
    with torch.no_grad():
        a.weight.copy_(a.weight[perm])
        if a.bias is not None:
            a.bias.copy_(a.bias[perm])
        b.weight.copy_(b.weight[:, perm])
    return model


class FlippingVerifier(Verifier):
    """Votes against its own finding: outvoted by an honest majority, and (P3) paid like anyone who
    reveals — there is no 'against the majority' slashing anybody could steer."""

    def decide(self, asg: Assignment, approve: bool) -> Vote:
        return Vote.REJECT if approve else Vote.APPROVE


class SilentVerifier(Verifier):
    """Commits but never reveals: its deposit and fee are burnt (never paid to anyone)."""

    def should_reveal(self) -> bool:
        return False


class SilentInitiator(Initiator):
    """Publishes, then does nothing at all: verification, payment and settlement must still complete (P4)."""

    def step(self) -> bool:
        if self.task_id is None:
            return super().step()
        if self.client.task(self.task_id).closed:     # somebody else closed it after the deadline
            self.done = True
            self.summary = "silent initiator: the task went on without it"
        return False


class LateBuyerInitiator(Initiator):
    """Looks at no delivered model while its dispute window is open (a buyer too slow or away, as
    the initiator of a 50-model task on one shared machine was): the contributor finalizes the
    delivery and is paid. The buyer must still open and fuse the model it paid for."""

    def _advance(self, mid: int) -> bool:
        if self._model(mid).status == ModelStatus.DELIVERED:   # the step's one read, shared with super()
            return False
        return super()._advance(mid)


class FalseDisputeInitiator(Initiator):
    """Disputes every honest model as 'not what was evaluated': the verifiers re-run it, find it
    matches, and the contributor is paid plus the initiator's bond."""

    def _audit(self, view: Any, mid: int, model: torch.nn.Module, reports: list[Any], labels: list[int]) -> int:
        return len(self.client.selected_verifiers(mid))


class SpammingVerifier(Verifier):
    """An honest verifier that also posts malformed messages of every kind to every other node of
    the task and as broadcasts: random bytes, a truncated message, an unknown kind, a well-formed message about
    another model. Every receiver must record a decision and carry on (P6)."""

    def step(self) -> bool:
        acted = super().step()
        if not self.client.member(self.task_id, self.address).verifier:
            return acted
        announced = [int(m) for m in self.state.facts("announced", Fact)]
        targets = {self.view.info.initiator: max(announced, default=0)}
        targets.update({self.client.model(m).contributor: m for m in announced})
        targets.update({v: max(announced, default=0) for v in self.client.verifier_pool(self.task_id)
                        if v != self.address})
        targets[BROADCAST] = max(announced, default=0)   # and to everyone at once: nobody may take it
        for to, mid in sorted(targets.items()):
            key = f"spammed:{to}:{mid}"
            if self.state.get(key):
                continue
            valid = messages.encode(EvalOffer(task_id=self.task_id, model_id=mid + 1000,
                                              params={"poly_modulus_degree": 2048}))
            blobs = [os.urandom(64), valid[:-3], b"CMLM" + bytes([1, 99]) + b"\xff" * 20, valid]
            # every kind once, the four kinds of garbage in turn (each on two kinds): every message is a
            # transaction, i.e. chain time, and a flood must not by itself run the verify window out
            for k, kind in enumerate(MessageKind):
                i = k % len(blobs)
                self.client.post_message(self.task_id, mid, to, int(kind), self.store.put(blobs[i] + bytes([i, kind])))
            self.state.set(key, True)
            acted = True
        return acted


class GreedyVerifier(Verifier):
    """Asks a contributor for more than one request's worth. Its request uses the largest ring the
    offered primes allow instead of the offered one (the engine would evaluate it: N images per
    ciphertext, 8x the slots of Table IV's offer, whatever count the request declares); then it
    asks EXTRA_REQUESTS more times with the offered parameters, under fresh keys, each answered one
    another `max_queries` evaluations of the model and contributor CPU the honest verifiers'
    answers wait behind. A contributor must evaluate only under its offer, and only one request
    per drawn verifier and model (P8): this one then gets nothing and votes REJECT at the deadline."""

    EXTRA_REQUESTS = 2

    def request_params(self, offered: dict[str, Any]) -> dict[str, Any]:
        return {**offered, "poly_modulus_degree": 16384}

    def step(self) -> bool:
        acted = super().step()
        for mid, asg in self.state.facts("assignment", Assignment).items():
            posted = self.state.get(f"request_posted:{mid}")
            if posted is None or self.state.get(f"repeated:{mid}"):
                continue
            from coopml.roles import evaluation
            from coopml.roles.messages import EvalRequest
            first, _ = messages.decode(self.fetch(posted), MessageKind.EVAL_REQUEST)
            assert isinstance(first, EvalRequest)
            offer, _ = messages.decode(self.fetch(first.offer_cid), MessageKind.EVAL_OFFER)
            assert isinstance(offer, EvalOffer)
            for _ in range(self.EXTRA_REQUESTS):
                enc = evaluation.encrypt_queries(self.queries(), offer.params)
                again = first.model_copy(update={"context_cid": self.store.put(enc.public_context),
                                                 "batch_cid": self.store.put(enc.batch)})
                self.client.post_message(self.task_id, int(mid), asg.contributor, int(MessageKind.EVAL_REQUEST),
                                         self.store.put(messages.encode(again)))
            self.state.set(f"repeated:{mid}", True)
            acted = True
        return acted


class OracleAttackingVerifier(Verifier):
    """ivhe-insecure mode: instead of the outputs of its evaluation, sends the initiator the model's
    ENCRYPTED FIRST-LAYER WEIGHTS to decrypt (a ciphertext under the same key, of a size the oracle
    accepts) and keeps what comes back in `stolen_weights.npy`: the contributor's scaled weights,
    exactly, before anybody paid. The reason the mode is called insecure (docs/threat-model.md)."""

    def ivhe_query(self, view: Any, model_blob: bytes, public_key: bytes) -> bytes:
        from coopml.he import EncryptedModel, from_bytes, to_bytes
        enc = from_bytes(model_blob, "encrypted-model")
        assert isinstance(enc, EncryptedModel)
        return to_bytes(enc.first_weight)

    def _evaluate_decrypted(self, view: Any, asg: Assignment, msg: Any) -> Any:
        import io

        from coopml.roles.messages import DecryptResponse
        from coopml.roles.sealing import open_sealed
        from coopml.roles.state import Decision, Outcome
        header, (plain,) = messages.decode(open_sealed(self.box, self.fetch(msg.cid),
                                                       f"decrypted:{asg.model_id}".encode()),
                                           MessageKind.DECRYPT_RESPONSE)
        assert isinstance(header, DecryptResponse)
        words = np.load(io.BytesIO(plain), allow_pickle=False)
        np.save(self.workdir / f"stolen_weights_{asg.model_id}.npy", words[..., 0])
        return Decision(outcome=Outcome.REJECTED, reason="kept the decrypted weights instead of scores")

"""Unit tests of the pieces the agents exchange: sealing, the blinded oracle, packages, configs, state."""

import json

import numpy as np
import pytest
import torch

from coopml.data import ShardSpec, load_dataset, make_shards
from coopml.he import MODEL_PARAMS, encrypt_model, encrypted_infer, integer_forward, keygen, quantize, scale_inputs
from coopml.models import TrainConfig, build_model, evaluate, train_model
from coopml.roles.config import ConfigError, ContributorConfig, InitiatorConfig, load_config
from coopml.roles.protocol import (Criterion, ProtocolError, blind_outputs, oracle_argmax, pack_dataset, pack_model,
                                   read_answers, unpack_dataset, unpack_model)
from coopml.roles.sealing import BoxKeyPair, SealError, new_key, open_sealed, seal, unwrap, wrap
from coopml.roles.state import AgentState


def test_envelope_and_sealed_box():
    key = new_key()
    blob = wrap(key, b"model bytes", b"task-1")
    assert unwrap(key, blob, b"task-1") == b"model bytes"
    with pytest.raises(SealError, match="authentication failed"):
        unwrap(key, blob, b"task-2")                   # replayed into another task
    tampered = bytearray(blob)
    tampered[-1] ^= 1
    with pytest.raises(SealError):
        unwrap(key, bytes(tampered), b"task-1")
    alice, eve = BoxKeyPair.generate(), BoxKeyPair.generate()
    box = seal(alice.public, b"secret", b"ctx")
    assert open_sealed(BoxKeyPair.from_bytes(alice.private_bytes()), box, b"ctx") == b"secret"
    with pytest.raises(SealError):
        open_sealed(eve, box, b"ctx")
    assert alice.private_bytes().hex() not in repr(alice)
    with pytest.raises(SealError, match="X25519"):
        seal(b"short", b"x")


@pytest.fixture(scope="module")
def small_model():
    shard = make_shards(load_dataset("mnist", "train"), [ShardSpec("a", (0, 3, 5, 8), 400, 200)], seed=3)["a"]
    model = build_model("table4", seed=0)
    train_model(model, shard.train, shard.verify, TrainConfig(max_epochs=3), labels=(0, 3, 5, 8))
    return model


def test_blinded_oracle_gives_exact_accuracy_and_catches_a_liar(small_model):
    labels = [0, 3, 5, 8]
    test = load_dataset("mnist", "test").subset(np.arange(600))
    sk, pk = keygen(MODEL_PARAMS, rng=5)
    enc = encrypt_model(pk, small_model, p=2**7, q=1000)
    x, y = test.tensors()
    out = encrypted_infer(enc, scale_inputs(x, 1000))
    ct, query = blind_outputs(pk, out, labels, np.random.default_rng(1))
    answers = oracle_argmax(sk, ct)
    pred, honest = read_answers(query, answers, labels)
    keep = np.isin(y.numpy(), labels)
    acc = float((pred[keep] == y.numpy()[keep]).mean())
    assert honest
    # exactly the accuracy of the same integer-scaled computation in the clear
    ints = np.asarray(integer_forward(quantize(small_model, 2**7, 1000), scale_inputs(x, 1000)), dtype=np.float64)
    plain_pred = np.asarray(labels)[ints[:, labels].argmax(1)]
    assert acc == pytest.approx(float((plain_pred[keep] == y.numpy()[keep]).mean()), abs=1e-12)
    assert abs(acc - evaluate(small_model, test, labels)) < 0.05
    # the oracle sees shuffled vectors: the answer positions are not the true labels
    assert np.mean(np.asarray(answers[:len(keep)]) == np.searchsorted(labels, np.clip(y.numpy(), 0, 8))) < 0.6
    lies = [(a + 1) % len(labels) for a in answers]
    assert read_answers(query, lies, labels)[1] is False
    with pytest.raises(ProtocolError, match="expected"):
        read_answers(query, answers[:-1], labels)


def test_model_package_and_dataset_payloads():
    blob = pack_model(b"he-bytes", "table4", [3, 1])
    manifest, body = unpack_model(blob)
    assert manifest.labels == [1, 3] and body == b"he-bytes"
    with pytest.raises(ProtocolError, match="does not match"):
        unpack_model(blob[:-1] + b"X")
    with pytest.raises(ProtocolError, match="not a coopml model package"):
        unpack_model(b"garbage")
    images = np.zeros((3, 28, 28), np.uint8)
    got = unpack_dataset(pack_dataset(images, np.array([1, 2, 3])))
    assert got[0].shape == (3, 28, 28)
    with pytest.raises(ProtocolError):
        unpack_dataset(b"not an npz")
    with pytest.raises(ProtocolError, match="criterion"):
        Criterion.parse('{"min_accuracy": 3}')


def test_config_errors_are_clear(tmp_path):
    base = {"chain": "http://127.0.0.1:1", "contract": "0x" + "11" * 20, "store": str(tmp_path),
            "key": "0x" + "22" * 32, "workdir": str(tmp_path / "w")}
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(InitiatorConfig, tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(InitiatorConfig, bad)
    with pytest.raises(ConfigError, match="key"):
        load_config(InitiatorConfig, None, **{**base, "key": "0x1234"})
    with pytest.raises(ConfigError, match="odd"):
        load_config(InitiatorConfig, None, **base, verifiers_per_model=2)
    with pytest.raises(ConfigError, match="task_id"):
        load_config(ContributorConfig, None, **base, labels=[1])
    with pytest.raises(ConfigError, match="from_block"):
        load_config(ContributorConfig, None, **base, labels=[1], task_id=4, from_block=-1)
    cfg = load_config(ContributorConfig, None, **base, labels=[1], task_id=4, from_block=1234)
    assert cfg.task_id == 4 and cfg.from_block == 1234 and "22" * 32 not in repr(cfg)


def test_state_survives_reopen(tmp_path):
    st = AgentState(tmp_path / "s.sqlite")
    st.set("task_id", 7)
    assert st.add_fact("model", 1, {"cid": "Qm"}) and not st.add_fact("model", 1, {"cid": "other"})
    st.close()
    st = AgentState(tmp_path / "s.sqlite")
    assert st.get("task_id") == 7 and st.fact("model", 1) == {"cid": "Qm"}

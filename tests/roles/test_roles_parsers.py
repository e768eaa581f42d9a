"""Every parser of another node's bytes: round trips, and random / mutated payloads give a clear
error of the parser's own type — never anything else (hypothesis)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coopml.roles import messages, package
from coopml.roles.messages import (
    AuditReport,
    DecryptRequest,
    DecryptResponse,
    EvalOffer,
    EvalRequest,
    EvalResponse,
    IvheModel,
    MessageError,
    MessageKind,
    ModelKey,
)
from coopml.roles.sealing import BoxKeyPair, SealError, open_sealed, seal, unwrap, wrap

H = "ab" * 32

SAMPLES = [
    (EvalOffer(task_id=1, model_id=2, params={"poly_modulus_degree": 2048, "coeff_mod_bit_sizes": [54]}), ()),
    (EvalRequest(task_id=1, model_id=2, envelope_hash=H, n_queries=10, offer_cid="bafyoffer", context_cid="bafyctx",
                 batch_cid="bafybatch"), ()),
    (EvalResponse(task_id=1, model_id=2, request_cid="bafyreq", n_queries=10, labels=[0, 3]), (b"\x01" * 100,)),
    (AuditReport(task_id=1, model_id=2, audit_indices=[4, 5], logits=[[0.5, 1.0], [2.0, -1.0]]), ()),
    (ModelKey(task_id=1, model_id=2, key=H), ()),
    (IvheModel(task_id=1, model_id=2, labels=[1, 2]), (b"\x02" * 64,)),
    (DecryptRequest(task_id=1, model_id=2, n_queries=10, reply_box_key=H), (b"\x03" * 64,)),
    (DecryptResponse(task_id=1, model_id=2, request_cid="bafyreq"), (b"\x04" * 16,)),
]


@pytest.mark.parametrize("header,parts", SAMPLES, ids=lambda x: type(x).__name__ if not isinstance(x, tuple) else "")
def test_message_round_trip(header, parts):
    blob = messages.encode(header, parts)
    got, got_parts = messages.decode(blob, header.kind)
    assert got == header and got_parts == parts


def test_message_kind_must_match_the_chain():
    blob = messages.encode(*SAMPLES[0])
    with pytest.raises(MessageError, match="announced"):
        messages.decode(blob, MessageKind.AUDIT_REPORT)


def test_message_rejects_non_finite_and_extra_fields():
    with pytest.raises(ValueError):
        AuditReport(task_id=1, model_id=1, audit_indices=[0], logits=[[float("nan")]])
    blob = messages.encode(*SAMPLES[4]).replace(b'"key"', b'"kex"')
    with pytest.raises(MessageError):
        messages.decode(blob, MessageKind.MODEL_KEY)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600), st.sampled_from(list(MessageKind)))
def test_message_random_bytes(data, kind):
    try:
        messages.decode(data, kind)
    except MessageError:
        pass


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(range(len(SAMPLES))), st.data())
def test_message_mutations(i, data):
    header, parts = SAMPLES[i]
    blob = bytearray(messages.encode(header, parts))
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        pos = data.draw(st.integers(0, max(0, len(blob) - 1)))
        if op == "flip" and blob:
            blob[pos] ^= data.draw(st.integers(1, 255))
        elif op == "cut":
            del blob[pos:pos + data.draw(st.integers(1, 16))]
        else:
            blob[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
    try:
        got, _ = messages.decode(bytes(blob), header.kind)
    except MessageError:
        return
    assert type(got) is type(header)      # a mutation that still parses is still a valid message


def test_package_round_trip_and_tamper():
    blob = package.pack(b"model bytes", "safetensors", [3, 1, 1], arch="table4")
    hdr, body = package.unpack(blob)
    assert body == b"model bytes" and hdr.labels == [1, 3] and hdr.arch == "table4"
    with pytest.raises(package.PackageError, match="hash"):
        package.unpack(blob[:-1] + b"X")
    with pytest.raises(package.PackageError, match="architecture"):
        package.unpack(package.pack(b"x", "safetensors", [0]))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_package_random_bytes(data):
    try:
        package.unpack(b"CMLP2" + data)
    except package.PackageError:
        pass


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_sealed_and_envelope_random_bytes(data):
    pair = BoxKeyPair.generate()
    for fn in (lambda: open_sealed(pair, data), lambda: open_sealed(pair, b"CMLS1" + data),
               lambda: unwrap(b"k" * 32, data), lambda: unwrap(b"k" * 32, b"CMLE1" + data)):
        try:
            fn()
        except SealError:
            pass


def test_sealed_box_binds_context():
    pair = BoxKeyPair.generate()
    blob = seal(pair.public, b"secret", b"model-key:1")
    assert open_sealed(pair, blob, b"model-key:1") == b"secret"
    with pytest.raises(SealError):
        open_sealed(pair, blob, b"model-key:2")
    env = wrap(b"k" * 32, b"payload", b"ctx")
    with pytest.raises(SealError):
        unwrap(b"k" * 32, env, b"other")


def test_value_test_rejects_copies_and_same_labels_and_approves_new_classes():
    from coopml.roles.valuation import class_scores, judge
    rng = np.random.default_rng(0)
    n, classes = 1000, 10
    y = rng.integers(0, classes, size=n)

    def expert(labels, noise=0.3):
        # a model that knows `labels`: a high score for the true class when it is one of them
        s = rng.normal(0, noise, size=(n, classes))
        for c in labels:
            s[y == c, c] += 3.0
        return s

    a = expert(range(5))
    base = [class_scores(a, list(range(5)))]
    copy = judge(a.copy(), y, list(range(5)), base, classes, 0.5, 1, 0.05)
    assert not copy.approve and abs(copy.gain) < 0.01
    same = judge(expert(range(5)), y, list(range(5)), base, classes, 0.5, 1, 0.05)
    assert not same.approve, same
    new = judge(expert(range(5, 10)), y, list(range(5, 10)), base, classes, 0.5, 1, 0.05)
    assert new.approve and new.gain > 0.3, new
    first = judge(a, y, list(range(5)), [], classes, 0.5, 1, 0.05)
    assert first.approve and first.fused_before < 0.2

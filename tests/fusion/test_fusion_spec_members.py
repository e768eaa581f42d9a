"""MetaModel files for a non-MNIST task: a torch member rebuilt for the task's InputSpec, the
built-in "onnx" kind (coopml.models.OnnxFeatureModel, what contributors' own models are
delivered as), and raw samples preprocessed as the stored task manifest says."""

import json

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from coopml.data import InputSpec
from coopml.data.spec import Normalize, Scale
from coopml.errors import ModelFileError
from coopml.fusion import (
    FusionConfig,
    IncrementalFuser,
    TorchMember,
    load_metamodel,
    metamodel_to_bytes,
    read_manifest,
    save_metamodel,
)
from coopml.models import OnnxFeatureModel, build_architecture

SPEC = InputSpec(shape=(3,), dtype="uint8", classes=("a", "b", "c"),
                 preprocessing=(Scale(divide_by=255), Normalize(mean=(0.5, 0.4, 0.5), std=(0.3, 0.2, 0.3))))


def _onnx_member() -> OnnxFeatureModel:
    """input [batch, 3] -> features relu(x @ W1) [batch, 4] -> logits [batch, 3]."""
    rng = np.random.default_rng(0)
    w1 = rng.normal(size=(3, 4)).astype(np.float32)
    w2 = rng.normal(size=(4, 3)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["input", "W1"], ["h"]), helper.make_node("Relu", ["h"], ["features"]),
             helper.make_node("MatMul", ["features", "W2"], ["logits"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3]),
                               helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 4])],
                              [numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(w2, "W2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return OnnxFeatureModel(model.SerializeToString(), SPEC, labels=[1, 2])


def _data(n: int, seed: int) -> tuple[np.ndarray, torch.Tensor]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    raw = np.clip(rng.normal(60 + 60 * y[:, None], 25, size=(n, 3)), 0, 255).astype(np.uint8)
    return raw, torch.as_tensor(y)


@pytest.fixture(scope="module")
def fused(tmp_path_factory):
    torch.manual_seed(0)
    mlp = build_architecture("mlp", SPEC, seed=0)          # untrained: fusion learns on its features
    xtr, ytr = _data(300, 1)
    xva, yva = _data(200, 2)
    train = (torch.from_numpy(SPEC.apply(xtr)), ytr)
    val = (torch.from_numpy(SPEC.apply(xva)), yva)
    manifest = json.dumps({"name": "toy", "input": SPEC.model_dump(mode="json")})
    fuser = IncrementalFuser(train, val, "II", FusionConfig.live(augment_copies=0, max_epochs=15),
                             num_classes=3, class_names=list(SPEC.classes), task_manifest=manifest)
    fuser.add(TorchMember(mlp, [0, 1, 2], SPEC), key="model-1")
    fuser.add(_onnx_member(), key="model-2")
    meta = fuser.fit()
    path = save_metamodel(meta, tmp_path_factory.mktemp("meta") / "metamodel.safetensors")
    return meta, path


def test_members_are_stored_with_their_input_spec_and_kind(fused):
    _, path = fused
    manifest = read_manifest(path.read_bytes())
    assert [(e.key, e.kind) for e in manifest.members] == [("model-1", "torch"), ("model-2", "onnx")]
    assert all(InputSpec.model_validate(e.spec["input"]) == SPEC for e in manifest.members)
    assert manifest.class_names == ["a", "b", "c"] and manifest.input_shape == [3]


def test_loaded_metamodel_predicts_like_the_original(fused):
    meta, path = fused
    loaded = load_metamodel(path)
    assert isinstance(loaded.members[1], OnnxFeatureModel) and loaded.members[1].labels == (1, 2)
    assert loaded.members[0].model.feature_dim == 64          # mlp rebuilt for 3 inputs, not MNIST's 784
    x, y = _data(300, 3)
    xin = torch.from_numpy(SPEC.apply(x))
    assert torch.equal(loaded.predict(xin), meta.predict(xin))
    assert (loaded.predict(xin) == y).float().mean() > 0.8


def test_raw_samples_are_preprocessed_by_the_stored_input_spec(fused):
    _, path = fused
    loaded = load_metamodel(path)
    assert loaded.input_spec == SPEC
    x, _ = _data(200, 4)
    assert torch.equal(loaded.predict(x), loaded.predict(torch.from_numpy(SPEC.apply(x))))
    loaded.task_manifest = None             # without the spec, uint8 is only divided by 255: other inputs
    assert not torch.equal(loaded.predict(x), loaded.predict(torch.from_numpy(SPEC.apply(x))))


def test_damaged_onnx_member_is_a_clear_error(fused, tmp_path):
    meta, _ = fused
    data = bytearray(metamodel_to_bytes(meta))
    bad = tmp_path / "bad.safetensors"
    # flip the ONNX graph's bytes: the digest catches it before any graph is run
    i = bytes(data).rfind(b"features")
    data[i:i + 8] = b"FEATURES"
    bad.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="bad.safetensors"):
        load_metamodel(bad)

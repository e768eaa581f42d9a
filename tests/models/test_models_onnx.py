"""ONNX models: export with (logits, features), and validation before any session is created."""

import copy

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from coopml.data import InputSpec
from coopml.errors import ModelDefinitionError, ModelFileError
from coopml.models import (
    FeatureExtractor,
    OnnxFeatureModel,
    OnnxLimits,
    build_architecture,
    evaluate,
    export_onnx,
    load_onnx_model,
    validate_onnx,
)

TAB = InputSpec(shape=(3,), dtype="float32", classes=("no", "yes"))
W1 = np.arange(12, dtype=np.float32).reshape(3, 4) / 10 - 0.5
W2 = np.arange(8, dtype=np.float32).reshape(4, 2) / 10 - 0.3


def _model(*, nodes=None, inits=None, inputs=None, outputs=None, opset=17, extra_opsets=(), functions=()):
    """input [batch, 3] -> features = relu(x @ W1) [batch, 4] -> logits = features @ W2 [batch, 2]."""
    nodes = nodes if nodes is not None else [
        helper.make_node("MatMul", ["input", "W1"], ["h"]),
        helper.make_node("Relu", ["h"], ["features"]),
        helper.make_node("MatMul", ["features", "W2"], ["logits"]),
    ]
    inits = inits if inits is not None else [numpy_helper.from_array(W1, "W1"), numpy_helper.from_array(W2, "W2")]
    inputs = inputs or [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3])]
    outputs = outputs or [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2]),
                          helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 4])]
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), *extra_opsets],
                              functions=list(functions))
    model.ir_version = 8
    return model.SerializeToString()


def test_hand_built_model_runs_and_matches_numpy():
    m = OnnxFeatureModel(_model(), TAB, labels=[1])
    x = torch.rand(5, 3)
    feats = np.maximum(x.numpy() @ W1, 0)
    np.testing.assert_allclose(m.features(x).numpy(), feats, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m(x).numpy(), feats @ W2, rtol=1e-5, atol=1e-6)
    assert m.feature_dim == 4 and m.labels == (1,) and m.num_classes == 2
    assert isinstance(m, FeatureExtractor) and list(m.parameters()) == []
    assert m(torch.zeros(0, 3)).shape == (0, 2)
    with pytest.raises(ModelDefinitionError, match=r"input batch \(5, 4\) does not match"):
        m(torch.rand(5, 4))


def test_export_reload_matches_torch_and_carries_labels(tmp_path):
    spec = InputSpec(shape=(3, 10, 10), dtype="uint8", classes=("a", "b", "c"))
    model = build_architecture("cnn-small", spec, seed=1)
    data = export_onnx(model, spec, labels=[0, 2], path=tmp_path / "m.onnx")
    assert (tmp_path / "m.onnx").read_bytes() == data
    loaded = load_onnx_model(tmp_path / "m.onnx", spec)
    x = torch.rand(7, 3, 10, 10)
    with torch.no_grad():
        assert torch.allclose(loaded.features(x), model.features(x), atol=1e-5)
        assert torch.allclose(loaded(x), model(x), atol=1e-5)
    assert loaded.labels == (0, 2) and loaded.feature_dim == 128
    twin = copy.deepcopy(loaded)       # a session cannot be copied; the copy has its own
    assert torch.equal(twin(x), loaded(x)) and twin._session is not loaded._session
    proto = onnx.load_from_string(data)
    assert [o.name for o in proto.graph.output] == ["logits", "features"]
    assert max(i.version for i in proto.opset_import if i.domain in ("", "ai.onnx")) == 17


def test_received_model_for_another_task_is_refused():
    spec = InputSpec(shape=(3,), dtype="float32", classes=("a", "b"))
    data = export_onnx(build_architecture("mlp", spec, seed=0), spec)
    with pytest.raises(ModelFileError, match="exported for InputSpec .* this task's is"):
        OnnxFeatureModel(data, spec.model_copy(update={"classes": ("b", "a")}))
    with pytest.raises(ModelFileError, match=r"input 'input' is \['\?', 3\], the InputSpec needs float32 \[batch, 4\]"):
        OnnxFeatureModel(data, InputSpec(shape=(4,), dtype="float32", classes=("a", "b")))


def _external_weight():
    t = numpy_helper.from_array(W1, "W1")
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    entry = t.external_data.add()
    entry.key, entry.value = "location", "../../../etc/passwd"
    return t


def _function():
    return helper.make_function("local", "Evil", ["x"], ["y"], [helper.make_node("Relu", ["x"], ["y"])],
                                [helper.make_opsetid("", 17)])


@pytest.mark.parametrize("data,msg", [
    (b"", "no graph"),
    (b"\xff\xff\xff\xff garbage", "not an ONNX model"),
    (_model(nodes=[helper.make_node("Backdoor", ["input"], ["features"], domain="com.evil"),
                   helper.make_node("MatMul", ["features", "W2"], ["logits"])],
            extra_opsets=[helper.make_opsetid("com.evil", 1)]), "imports operator domain 'com.evil'"),
    (_model(nodes=[helper.make_node("Gelu", ["input"], ["features"], domain="com.microsoft"),
                   helper.make_node("MatMul", ["features", "W2"], ["logits"])]), "uses operator domain 'com.microsoft'"),
    (_model(functions=[_function()]), r"defines model-local functions \['local::Evil'\]"),
    (_model(inits=[_external_weight(), numpy_helper.from_array(W2, "W2")]), "tensor 'W1' refers to an external data file"),
    (_model(opset=9), r"opset 9 is outside the accepted 13..21"),
    (_model(opset=25), r"opset 25 is outside"),
    (_model(nodes=[helper.make_node("MatMul", ["input", "W1"], ["h"]),
                   helper.make_node("Snake", ["h"], ["features"]),
                   helper.make_node("MatMul", ["features", "W2"], ["logits"])]), "'Snake' is not a standard ONNX operator"),
    (_model(nodes=[helper.make_node("MatMul", ["input", "W1"], ["h"]),
                   helper.make_node("Loop", ["", ""], ["features"]),
                   helper.make_node("MatMul", ["features", "W2"], ["logits"])]), "operator Loop is not accepted"),
    (_model(nodes=[helper.make_node("MatMul", ["input", "W9"], ["h"]),
                   helper.make_node("Relu", ["h"], ["features"]),
                   helper.make_node("MatMul", ["features", "W2"], ["logits"])]), "fails the ONNX checker"),
    (_model(inputs=[helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3]),
                    helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["batch", 3])]), r"has 2 inputs \['input', 'mask'\]"),
    (_model(nodes=[helper.make_node("Cast", ["input"], ["x32"], to=TensorProto.FLOAT),
                   helper.make_node("MatMul", ["x32", "W1"], ["h"]),
                   helper.make_node("Relu", ["h"], ["features"]),
                   helper.make_node("MatMul", ["features", "W2"], ["logits"])],
            inputs=[helper.make_tensor_value_info("input", TensorProto.DOUBLE, ["batch", 3])]), "is not float32"),
    (_model(outputs=[helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])]),
     r"missing output\(s\) \['features'\]"),
    (_model(inits=[numpy_helper.from_array(W1, "W1"), numpy_helper.from_array(np.ones((4, 5), np.float32), "W2")],
            outputs=[helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 5]),
                     helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 4])]),
     "output 'logits' has 5 classes, the task has 2"),
])
def test_refused_before_any_session(data, msg):
    with pytest.raises(ModelFileError, match=msg):
        validate_onnx(data, TAB, where="peer.onnx")
    with pytest.raises(ModelFileError, match=msg):
        OnnxFeatureModel(data, TAB, where="peer.onnx")


def test_size_limit_and_runtime_shape_checks(tmp_path):
    with pytest.raises(ModelFileError, match="bytes, the limit is 100"):
        OnnxFeatureModel(_model(), TAB, limits=OnnxLimits(max_bytes=100))
    # declared [batch, 2] logits, but the graph squeezes the batch into one row at run time
    shape = numpy_helper.from_array(np.array([1, -1], np.int64), "flat")
    nodes = [helper.make_node("MatMul", ["input", "W1"], ["h"]), helper.make_node("Relu", ["h"], ["features"]),
             helper.make_node("MatMul", ["features", "W2"], ["l2"]), helper.make_node("Reshape", ["l2", "flat"], ["logits"])]
    bad = _model(nodes=nodes, inits=[numpy_helper.from_array(W1, "W1"), numpy_helper.from_array(W2, "W2"), shape],
                 outputs=[helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", None]),
                          helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 4])])
    with pytest.raises(ModelFileError, match=r"returns logits \(1, 4\) .* expected \(2, 2\)"):
        OnnxFeatureModel(bad, TAB)
    path = tmp_path / "m.onnx"
    path.write_bytes(_model())
    with pytest.raises(ModelFileError, match="does not match the pinned"):
        load_onnx_model(path, TAB, sha256="0" * 64)
    with pytest.raises(ModelFileError, match="no such model file"):
        load_onnx_model(tmp_path / "nope.onnx", TAB)


def test_label_metadata_checked():
    proto = onnx.load_from_string(_model())
    entry = proto.metadata_props.add()
    entry.key, entry.value = "coopml.labels", "[0, 7]"
    with pytest.raises(ModelFileError, match="metadata coopml.labels is not a valid label set"):
        OnnxFeatureModel(proto.SerializeToString(), TAB)
    entry.value = "[1]"
    assert OnnxFeatureModel(proto.SerializeToString(), TAB).labels == (1,)
    with pytest.raises(ModelFileError, match=r"labels \[0\] disagree with the model's metadata \[1\]"):
        OnnxFeatureModel(proto.SerializeToString(), TAB, labels=[0])


def test_onnx_member_evaluates_like_torch(mnist_test):
    """The paper's CNN exported to ONNX classifies the MNIST test set exactly like torch."""
    from coopml.data import MNIST_INPUT
    from coopml.models import build_model
    model = build_model("table4", seed=3)
    member = OnnxFeatureModel(export_onnx(model, MNIST_INPUT), MNIST_INPUT)
    part = mnist_test.subset(np.arange(500))
    assert evaluate(member, part) == evaluate(model, part)

"""Members beyond torch (an ONNX graph run by onnxruntime, a tabular extractor) and the
self-describing MetaModel file: round trip, and a clear ModelFileError for every mismatch."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from coopml.errors import ModelFileError
from coopml.fusion import (
    FeatureExtractor,
    FusionConfig,
    FusionError,
    MemberKind,
    MetaModel,
    TorchMember,
    bytes_to_tensor,
    fuse,
    load_metamodel,
    metamodel_from_bytes,
    metamodel_to_bytes,
    read_manifest,
    register_member_kind,
    save_metamodel,
    tensor_to_bytes,
)
from coopml.fusion.file import DIGEST_KEY, MANIFEST_KEY, _digest
from coopml.models import evaluate, save_model

FAST = FusionConfig(max_epochs=15, patience=4, batch_size=200, feature_activation="relu")


class OnnxMember:
    """A member given as an ONNX graph (x: [N, 1, 28, 28] -> features: [N, D]), run by onnxruntime."""

    def __init__(self, graph: bytes, labels):
        self.graph = graph
        self.session = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
        self.feature_dim = int(self.session.get_outputs()[0].shape[1])
        self.labels = tuple(labels)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {"x": x.numpy().astype(np.float32)})[0])


register_member_kind(MemberKind(
    "onnx-test", lambda m: isinstance(m, OnnxMember),
    lambda m: ({"runtime": "onnxruntime"}, {"graph": bytes_to_tensor(m.graph)}),
    lambda spec, tensors, labels: OnnxMember(tensor_to_bytes(tensors["graph"]), labels)), replace=True)


def table4_to_onnx(model) -> bytes:
    """The Table IV feature extractor (conv, avgpool, conv, avgpool, flatten) as an ONNX graph."""
    conv1, conv2 = model.body[0], model.body[2]
    inits = [numpy_helper.from_array(t.detach().numpy(), name) for name, t in
             (("w1", conv1.weight), ("b1", conv1.bias), ("w2", conv2.weight), ("b2", conv2.bias))]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[2, 2, 2, 2]),
             helper.make_node("AveragePool", ["c1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], pads=[2, 2, 2, 2]),
             helper.make_node("AveragePool", ["c2"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Flatten", ["p2"], ["features"], axis=1)]
    graph = helper.make_graph(nodes, "table4-features",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 28, 28])],
                              [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 784])], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(m)
    return m.SerializeToString()


@pytest.fixture(scope="module")
def fused(fusion_members):
    shards, models, test = fusion_members
    init = shards["initiator"]
    onnx_member = OnnxMember(table4_to_onnx(models["high"]), shards["high"].spec.labels)
    members = [TorchMember(models["low"], shards["low"].spec.labels), onnx_member,
               TorchMember(models["mixed"], shards["mixed"].spec.labels)]
    meta = fuse(members, init.train, init.verify, "II", FAST)
    meta.task_manifest = json.dumps({"task": 7, "preprocessing": "uint8 / 255"})
    return meta, members, init, test


def test_onnx_member_is_a_feature_extractor_and_matches_torch(fusion_members, fused):
    _, models, test = fusion_members
    _, members, _, _ = fused
    onnx_member = members[1]
    assert isinstance(onnx_member, FeatureExtractor) and not isinstance(onnx_member, torch.nn.Module)
    x, _ = test.tensors()
    assert torch.allclose(onnx_member.features(x[:50]), models["high"].features(x[:50]), atol=1e-4)


def test_mixed_kinds_fuse_and_round_trip_through_one_file(fused, tmp_path):
    meta, _, _, test = fused
    assert meta.num_classes == 10 and meta.input_shape == (1, 28, 28)
    assert evaluate(meta, test) > 0.75
    path = save_metamodel(meta, tmp_path / "meta.safetensors", member_keys=["model1", "model7", "model9"])
    again = load_metamodel(path)
    x, _y = test.tensors()
    assert torch.equal(again.predict(test.images), meta.predict(x))
    assert [m.labels for m in again.members] == [m.labels for m in meta.members]
    assert again.task_manifest == meta.task_manifest                       # stored verbatim
    man = read_manifest(path.read_bytes())
    assert [e.kind for e in man.members] == ["torch", "onnx-test", "torch"]
    assert [e.key for e in man.members] == ["model1", "model7", "model9"]
    assert man.members[0].spec["arch"] == "table4" and man.strategy == "II"
    assert man.class_names == [str(c) for c in range(10)] and man.input_shape == [1, 28, 28]


def _rewrite(data: bytes, edit_manifest=None, edit_tensors=None, fix_digest=True) -> bytes:
    """Re-save a MetaModel file after editing its manifest dict and/or tensors."""
    n = int.from_bytes(data[:8], "little")
    meta = json.loads(data[8:8 + n])["__metadata__"]
    tensors = st_load(data)
    manifest = json.loads(meta[MANIFEST_KEY])
    if edit_manifest:
        edit_manifest(manifest)
    if edit_tensors:
        edit_tensors(tensors)
    text = json.dumps(manifest)
    digest = _digest(text, tensors) if fix_digest else meta[DIGEST_KEY]
    return st_save(tensors, metadata={MANIFEST_KEY: text, DIGEST_KEY: digest})


def test_every_mismatch_is_a_clear_model_file_error(fused, tmp_path):
    meta, _, _, _ = fused
    good = metamodel_to_bytes(meta)
    metamodel_from_bytes(good)  # sanity

    def labels(m):
        m["members"][0]["labels"] = [0, 1, 2]

    def version(m):
        m["version"] = 2

    def kind(m):
        m["members"][1]["kind"] = "tflite"

    def arch(m):
        m["members"][0]["spec"]["arch"] = "table1-c2"

    def drop_member(t):
        for k in [k for k in t if k.startswith("member.m2.")]:
            del t[k]

    def reshape_head(t):
        t["head.0.A"] = t["head.0.A"][:-1]

    cases = [
        (_rewrite(good, labels, fix_digest=False), "modified"),              # tampered metadata
        (_rewrite(good, labels), "head.0.A .* need"),                         # consistent digest, wrong labels
        (_rewrite(good, version), "version 2 is not supported"),
        (_rewrite(good, kind), "unknown member kind 'tflite'"),
        (_rewrite(good, arch), "member 'm0'"),
        (_rewrite(good, edit_tensors=drop_member), "member 'm2' has no tensors"),
        (_rewrite(good, edit_tensors=reshape_head), "head.0.A"),
        (good[:len(good) // 2], "corrupt|exceeds"),
    ]
    for data, match in cases:
        with pytest.raises(ModelFileError, match=match):
            metamodel_from_bytes(data, "meta.safetensors")
    # the bare state dict the initiator used to write, and a single-model file, are not MetaModels
    bare = st_save({k: v.contiguous() for k, v in meta.state_dict().items()})
    with pytest.raises(ModelFileError, match="not a MetaModel file"):
        metamodel_from_bytes(bare)
    save_model(meta.members[0].model, tmp_path / "model.safetensors", [0, 1, 2, 3, 4])
    with pytest.raises(ModelFileError, match="not a MetaModel file"):
        load_metamodel(tmp_path / "model.safetensors")
    with pytest.raises(ModelFileError, match="no such"):
        load_metamodel(tmp_path / "missing.safetensors")


class RandomReluFeatures:
    """A tabular member: fixed random ReLU features of a flat input vector."""

    def __init__(self, dim_in: int, dim: int, labels, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.w = torch.randn(dim_in, dim, generator=g) / dim_in ** 0.5
        self.feature_dim = dim
        self.labels = tuple(labels)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x @ self.w)


def test_non_image_inputs_and_class_count_come_from_data_and_members(fusion_members):
    shards, _, test = fusion_members
    init = shards["initiator"]
    flat = [(torch.from_numpy(d.images.reshape(len(d), -1)).float() / 255, torch.from_numpy(d.labels))
            for d in (init.train, init.verify, test)]
    members = [RandomReluFeatures(784, 300, range(6), 1), RandomReluFeatures(784, 300, range(4, 10), 2)]
    with pytest.raises(FusionError, match="augment_copies"):
        fuse(members, flat[0], flat[1], "II", FAST.model_copy(update={"augment_copies": 2}))
    meta = fuse(members, flat[0], flat[1], "II", FAST)
    assert meta.num_classes == 10 and meta.input_shape == (784,)           # max label + 1, flat inputs
    acc = (meta.predict(flat[2][0]) == flat[2][1]).float().mean().item()
    assert acc > 0.7
    with pytest.raises(FusionError, match="expects inputs of shape"):
        meta(torch.zeros(3, 1, 28, 28))
    # three classes only: the head, the file and the predictions follow
    keep = [torch.isin(y, torch.tensor([0, 1, 2])) for _, y in flat]
    small = [(x[k], y[k]) for (x, y), k in zip(flat, keep)]
    m3 = fuse([RandomReluFeatures(784, 100, (0, 1, 2), 3)], small[0], small[1], "II", FAST)
    assert m3.num_classes == 3 and m3(small[2][0][:4]).shape == (4, 3)


def test_a_member_that_is_not_one_is_refused(fusion_members):
    shards, _models, _ = fusion_members
    init = shards["initiator"]
    with pytest.raises(FusionError, match="not a fusion member"):
        fuse([object()], init.train, init.verify)
    with pytest.raises(FusionError, match="declares labels"):
        MetaModel([RandomReluFeatures(784, 10, (0, 1), 0)], [(2, 3)])
    with pytest.raises(FusionError, match="no registered member kind"):
        metamodel_to_bytes(fuse([RandomReluFeatures(784, 50, range(10), 0)],
                                *[(torch.from_numpy(d.images.reshape(len(d), -1)).float() / 255,
                                   torch.from_numpy(d.labels)) for d in (init.train, init.verify)],
                                "II", FAST))

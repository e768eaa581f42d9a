import json

import pytest
import torch
from safetensors.torch import save as st_save

from coopml.errors import ModelFileError
from coopml.models import build_model, load_model, save_model
from coopml.models.io import manifest_path, model_from_bytes, model_to_bytes


def test_roundtrip(tmp_path):
    m = build_model("table1-c2", seed=4)
    manifest = save_model(m, tmp_path / "m.safetensors", (9, 0, 6, 7, 8))
    loaded, man2 = load_model(tmp_path / "m.safetensors")
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(m(x), loaded(x))
    assert man2.labels == [0, 6, 7, 8, 9] and man2.arch == "table1-c2"
    side = json.loads(manifest_path(tmp_path / "m.safetensors").read_text())
    assert side["sha256"] == manifest.sha256 and len(side["sha256"]) == 64


def test_tampered_file_detected(tmp_path):
    path = tmp_path / "m.safetensors"
    save_model(build_model("table4"), path, (1, 2))
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="does not match manifest"):
        load_model(path)


def _blob(state, meta):
    return st_save(state, metadata={"coopml": json.dumps(meta)} if meta is not None else None)


def test_rejects_unknown_arch_and_shape_mismatch():
    good = build_model("table4").state_dict()
    with pytest.raises(ModelFileError, match="unknown architecture"):
        model_from_bytes(_blob(good, {"arch": "vgg", "labels": [1]}))
    bad = dict(good)
    bad["head.weight"] = torch.zeros(10, 100)
    with pytest.raises(ModelFileError, match=r"head.weight has shape \(10, 100\)"):
        model_from_bytes(_blob(bad, {"arch": "table4", "labels": [1]}))
    missing = {k: v for k, v in good.items() if k != "head.bias"}
    with pytest.raises(ModelFileError, match="missing"):
        model_from_bytes(_blob(missing, {"arch": "table4", "labels": [1]}))
    nan = dict(good)
    nan["head.bias"] = torch.full((10,), float("nan"))
    with pytest.raises(ModelFileError, match="NaN"):
        model_from_bytes(_blob(nan, {"arch": "table4", "labels": [1]}))


@pytest.mark.parametrize("data,msg", [
    (b"", "too short"),
    (b"\xff" * 16, "header length"),
    ((5).to_bytes(8, "little") + b"nojsn", "not JSON"),
])
def test_rejects_garbage(data, msg):
    with pytest.raises(ModelFileError, match=msg):
        model_from_bytes(data)


def test_rejects_missing_or_bad_manifest():
    state = build_model("table4").state_dict()
    with pytest.raises(ModelFileError, match="no coopml manifest"):
        model_from_bytes(_blob(state, None))
    with pytest.raises(ModelFileError, match="labels"):
        model_from_bytes(_blob(state, {"arch": "table4", "labels": [12]}))
    with pytest.raises(ModelFileError, match="unsupported format"):
        model_from_bytes(_blob(state, {"arch": "table4", "labels": [1], "format": "other/9"}))


def test_truncated_tensor_data():
    blob = model_to_bytes(build_model("table4"), [1])
    with pytest.raises(ModelFileError):
        model_from_bytes(blob[:-100])


def test_missing_file(tmp_path):
    with pytest.raises(ModelFileError, match="no such model file"):
        load_model(tmp_path / "nope.safetensors")

"""End to end on non-MNIST data: a user's own model, by import path, trained on pinned files of
the formats people have, exported to ONNX and reloaded as another node would."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from coopml.data import DatasetRef, InputSpec, Normalize, Scale
from coopml.models import (
    OnnxFeatureModel,
    TorchModelRef,
    TrainConfig,
    evaluate,
    export_onnx,
    train_model,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def _blobs_csv(path: Path, n: int, seed: int) -> None:
    """Three diagnoses as Gaussian blobs over 6 measurements (on clinical scales), labels as names."""
    rng = np.random.default_rng(seed)
    centres = np.array([[40, 36.8, 97, 70, 120, 5], [55, 38.9, 94, 95, 130, 11], [65, 38.2, 88, 105, 140, 9]])
    scales = np.array([12, 0.4, 2, 8, 10, 2])
    names = ["healthy", "flu", "covid"]
    rows = ["age,temp,spo2,pulse,bp,wbc,diagnosis"]
    for i in range(n):
        c = i % 3
        v = centres[c] + rng.normal(size=6) * scales * 0.6
        rows.append(",".join(f"{x:.3f}" for x in v) + f",{names[c]}")
    path.write_text("\n".join(rows) + "\n")


def test_mlp_by_import_path_on_a_tabular_csv(tmp_path):
    spec = InputSpec(shape=(6,), dtype="float32", classes=("healthy", "flu", "covid"),
                     feature_names=("age", "temp", "spo2", "pulse", "bp", "wbc"),
                     preprocessing=(Normalize(mean=(55, 38, 93, 90, 130, 8), std=(12, 1, 4, 15, 10, 3)),))
    for name, n, seed in (("train", 240, 0), ("val", 90, 1), ("test", 150, 2)):
        _blobs_csv(tmp_path / f"{name}.csv", n, seed)
    refs = {s: DatasetRef.pin("csv", tmp_path / f"{s}.csv", label_column="diagnosis") for s in ("train", "val", "test")}
    train, val, test = (refs[s].load(spec) for s in ("train", "val", "test"))
    model = TorchModelRef(entrypoint="hospital_models:make_mlp", feature_layer="embedding",
                          search_path=FIXTURES).build(spec)
    before = evaluate(model, test)
    res = train_model(model, train, val, TrainConfig(max_epochs=40, patience=10, batch_size=20, lr=1e-2, seed=0))
    acc = evaluate(model, test)
    assert acc > 0.9 and acc > before + 0.2, (before, acc)
    assert res.history[-1][0] < res.history[0][0]
    member = OnnxFeatureModel(export_onnx(model, spec), spec)
    x, _ = test.tensors()
    with torch.no_grad():
        assert torch.allclose(member.features(x), model.features(x), atol=1e-4)
    assert evaluate(member, test) == acc


def _pattern(kind: int, rng: np.random.Generator, size: int = 12) -> np.ndarray:
    """RGB images whose class is the orientation of stripes (with random phase, colour and noise)."""
    i, j = np.mgrid[0:size, 0:size]
    phase = rng.integers(0, 4)
    stripes = [(i + phase) % 4 < 2, (j + phase) % 4 < 2, (i + j + phase) % 4 < 2][kind]
    colour = rng.uniform(120, 255, size=3)
    img = stripes[..., None] * colour + rng.normal(0, 25, (size, size, 3)) + 40
    return np.clip(img, 0, 255).astype(np.uint8)


def _image_folder(root: Path, per_class: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for k, name in enumerate(("horizontal", "vertical", "diagonal")):
        (root / name).mkdir(parents=True)
        for n in range(per_class):
            Image.fromarray(_pattern(k, rng)).save(root / name / f"{n:03d}.{'png' if n % 2 else 'jpg'}", quality=95)


@pytest.mark.parametrize("labels", [None, (0, 2)])
def test_cnn_on_an_image_folder_exported_to_onnx(tmp_path, labels):
    spec = InputSpec(shape=(3, 12, 12), dtype="uint8", classes=("horizontal", "vertical", "diagonal"),
                     preprocessing=(Scale(divide_by=255), Normalize(mean=(0.5,) * 3, std=(0.25,) * 3)))
    for name, n, seed in (("train", 40, 0), ("val", 12, 1), ("test", 20, 2)):
        _image_folder(tmp_path / name, n, seed)
    train, val, test = (DatasetRef.pin("image-folder", tmp_path / s).load(spec) for s in ("train", "val", "test"))
    assert train.images.shape == (120, 3, 12, 12)
    if labels is not None:     # a party that only has two of the classes
        keep = np.isin(train.labels, labels)
        train, val = train.subset(np.flatnonzero(keep)), val.subset(np.flatnonzero(np.isin(val.labels, labels)))
    model = TorchModelRef(entrypoint="hospital_models:make_cnn", feature_layer="embed",
                          search_path=FIXTURES).build(spec, labels=labels)
    train_model(model, train, val, TrainConfig(max_epochs=25, patience=8, batch_size=16, lr=3e-3, seed=0), labels=labels)
    acc = evaluate(model, test, labels)
    assert acc > 0.9, acc
    path = tmp_path / "model.onnx"
    export_onnx(model, spec, path=path)
    member = OnnxFeatureModel(path.read_bytes(), spec, where=str(path))      # as a receiving node loads it
    assert member.labels == model.labels and member.feature_dim == model.feature_dim == 24
    x, _ = test.tensors()
    with torch.no_grad():
        assert torch.allclose(member.features(x), model.features(x), atol=1e-4)
        assert torch.allclose(member(x), model(x), atol=1e-4)
    assert evaluate(member, test, labels) == acc

"""Files a node keeps to itself (plaintext models, keys, passwords, private data) are owner-only
from the moment they exist, not chmod-ed afterwards: `chmod` is disabled here, so a writer that
relied on it leaves a file others can read (umask 022, the usual default)."""

import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from coopml.data import MNIST_INPUT, Dataset
from coopml.fusion import FusionConfig, fuse, save_metamodel
from coopml.models import build_model, export_onnx, save_model
from coopml.paths import write_private
from coopml.roles.config import ModelSource
from coopml.roles.models import ModelRecord, save_record
from coopml.sim.slots import write_npz


@pytest.fixture
def no_chmod(monkeypatch):
    """umask 022 and no path-based chmod: only the mode a file is created with (and fchmod on the
    open descriptor) can make it private."""
    old = os.umask(0o022)
    monkeypatch.setattr(os, "chmod", lambda *a, **k: None)
    monkeypatch.setattr(Path, "chmod", lambda *a, **k: None)
    yield
    os.umask(old)


def _modes(directory: Path) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in directory.rglob("*") if p.is_file()}


def test_write_private_is_owner_only_atomic_and_leaves_nothing_on_failure(tmp_path, no_chmod, monkeypatch):
    path = write_private(tmp_path / "sub" / "secret", "first")
    assert path.read_text() == "first" and stat.S_IMODE(path.stat().st_mode) == 0o600
    write_private(path, b"second", durable=True)
    assert path.read_bytes() == b"second" and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["secret"]
    # a public file on request: the mode given, whatever the umask
    os.umask(0o077)
    assert stat.S_IMODE(write_private(tmp_path / "pub", b"x", mode=0o644).stat().st_mode) == 0o644

    def fail(*_a, **_k):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_private(path, b"third")
    assert path.read_bytes() == b"second"                       # the old file survives
    assert sorted(p.name for p in path.parent.iterdir()) == ["secret"]   # no .part left behind


def test_models_records_data_and_metamodels_are_created_private(tmp_path, no_chmod):
    model = build_model("table4", seed=0)
    save_model(model, tmp_path / "model" / "m.safetensors", [0, 1])
    export_onnx(model, MNIST_INPUT, labels=[0, 1], path=tmp_path / "onnx" / "m.onnx")
    save_record(ModelRecord(model, [0, 1], ModelSource(arch="table4"), MNIST_INPUT), tmp_path / "record")
    factory = ModelSource(factory="pkg.mod:build", feature_layer="0")
    save_record(ModelRecord(torch.nn.Sequential(torch.nn.Linear(3, 2)), [0, 1], factory, MNIST_INPUT),
                tmp_path / "factory-record")
    write_npz(Dataset(np.zeros((2, 28, 28), np.uint8), np.array([0, 1])), tmp_path / "data" / "d.npz")
    x, y = torch.rand(8, 1, 28, 28), torch.tensor([0, 1] * 4)
    meta = fuse([model], (x, y), (x, y), "II", FusionConfig(max_epochs=1, patience=1, augment_copies=0))
    save_metamodel(meta, tmp_path / "meta" / "m.cmm")
    modes = _modes(tmp_path)
    assert set(modes) == {"m.safetensors", "m.safetensors.json", "model.safetensors", "model.safetensors.json",
                          "labels.txt", "weights.safetensors", "d.npz", "m.cmm", "m.onnx"}, modes
    assert all(mode == 0o600 for mode in modes.values()), modes


def test_concurrent_writers_of_one_path_never_mix_or_fail(tmp_path):
    """Two writers of one file (a fusion job being replaced by the next, say): each writes its own
    temporary file, the last rename wins; with one shared temporary name they removed or
    truncated each other's."""
    import threading

    path = tmp_path / "meta"
    payloads = [bytes([i]) * 200_000 for i in (1, 2)]
    errors: list[BaseException] = []

    def writer(payload: bytes) -> None:
        try:
            for _ in range(100):
                write_private(path, payload)
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)
    threads = [threading.Thread(target=writer, args=(p,)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert path.read_bytes() in payloads
    assert [p.name for p in tmp_path.iterdir()] == ["meta"]

import numpy as np
import pytest

from coopml.data import (
    Dataset,
    DatasetRef,
    InputSpec,
    dataset_info,
    dataset_names,
    datasets,
    load_dataset,
    register_dataset,
    unregister_dataset,
)
from coopml.errors import DataError

SPEC = InputSpec(shape=(2,), dtype="float32", classes=("a", "b"))


@pytest.fixture
def scratch_name():
    yield "test-scratch"
    if "test-scratch" in dataset_names():
        unregister_dataset("test-scratch")


def test_builtins_are_registered_and_load_dataset_still_works(mnist_test):
    assert {"mnist", "fashion-mnist"} <= set(dataset_names())
    assert "MNIST" in dataset_info("mnist").description
    got = load_dataset("mnist", "test")
    assert got is datasets.load_dataset("mnist", "test")   # the same cached dataset
    assert got.spec is not None and got.spec.classes[3] == "3"
    with pytest.raises(DataError, match="split must be"):
        load_dataset("mnist", "dev")


def test_register_load_duplicate_and_unknown(scratch_name):
    calls = []

    def loader(split: str) -> Dataset:
        calls.append(split)
        return Dataset(np.zeros((3, 2), np.float32), np.array([0, 1, 1]), SPEC)

    register_dataset(scratch_name, loader, description="three rows")
    assert scratch_name in dataset_names()
    assert len(load_dataset(scratch_name, "val")) == 3 and calls == ["val"]
    with pytest.raises(DataError, match="'test-scratch' is already registered .three rows.; pass allow_overwrite"):
        register_dataset(scratch_name, loader)
    register_dataset(scratch_name, lambda split: load_dataset("mnist", split), allow_overwrite=True)
    assert len(load_dataset(scratch_name, "test")) == 10000
    unregister_dataset(scratch_name)
    with pytest.raises(DataError, match=r"unknown dataset 'test-scratch'; known: .*fashion-mnist.*mnist"):
        load_dataset(scratch_name)


def test_bad_registrations(scratch_name):
    with pytest.raises(DataError, match="must be 1-64 of"):
        register_dataset("My Data", lambda s: None)  # type: ignore[arg-type, return-value]
    with pytest.raises(DataError, match="not callable"):
        register_dataset(scratch_name, "loader")  # type: ignore[arg-type]
    register_dataset(scratch_name, lambda split: np.zeros(3))  # type: ignore[arg-type, return-value]
    with pytest.raises(DataError, match="loader returned ndarray, not a coopml Dataset"):
        load_dataset(scratch_name, "train")


def test_a_pinned_file_as_a_registered_dataset(tmp_path, scratch_name):
    for split in ("train", "test"):
        np.savez(tmp_path / f"{split}.npz", x=np.ones((4, 2), np.float32), y=np.array(["a", "b", "b", "a"]))
    refs = {s: DatasetRef.pin("npz", tmp_path / f"{s}.npz") for s in ("train", "test")}

    def loader(split: str) -> Dataset:
        if split not in refs:
            raise DataError(f"split must be one of {sorted(refs)}, not {split!r}")
        return refs[split].load(SPEC)

    register_dataset(scratch_name, loader)
    assert load_dataset(scratch_name, "test").labels.tolist() == [0, 1, 1, 0]

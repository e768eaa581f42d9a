import gzip
import shutil
import struct

import numpy as np
import pytest

from coopml.data import datasets
from coopml.data.idx import parse_idx, read_idx
from coopml.errors import DataError


def _idx(arr: np.ndarray) -> bytes:
    return struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def test_parse_roundtrip():
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    assert np.array_equal(parse_idx(_idx(arr)), arr)


@pytest.mark.parametrize("raw,msg", [
    (b"", "too short"),
    (b"\x01\x02\x08\x01", "not an IDX"),
    (b"\x00\x00\x08\x03\x00\x00", "truncated IDX header"),
])
def test_parse_rejects_garbage(raw, msg):
    with pytest.raises(DataError, match=msg):
        parse_idx(raw)


def test_parse_rejects_truncated_body():
    raw = _idx(np.zeros((3, 2, 2), np.uint8))
    with pytest.raises(DataError, match="header .* says"):
        parse_idx(raw[:-1])


def test_read_gz_and_corrupt_gz(tmp_path):
    arr = np.ones((5,), np.uint8)
    good = tmp_path / "a.gz"
    good.write_bytes(gzip.compress(_idx(arr)))
    assert np.array_equal(read_idx(good), arr)
    bad = tmp_path / "b.gz"
    bad.write_bytes(gzip.compress(_idx(arr))[:-6])
    with pytest.raises(DataError, match="corrupt gzip"):
        read_idx(bad)
    with pytest.raises(DataError, match="no such dataset file"):
        read_idx(tmp_path / "missing")


def test_real_mnist(mnist_train, mnist_test):
    assert mnist_train.images.shape == (60000, 28, 28) and mnist_test.images.shape == (10000, 28, 28)
    # Known class counts of the MNIST training set.
    assert np.bincount(mnist_train.labels).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert mnist_train.images.max() == 255 and mnist_train.images.dtype == np.uint8


def test_corrupted_cache_file_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("COOPML_HOME", str(tmp_path))
    with pytest.raises(DataError, match="missing; run scripts/setup.sh"):
        datasets.verified_path("mnist", "test-labels")
    real = datasets.REGISTRY["mnist"]["test-labels"]
    target = datasets.data_dir("mnist") / real.name
    target.parent.mkdir(parents=True)
    shutil.copyfile(datasets.node_modules() / real.origin, target)
    assert datasets.verified_path("mnist", "test-labels") == target
    data = bytearray(target.read_bytes())
    data[100] ^= 1
    target.write_bytes(bytes(data))
    with pytest.raises(DataError, match="does not match the pinned"):
        datasets.verified_path("mnist", "test-labels")


def test_unknown_dataset_and_split():
    with pytest.raises(DataError, match="unknown dataset"):
        datasets.verified_path("cifar", "train-images")
    with pytest.raises(DataError, match="split must be"):
        datasets.load_dataset("mnist", "dev")


def test_fashion_mnist_loads():
    if not (datasets.data_dir("fashion-mnist") / "t10k-labels-idx1-ubyte.gz").is_file():
        pytest.skip("Debian dataset-fashion-mnist not installed (scripts/setup.sh installs it as root)")
    test = datasets.load_dataset("fashion-mnist", "test")
    assert test.images.shape == (10000, 28, 28)
    assert np.bincount(test.labels).tolist() == [1000] * 10

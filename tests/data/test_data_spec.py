import numpy as np
import pytest
import torch
from pydantic import ValidationError

from coopml.data import MNIST_INPUT, Dataset, InputSpec, Normalize, Scale
from coopml.errors import DataError


def test_mnist_spec_gives_the_legacy_tensors_bit_for_bit(mnist_test):
    assert mnist_test.spec == MNIST_INPUT
    x, y = mnist_test.tensors()
    legacy = torch.from_numpy(mnist_test.images).float().div_(255.0).unsqueeze(1)
    assert x.dtype == torch.float32 and torch.equal(x, legacy)
    assert torch.equal(y, torch.from_numpy(mnist_test.labels))
    assert Dataset(mnist_test.images[:5], mnist_test.labels[:5]).tensors()[0].equal(legacy[:5])  # spec-less


def test_apply_scale_then_per_channel_normalize():
    spec = InputSpec(shape=(3, 2, 2), dtype="uint8", classes=("a", "b"),
                     preprocessing=(Scale(divide_by=255), Normalize(mean=(0.5, 0.0, 1.0), std=(0.5, 2.0, 1.0))))
    raw = np.zeros((1, 3, 2, 2), np.uint8)
    raw[0, 0] = 255
    raw[0, 1] = 51
    out = spec.apply(raw)
    assert out.dtype == np.float32 and out.shape == (1, 3, 2, 2)
    np.testing.assert_allclose(out[0, 0], 1.0)          # (1 - 0.5) / 0.5
    np.testing.assert_allclose(out[0, 1], 0.1)          # 0.2 / 2
    np.testing.assert_allclose(out[0, 2], -1.0)         # (0 - 1) / 1
    assert raw[0, 0, 0, 0] == 255                       # the raw array is untouched


def test_feature_standardisation():
    spec = InputSpec(shape=(2,), dtype="float32", classes=("no", "yes"),
                     preprocessing=(Normalize(mean=(10.0, -1.0), std=(2.0, 0.5)),))
    out = spec.apply(np.array([[12.0, -1.5], [10.0, 0.0]], np.float32))
    np.testing.assert_allclose(out, [[1.0, -1.0], [0.0, 2.0]])


def test_single_channel_images_may_omit_the_channel_axis_but_nothing_is_reshaped():
    spec = InputSpec(shape=(1, 4, 3), dtype="uint8", classes=("a", "b"))
    assert spec.apply(np.ones((2, 4, 3), np.uint8)).shape == (2, 1, 4, 3)
    with pytest.raises(DataError, match=r"shape \(2, 3, 4\) does not match .*\[N, 1, 4, 3\]"):
        spec.apply(np.ones((2, 3, 4), np.uint8))          # transposed: refused, never reshaped
    rgb = InputSpec(shape=(3, 4, 4), dtype="uint8", classes=("a", "b"))
    with pytest.raises(DataError, match="does not match"):
        rgb.apply(np.ones((2, 4, 4, 3), np.uint8))       # HWC is not CHW
    with pytest.raises(DataError, match="dtype float32 does not match the InputSpec's uint8"):
        spec.apply(np.ones((2, 4, 3), np.float32))


@pytest.mark.parametrize("fields,msg", [
    ({"shape": (28, 28)}, "shape must be"),
    ({"shape": (1, 0, 3)}, "positive"),
    ({"classes": ("a",)}, "at least 2"),
    ({"classes": ("a", "b", "a")}, "duplicate class names"),
    ({"classes": ("a", " b")}, "surrounding spaces"),
    ({"dtype": "int64"}, "dtype"),
    ({"preprocessing": (Normalize(mean=(0.0,), std=(1.0,)),)}, "normalize has 1 mean values"),
    ({"feature_names": ("x",)}, "feature_names are for tabular"),
    ({"extra": 1}, "Extra inputs"),
])
def test_invalid_specs(fields, msg):
    base = {"shape": (3, 8, 8), "dtype": "uint8", "classes": ("a", "b")}
    with pytest.raises(ValidationError, match=msg):
        InputSpec(**{**base, **fields})


def test_invalid_steps_and_feature_names():
    with pytest.raises(ValidationError, match="std must be > 0"):
        Normalize(mean=(0.0,), std=(0.0,))
    with pytest.raises(ValidationError, match="greater than 0"):
        Scale(divide_by=0)
    with pytest.raises(ValidationError, match="2 feature_names for shape"):
        InputSpec(shape=(3,), dtype="float32", classes=("a", "b"), feature_names=("x", "y"))


def test_json_roundtrip_digest_and_class_order():
    spec = InputSpec(shape=(5,), dtype="float64", classes=("healthy", "sick"), feature_names=tuple("abcde"),
                     preprocessing=(Normalize(mean=(0,) * 5, std=(1,) * 5),))
    again = InputSpec.model_validate_json(spec.model_dump_json())
    assert again == spec and again.digest() == spec.digest()
    swapped = spec.model_copy(update={"classes": ("sick", "healthy")})
    assert swapped.digest() != spec.digest()             # class order defines label ids
    assert spec.class_id("sick") == 1 and spec.num_classes == 2 and not spec.is_image
    with pytest.raises(DataError, match="'flu' is not one of the classes"):
        spec.class_id("flu")


def test_dataset_checks_its_samples_and_labels_against_the_spec():
    spec = InputSpec(shape=(2,), dtype="float32", classes=("a", "b", "c"))
    ds = Dataset(np.zeros((4, 2), np.float32), np.array([0, 1, 2, 2]), spec)
    assert ds.num_classes == 3 and len(ds.subset(np.array([1, 2]))) == 2 and ds.subset(np.array([0])).spec is spec
    with pytest.raises(DataError, match="labels outside 0..2"):
        Dataset(np.zeros((2, 2), np.float32), np.array([0, 3]), spec)
    with pytest.raises(DataError, match="do not pair up"):
        Dataset(np.zeros((2, 2), np.float32), np.array([0]), spec)
    with pytest.raises(DataError, match=r"shape \(2, 3\)"):
        Dataset(np.zeros((2, 3), np.float32), np.array([0, 1]), spec)

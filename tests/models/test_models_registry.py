"""The public architecture registry; models of registered architectures as safetensors for any spec."""

import pytest
import torch
from torch import nn

from coopml.data import MNIST_INPUT, InputSpec
from coopml.errors import ModelDefinitionError, ModelFileError
from coopml.models import (
    ARCHITECTURES,
    FeatureExtractor,
    FeatureModel,
    architecture_info,
    architecture_names,
    build_architecture,
    build_model,
    load_model,
    register_architecture,
    save_model,
    unregister_architecture,
)
from coopml.models.io import model_from_bytes, model_to_bytes

TAB = InputSpec(shape=(7,), dtype="float32", classes=tuple("abcd"))
RGB = InputSpec(shape=(3, 20, 16), dtype="uint8", classes=("x", "y"))


@pytest.fixture
def scratch():
    yield "test-arch"
    if "test-arch" in architecture_names():
        unregister_architecture("test-arch")


def test_builtins_registered_through_the_public_function():
    assert set(ARCHITECTURES) | {"mlp", "cnn-small"} <= set(architecture_names())
    assert "Table IV" in architecture_info("table4").description
    m = build_architecture("table1-c1", seed=0)       # default spec: MNIST's
    assert isinstance(m, FeatureModel) and isinstance(m, FeatureExtractor) and m.arch == "table1-c1"
    assert build_model("table1-c1", seed=0).state_dict()["head.weight"].equal(m.state_dict()["head.weight"])


def test_paper_architectures_refuse_other_tasks():
    with pytest.raises(ModelDefinitionError, match=r"'table4' is the paper's, defined for 1x28x28 inputs and 10 classes; "
                                                   r"this task's inputs are 3x20x16 uint8, 2 classes"):
        build_architecture("table4", RGB)
    with pytest.raises(ModelFileError, match="unknown architecture 'resnet'; known: .*cnn-small"):
        build_architecture("resnet", RGB)


@pytest.mark.parametrize("arch,spec", [("mlp", TAB), ("mlp", RGB), ("cnn-small", RGB), ("cnn-small", MNIST_INPUT)])
def test_generic_architectures_follow_the_spec(arch, spec):
    m = build_architecture(arch, spec, seed=0)
    x = torch.rand(3, *spec.shape)
    assert m(x).shape == (3, spec.num_classes) and m.features(x).shape == (3, m.feature_dim)
    assert m.num_classes == spec.num_classes


def test_cnn_needs_images():
    with pytest.raises(ModelDefinitionError, match=r"'cnn-small' needs image inputs \[C, H, W\], not \[7\]"):
        build_architecture("cnn-small", TAB)


def test_register_duplicate_and_bad_factories(scratch):
    def linear(spec: InputSpec) -> FeatureModel:
        body = nn.Sequential(nn.Flatten(), nn.Linear(spec.shape[0], 5))
        return FeatureModel("", body, 5, nn.Linear(5, spec.num_classes), spec.num_classes)

    register_architecture(scratch, "a linear feature map", linear)
    m = build_architecture(scratch, TAB)
    assert m.arch == scratch and m.feature_dim == 5
    with pytest.raises(ModelDefinitionError, match="'test-arch' is already registered .a linear feature map."):
        register_architecture(scratch, "again", linear)
    register_architecture(scratch, "not a FeatureModel", lambda spec: nn.Linear(7, 4), allow_overwrite=True)  # type: ignore[arg-type, return-value]
    with pytest.raises(ModelDefinitionError, match="built a Linear, not a FeatureModel"):
        build_architecture(scratch, TAB)
    register_architecture(scratch, "broken", lambda spec: 1 / 0, allow_overwrite=True)  # type: ignore[arg-type, return-value]
    with pytest.raises(ModelDefinitionError, match="failed to build for 7 float32, 4 classes: ZeroDivisionError"):
        build_architecture(scratch, TAB)
    with pytest.raises(ModelDefinitionError, match="must be 1-64 of"):
        register_architecture("Big Net", "", linear)


def test_safetensors_roundtrip_for_a_non_mnist_task(tmp_path):
    m = build_architecture("mlp", TAB, seed=2)
    save_model(m, tmp_path / "m.safetensors", [3, 1])
    loaded, manifest = load_model(tmp_path / "m.safetensors", TAB)
    x = torch.rand(4, 7)
    assert torch.equal(m(x), loaded(x)) and manifest.labels == [1, 3] and loaded.labels == (1, 3)
    with pytest.raises(ModelFileError, match=r"labels \[1, 3\] outside the task's 2 classes"):
        model_from_bytes(model_to_bytes(m, [1, 3]), spec=RGB)
    with pytest.raises(ModelFileError, match="has shape"):   # same architecture, another task's shapes
        model_from_bytes(model_to_bytes(m, [1]), spec=TAB.model_copy(update={"shape": (9,)}))


@pytest.mark.parametrize("arch", ["fading-cnn", "fading-fc"])
def test_case_study_iv_architectures_keep_to_their_task(arch):
    from coopml.data import FADING_INPUT

    assert architecture_info(arch).default_spec == FADING_INPUT and ARCHITECTURES[arch].input_shape == (1, 1, 64)
    m = build_architecture(arch, seed=0)                  # default: its own task, not MNIST's
    assert m(torch.rand(2, 1, 1, 64)).shape == (2, 2) and m.num_classes == 2
    with pytest.raises(ModelDefinitionError, match=rf"'{arch}' is the paper's, defined for 1x1x64 inputs and 2 "
                                                   r"classes; this task's inputs are 1x28x28 uint8, 10 classes"):
        build_architecture(arch, MNIST_INPUT)
    with pytest.raises(ModelDefinitionError, match=r"'table4' is the paper's, defined for 1x28x28 inputs"):
        build_architecture("table4", FADING_INPUT)

"""A user's own model by import path, with a declared feature layer."""

import sys
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from coopml.data import InputSpec
from coopml.errors import ModelDefinitionError
from coopml.models import (
    FeatureExtractor,
    HookedFeatureModel,
    TorchModelRef,
    build_user_model,
    load_factory,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
TAB = InputSpec(shape=(5,), dtype="float32", classes=("a", "b", "c"))


def test_load_factory_like_flower():
    factory = load_factory("hospital_models:make_mlp", FIXTURES)
    assert callable(factory) and str(FIXTURES) in sys.path
    assert load_factory("hospital_models:Factories.mlp", FIXTURES)(TAB).fc1.out_features == 8   # dotted attribute


@pytest.mark.parametrize("entrypoint,msg", [
    ("hospital_models.make_mlp", "must look like 'package.module:factory'"),
    ("hospital_models:", "must look like"),
    ("no_such_hospital_module:make", r"model module 'no_such_hospital_module' not found \(searched"),
    ("hospital_models:make_resnet", r"hospital_models has no attribute 'make_resnet'; it defines: .*make_cnn.*make_mlp"),
    ("hospital_models:Factories.vit", r"hospital_models.Factories has no attribute 'vit'"),
    ("hospital_models:NOT_CALLABLE", "is a int, not callable"),
    ("broken_model:make", "it imports 'coopml_tests_not_installed_dependency', which is not installed"),
    ("exploding_model:make", "importing model module 'exploding_model' raised RuntimeError: config file missing"),
])
def test_load_factory_errors(entrypoint, msg):
    with pytest.raises(ModelDefinitionError, match=msg):
        load_factory(entrypoint, FIXTURES)


def test_search_path_must_exist(tmp_path):
    with pytest.raises(ModelDefinitionError, match="model search path is not a directory"):
        load_factory("x:y", tmp_path / "missing")


def test_hooked_features_are_the_declared_layer():
    model = build_user_model("hospital_models:make_mlp", TAB, feature_layer="embedding", labels=[2, 0],
                             search_path=FIXTURES, kwargs={"hidden": 6})
    assert isinstance(model, FeatureExtractor) and isinstance(model, HookedFeatureModel)
    assert model.feature_dim == 6 and model.labels == (0, 2) and model.arch == "hospital_models:make_mlp"
    x = torch.rand(4, 5)
    inner = model.module
    with torch.no_grad():
        want = torch.relu(inner.fc2(torch.relu(inner.fc1(x))))
        assert torch.allclose(model.features(x), want)
        assert torch.allclose(model(x), inner.classifier(want))
    assert model.module.fc1.weight.requires_grad and set(model.state_dict()) == {f"module.{k}" for k in inner.state_dict()}


@pytest.mark.parametrize("entrypoint,layer,msg", [
    ("hospital_models:make_mlp", "penultimate", r"TinyMLP has no layer 'penultimate'; its layers are: fc1, act1, fc2, embedding, classifier"),
    ("hospital_models:make_mlp", "embeding", r"closest: embedding"),
    ("hospital_models:make_twice", "shared", r"feature layer 'shared' ran 2 times"),
    ("hospital_models:make_three_logits", "1", r"returns \(2, 3\) for a batch of 2, expected logits \(2, 5\)"),
    ("hospital_models:make_fixed_mnist", "1", r"fails on a batch of the InputSpec's shape \[2, 5\]: RuntimeError"),
    ("hospital_models:make_cnn", "embed", r"factory hospital_models:make_cnn raised ValueError"),
    ("hospital_models:not_a_module", "x", "returned a dict, not a torch.nn.Module"),
    ("hospital_models:raises", "x", "raised ValueError: no GPU found"),
])
def test_build_user_model_errors(entrypoint, layer, msg):
    spec = TAB if "three" not in entrypoint else InputSpec(shape=(4,), dtype="float32", classes=tuple("abcde"))
    with pytest.raises(ModelDefinitionError, match=msg):
        build_user_model(entrypoint, spec, feature_layer=layer, search_path=FIXTURES)


def test_labels_must_be_classes_of_the_spec():
    with pytest.raises(ModelDefinitionError, match=r"distinct class ids in 0..2, got \[0, 3\]"):
        build_user_model("hospital_models:make_mlp", TAB, feature_layer="embedding", labels=[0, 3], search_path=FIXTURES)


def test_torch_model_ref_is_a_typed_config(tmp_path):
    ref = TorchModelRef(entrypoint="hospital_models:make_mlp", feature_layer="embedding",
                        search_path=Path("fixtures"), kwargs={"hidden": 4})
    again = TorchModelRef.model_validate_json(ref.model_dump_json())
    assert again == ref
    model = again.build(TAB, labels=[1], base_dir=FIXTURES.parent)
    assert model.feature_dim == 4 and model.labels == (1,)
    with pytest.raises(ValidationError, match="String should match pattern"):
        TorchModelRef(entrypoint="os.system", feature_layer="x")

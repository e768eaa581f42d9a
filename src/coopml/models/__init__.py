"""Contributor CNNs (paper Tables I and IV), training loop and safetensors model files; the public
architecture registry, your own model by import path, ONNX export and validated loading, and the
FeatureExtractor interface fusion uses."""

from coopml.models.activations import PolyActivation, Square, TaylorSigmoid
from coopml.models.architectures import ARCHITECTURES, FeatureModel, build_model
from coopml.models.io import load_model, save_model, ModelManifest
from coopml.models.training import TrainConfig, TrainResult, train_model, evaluate
from coopml.models.training import check_fits
from coopml.models.members import FeatureExtractor, HookedFeatureModel, find_layer
from coopml.models.registry import (
    ArchitectureFactory, ArchitectureInfo, architecture_info, architecture_names, build_architecture,
    register_architecture, unregister_architecture,
)
from coopml.models.onnx_model import (
    OnnxFeatureModel, OnnxLimits, export_onnx, load_onnx_model, logits_and_features, validate_onnx,
)
from coopml.models.user import TorchModelRef, build_user_model, load_factory

__all__ = [
    "ARCHITECTURES", "FeatureModel", "build_model",
    "PolyActivation", "Square", "TaylorSigmoid",
    "load_model", "save_model", "ModelManifest",
    "TrainConfig", "TrainResult", "train_model", "evaluate",
    "check_fits", "FeatureExtractor", "HookedFeatureModel", "find_layer",
    "ArchitectureFactory", "ArchitectureInfo", "architecture_info", "architecture_names", "build_architecture",
    "register_architecture", "unregister_architecture",
    "OnnxFeatureModel", "OnnxLimits", "export_onnx", "load_onnx_model", "logits_and_features", "validate_onnx",
    "TorchModelRef", "build_user_model", "load_factory",
]

"""Contributor CNNs (paper Tables I and IV), training loop and safetensors model files; the public
architecture registry, your own model by import path, ONNX export and validated loading, and the
FeatureExtractor interface fusion uses."""

from coopml.models.activations import PolyActivation, Square, TaylorSigmoid
from coopml.models.architectures import ARCHITECTURES, FeatureModel, build_model
from coopml.models.io import ModelManifest, load_model, save_model
from coopml.models.members import FeatureExtractor, HookedFeatureModel, find_layer
from coopml.models.onnx_model import (
    OnnxFeatureModel,
    OnnxLimits,
    export_onnx,
    load_onnx_model,
    logits_and_features,
    validate_onnx,
)
from coopml.models.registry import (
    ArchitectureFactory,
    ArchitectureInfo,
    architecture_info,
    architecture_names,
    build_architecture,
    register_architecture,
    unregister_architecture,
)
from coopml.models.training import (
    TrainConfig,
    TrainingCancelled,
    TrainResult,
    check_fits,
    evaluate,
    fast_layout,
    train_epoch,
    train_model,
)
from coopml.models.user import TorchModelRef, build_user_model, load_factory

__all__ = [
    "ARCHITECTURES",
    "ArchitectureFactory",
    "ArchitectureInfo",
    "FeatureExtractor",
    "FeatureModel",
    "HookedFeatureModel",
    "ModelManifest",
    "OnnxFeatureModel",
    "OnnxLimits",
    "PolyActivation",
    "Square",
    "TaylorSigmoid",
    "TorchModelRef",
    "TrainConfig",
    "TrainResult",
    "TrainingCancelled",
    "architecture_info",
    "architecture_names",
    "build_architecture",
    "build_model",
    "build_user_model",
    "check_fits",
    "evaluate",
    "export_onnx",
    "fast_layout",
    "find_layer",
    "load_factory",
    "load_model",
    "load_onnx_model",
    "logits_and_features",
    "register_architecture",
    "save_model",
    "train_epoch",
    "train_model",
    "unregister_architecture",
    "validate_onnx",
]

"""Contributor CNNs (paper Tables I and IV), training loop and safetensors model files."""

from coopml.models.activations import PolyActivation, Square, TaylorSigmoid
from coopml.models.architectures import ARCHITECTURES, FeatureModel, build_model, register_architecture
from coopml.models.io import load_model, save_model, ModelManifest
from coopml.models.training import TrainConfig, TrainResult, train_model, evaluate

__all__ = [
    "ARCHITECTURES", "FeatureModel", "build_model", "register_architecture",
    "PolyActivation", "Square", "TaylorSigmoid",
    "load_model", "save_model", "ModelManifest",
    "TrainConfig", "TrainResult", "train_model", "evaluate",
]

"""Contributor CNNs (paper Tables I and IV), training loop and safetensors model files."""

from coopml.models.architectures import ARCHITECTURES, FeatureModel, TaylorSigmoid, build_model
from coopml.models.io import load_model, save_model, ModelManifest
from coopml.models.training import TrainConfig, TrainResult, train_model, evaluate

__all__ = [
    "ARCHITECTURES", "FeatureModel", "TaylorSigmoid", "build_model",
    "load_model", "save_model", "ModelManifest",
    "TrainConfig", "TrainResult", "train_model", "evaluate",
]

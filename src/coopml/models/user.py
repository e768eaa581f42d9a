"""Your own model, without editing coopml: a factory named by import path ``package.module:factory``.

Loaded the way Flower loads apps: importlib, with an optional extra directory put in front of
sys.path (e.g. the folder holding your model code). The factory is called as
``factory(spec, **kwargs)`` with the task's InputSpec and must return a torch ``nn.Module``
mapping [N, *spec.shape] float inputs to [N, num_classes] logits; you declare which of its layers
is the feature layer fusion uses.

This runs YOUR code on YOUR node only. A model never travels as code: to another node it goes as
an ONNX file (validated, never executed as Python) or as safetensors weights of an architecture
registered at every node.
"""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, JsonValue
from torch import nn

from coopml.data.spec import InputSpec
from coopml.errors import ModelDefinitionError
from coopml.models.members import HookedFeatureModel

_ENTRYPOINT = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


def load_factory(entrypoint: str, search_path: str | Path | None = None) -> Callable[..., Any]:
    """The object at ``module:attribute`` (attribute may be dotted), which must be callable.

    `search_path` (a directory) is inserted at the front of sys.path, as Flower does for app dirs,
    and stays there so the module's own lazy imports keep working.
    """
    if not _ENTRYPOINT.match(entrypoint):
        raise ModelDefinitionError(f"model entrypoint {entrypoint!r} must look like 'package.module:factory'")
    module_name, _, attr_path = entrypoint.partition(":")
    if search_path is not None:
        directory = Path(search_path).resolve()
        if not directory.is_dir():
            raise ModelDefinitionError(f"{directory}: model search path is not a directory")
        if str(directory) not in sys.path:
            sys.path.insert(0, str(directory))
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            where = f" (searched {search_path} and sys.path)" if search_path is not None else " (on sys.path)"
            raise ModelDefinitionError(f"model module {module_name!r} not found{where}") from None
        raise ModelDefinitionError(f"importing model module {module_name!r} failed: it imports "
                                   f"{exc.name!r}, which is not installed") from exc
    except Exception as exc:
        raise ModelDefinitionError(f"importing model module {module_name!r} raised "
                                   f"{type(exc).__name__}: {exc}") from exc
    obj: Any = module
    for i, part in enumerate(attr_path.split(".")):
        if not hasattr(obj, part):
            owner = module_name + "".join("." + p for p in attr_path.split(".")[:i])
            public = sorted(n for n in dir(obj) if not n.startswith("_"))
            raise ModelDefinitionError(f"{owner} has no attribute {part!r}; it defines: {', '.join(public[:30]) or 'nothing public'}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ModelDefinitionError(f"{entrypoint} is a {type(obj).__name__}, not callable; it must be a "
                                   f"factory function or class taking the InputSpec")
    return obj


def build_user_model(entrypoint: str, spec: InputSpec, *, feature_layer: str,
                     labels: Sequence[int] | None = None, search_path: str | Path | None = None,
                     kwargs: dict[str, Any] | None = None) -> HookedFeatureModel:
    """Call ``factory(spec, **kwargs)`` and wrap the nn.Module it returns with its feature layer."""
    factory = load_factory(entrypoint, search_path)
    try:
        module = factory(spec, **(kwargs or {}))
    except Exception as exc:
        raise ModelDefinitionError(f"model factory {entrypoint} raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(module, nn.Module):
        raise ModelDefinitionError(f"model factory {entrypoint} returned a {type(module).__name__}, "
                                   f"not a torch.nn.Module")
    return HookedFeatureModel(module, feature_layer, spec, labels, arch=entrypoint)


class TorchModelRef(BaseModel):
    """A node's own model as configured: where its factory is and which layer gives the features."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    entrypoint: str = Field(pattern=_ENTRYPOINT.pattern)   # "package.module:factory"
    feature_layer: str = Field(min_length=1)                 # a name from model.named_modules()
    search_path: Path | None = None                          # directory put in front of sys.path
    kwargs: dict[str, JsonValue] = Field(default_factory=dict)

    def build(self, spec: InputSpec, labels: Sequence[int] | None = None,
              base_dir: str | Path | None = None) -> HookedFeatureModel:
        path = self.search_path
        if path is not None and base_dir is not None and not path.is_absolute():
            path = Path(base_dir) / path
        return build_user_model(self.entrypoint, spec, feature_layer=self.feature_layer, labels=labels,
                                search_path=path, kwargs=dict(self.kwargs))

"""InputSpec: what one sample of a task looks like, as part of the task manifest.

Every party of a task (the initiator, contributors with their private data, verifiers) reads the
input shape, the raw dtype, the class names and the preprocessing from this one versioned record,
so that a model trained at one hospital sees its inputs exactly as the model of another does.
Nothing downstream may assume MNIST's 1x28x28 / 10 classes / divide-by-255: it asks the spec.

The class order defines the label ids (class ``classes[i]`` is label ``i``), so two parties that
list the same classes in a different order have different tasks (and different ``digest()``s).
"""

from __future__ import annotations

import hashlib
import math
from typing import Annotated, Final, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from coopml.errors import DataError

INPUT_SPEC_FORMAT: Final = "coopml-input/1"

RawDtype = Literal["uint8", "uint16", "float32", "float64"]
_INT_RANGES = {"uint8": (0, 255), "uint16": (0, 65535)}


class Scale(BaseModel):
    """x / divide_by (e.g. 255 maps 8-bit pixels to [0, 1]). A division, not a multiplication by
    the reciprocal, so the MNIST spec gives bit-for-bit the tensors coopml always used."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["scale"] = "scale"
    divide_by: float = Field(gt=0, allow_inf_nan=False)


class Normalize(BaseModel):
    """(x - mean) / std along the first axis of the sample shape: per channel for images
    ([C, H, W]: len(mean) == C), per feature for tabular data ([F]: len(mean) == F, i.e. feature
    standardisation with the mean/std the task publishes, never statistics of one party's data)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["normalize"] = "normalize"
    mean: tuple[float, ...] = Field(min_length=1)
    std: tuple[float, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> Normalize:
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean has {len(self.mean)} values, std has {len(self.std)}")
        if not all(math.isfinite(v) for v in self.mean + self.std):
            raise ValueError("mean and std must be finite")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be > 0, got {list(self.std)}")
        return self


PreprocessStep = Annotated[Scale | Normalize, Field(discriminator="kind")]


class InputSpec(BaseModel):
    """The shape, raw dtype, classes and preprocessing of one task's inputs (versioned).

    shape: one sample as the model eats it: [C, H, W] for images (C = 1 grey, 3 RGB), [F] for
        tabular data / feature vectors.
    dtype: the raw dtype of stored samples (uint8 for 8-bit images; float32/float64 for features).
    classes: class names; their order defines the label ids 0..K-1.
    preprocessing: steps applied in order by `apply` to raw samples (cast to float32 first).
    feature_names: tabular only: the column names, in model order (a CSV's columns are picked
        by name, so a partner whose file orders them differently still feeds the right inputs).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    format: Literal["coopml-input/1"] = INPUT_SPEC_FORMAT
    shape: tuple[int, ...]
    dtype: RawDtype
    classes: tuple[str, ...] = Field(min_length=2)
    preprocessing: tuple[PreprocessStep, ...] = ()
    feature_names: tuple[str, ...] | None = None

    @field_validator("shape")
    @classmethod
    def _shape(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if len(v) not in (1, 3):
            raise ValueError(f"shape must be [F] (features) or [C, H, W] (images), got {list(v)}")
        if any(d <= 0 for d in v):
            raise ValueError(f"shape dimensions must be positive, got {list(v)}")
        if math.prod(v) > 1 << 26:
            raise ValueError(f"shape {list(v)} has more than 2**26 values per sample")
        return v

    @field_validator("classes")
    @classmethod
    def _classes(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [c for c in v if not c or c != c.strip()]
        if bad:
            raise ValueError(f"class names must be non-empty without surrounding spaces, got {bad}")
        dup = sorted({c for c in v if v.count(c) > 1})
        if dup:
            raise ValueError(f"duplicate class names {dup}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> InputSpec:
        for step in self.preprocessing:
            if isinstance(step, Normalize) and len(step.mean) != self.shape[0]:
                axis = "channels" if self.is_image else "features"
                raise ValueError(f"normalize has {len(step.mean)} mean values, the shape {list(self.shape)} "
                                 f"has {self.shape[0]} {axis}")
        if self.feature_names is not None:
            if self.is_image:
                raise ValueError("feature_names are for tabular specs (shape [F]), not images")
            if len(self.feature_names) != self.shape[0]:
                raise ValueError(f"{len(self.feature_names)} feature_names for shape {list(self.shape)}")
            if len(set(self.feature_names)) != len(self.feature_names) or not all(self.feature_names):
                raise ValueError("feature_names must be distinct and non-empty")
        return self

    # -- derived ---------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def is_image(self) -> bool:
        return len(self.shape) == 3

    def class_id(self, name: str) -> int:
        try:
            return self.classes.index(name)
        except ValueError:
            raise DataError(f"{name!r} is not one of the classes {list(self.classes)}") from None

    def digest(self) -> str:
        """sha256 of the canonical JSON: two parties agree on the task's inputs iff digests match."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()

    def describe(self) -> str:
        return f"{'x'.join(map(str, self.shape))} {self.dtype}, {self.num_classes} classes"

    # -- samples ---------------------------------------------------------------------------------
    def batch_shape(self, x: np.ndarray, where: str = "samples") -> np.ndarray:
        """`x` as [N, *shape]: accepted as is, or as [N, H, W] when the spec has one channel (the
        channel axis is added). Any other shape is an error: reshaping e.g. HWC into CHW would
        scramble pixels without a word."""
        want = tuple(self.shape)
        if x.ndim == len(want) + 1 and tuple(x.shape[1:]) == want:
            return x
        if self.is_image and want[0] == 1 and x.ndim == 3 and tuple(x.shape[1:]) == want[1:]:
            return x[:, None]
        raise DataError(f"{where}: shape {tuple(x.shape)} does not match the InputSpec's "
                        f"[N, {', '.join(map(str, want))}]")

    def check_raw(self, x: np.ndarray, where: str = "samples") -> np.ndarray:
        """Raw samples of the spec's shape and dtype, as [N, *shape]."""
        if x.dtype != np.dtype(self.dtype):
            raise DataError(f"{where}: dtype {x.dtype} does not match the InputSpec's {self.dtype}")
        return self.batch_shape(x, where)

    def apply(self, x_raw: np.ndarray) -> np.ndarray:
        """Raw samples [N, *shape] (or [N, H, W] for one channel) -> float32 model inputs."""
        x = self.check_raw(np.asarray(x_raw)).astype(np.float32)
        extra = (1,) * (len(self.shape) - 1)
        for step in self.preprocessing:
            if isinstance(step, Scale):
                x /= np.float32(step.divide_by)
            else:
                mean = np.asarray(step.mean, np.float32).reshape(-1, *extra)
                std = np.asarray(step.std, np.float32).reshape(-1, *extra)
                x -= mean
                x /= std
        return x

    def cast_raw(self, x: np.ndarray, where: str) -> np.ndarray:
        """Numeric values read from a file -> the spec's raw dtype, refusing what would change
        them: NaN/inf, fractions or out-of-range values for integer dtypes, non-numeric data."""
        if x.dtype.kind not in "biuf":
            raise DataError(f"{where}: values of dtype {x.dtype} are not numeric")
        if x.dtype.kind == "f":
            finite = np.isfinite(x)
            if not finite.all():
                raise DataError(f"{where}: NaN or infinity at {_first(~finite)}")
        if self.dtype in _INT_RANGES:
            lo, hi = _INT_RANGES[self.dtype]
            if x.dtype.kind == "f":
                frac = x != np.round(x)
                if frac.any():
                    raise DataError(f"{where}: non-integer value {x[_first_idx(frac)]} at {_first(frac)} "
                                    f"for the InputSpec's dtype {self.dtype}")
            out = (x < lo) | (x > hi)
            if out.any():
                raise DataError(f"{where}: value {x[_first_idx(out)]} at {_first(out)} is outside "
                                f"{self.dtype}'s range {lo}..{hi}")
        return x.astype(self.dtype, copy=False)


def _first_idx(mask: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argwhere(mask)[0])


def _first(mask: np.ndarray) -> str:
    """The first True entry of `mask` as 'entry [i, j, ...]'."""
    return f"entry {list(_first_idx(mask))}"


MNIST_INPUT = InputSpec(shape=(1, 28, 28), dtype="uint8", classes=tuple(str(i) for i in range(10)),
                        preprocessing=(Scale(divide_by=255.0),))
FASHION_MNIST_INPUT = InputSpec(
    shape=(1, 28, 28), dtype="uint8",
    classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
             "Ankle boot"),
    preprocessing=(Scale(divide_by=255.0),))

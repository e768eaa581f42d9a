"""Errors of the CKKS engine, named by cause (all are `HEError`, hence `CoopmlError`)."""

from __future__ import annotations

from coopml.errors import HEError


class CkksFormatError(HEError):
    """A CKKS blob (public context, encrypted batch, encrypted outputs, key) is malformed,
    truncated, of the wrong kind, over a size limit, or made for other parameters / another key."""


class CkksKeyMismatchError(CkksFormatError):
    """A blob was made under another key or context than the one it is used with."""


class InsecureParametersError(HEError):
    """CKKS parameters below 128-bit security (HomomorphicEncryption.org table) or invalid."""


class UnsupportedLayerError(HEError):
    """A model layer that cannot be evaluated under CKKS (e.g. ReLU, MaxPool)."""


class PlanError(HEError):
    """A model cannot be fitted into the chosen parameters (depth, modulus budget, output range)."""


class InputRangeError(HEError):
    """Images outside the parameters' declared input range (or not finite, or badly shaped)."""

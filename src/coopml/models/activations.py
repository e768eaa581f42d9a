"""Polynomial activations: the only non-linearities a CKKS evaluator can compute exactly.

A `PolyActivation` is x -> sum_d coefficients[d] * x**d, element-wise. The CKKS engine
(`coopml.he.ckks`) recognises it by type and evaluates the monomials homomorphically; torch
evaluates the same polynomial, so a model trained with it is the model that runs encrypted.
IVHE's integer scaling (`coopml.he.scaling`) recognises it by type too and multiplies out its
exact rational coefficients (`polynomial`).
"""

from __future__ import annotations

from fractions import Fraction

import torch
from torch import nn


class PolyActivation(nn.Module):
    """Element-wise polynomial; `coefficients[d]` multiplies x**d."""

    coefficients: tuple[float, ...] = (0.0, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.full_like(x, self.coefficients[-1])
        for c in reversed(self.coefficients[:-1]):   # Horner
            out = out * x + c
        return out

    @property
    def polynomial(self) -> tuple[Fraction, ...]:
        """The coefficients as exact rationals a_0..a_d: each float read as the nearest fraction with
        a denominator <= 2^20 (so -1/48, not exactly representable in binary, is -1/48 again)."""
        return tuple(Fraction(c).limit_denominator(1 << 20) for c in self.coefficients)

    @property
    def degree(self) -> int:
        return len(self.coefficients) - 1

    def extra_repr(self) -> str:
        return " + ".join(f"{c:g}*x^{d}" for d, c in enumerate(self.coefficients) if c)


class Square(PolyActivation):
    """x**2 (CryptoNets' activation)."""

    coefficients = (0.0, 0.0, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * x


class TaylorSigmoid(PolyActivation):
    """The paper's third-order Taylor expansion of the sigmoid at 0: 1/2 + x/4 - x^3/48
    (section IV-C2, Fig. 5(b)). Close to the sigmoid for |x| < ~1.5 only; a BatchNorm in front
    keeps pre-activations in that range. (The paper prints x^3/348; the Taylor coefficient is the
    sigmoid's third derivative at 0, -1/8, over 3!, i.e. -1/48: a typo.)"""

    coefficients = (0.5, 0.25, 0.0, -1.0 / 48.0)

"""Late (decision-level) fusion, the baseline feature-level fusion is compared against.

Each member's softmax is taken over its own label set only; a class's fused score is the mean
probability given by the members that know that class. No training and no initiator data.
Members must give logits: a torch `FeatureModel` or a `TorchMember`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from coopml.fusion.members import TorchMember
from coopml.models.architectures import FeatureModel


class LateFusion(nn.Module):
    masks: torch.Tensor

    def __init__(self, models: Sequence[FeatureModel | TorchMember], labels: Sequence[Sequence[int]],
                 num_classes: int = 10) -> None:
        super().__init__()
        self.members = [m.model if isinstance(m, TorchMember) else m for m in models]
        masks = torch.zeros(len(models), num_classes, dtype=torch.bool)
        for i, labs in enumerate(labels):
            masks[i, list(labs)] = True
        self.register_buffer("masks", masks)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Log of the fused class scores (usable as logits: argmax is the prediction)."""
        total = torch.zeros(len(x), self.masks.shape[1])
        for m, mask in zip(self.members, self.masks):
            logits = m.eval()(x).masked_fill(~mask, float("-inf"))
            total += logits.softmax(1)
        counts = self.masks.sum(0).clamp_min(1)
        return (total / counts).clamp_min(1e-12).log()

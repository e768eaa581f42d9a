"""Label-preserving image distortions: a party with 1000 labelled digits gets more out of them."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_affine(x: torch.Tensor, gen: torch.Generator, max_shift: float = 2.0,
                  max_rotate_deg: float = 10.0, max_scale: float = 0.1) -> torch.Tensor:
    """A random small affine distortion per image of an [N, 1, 28, 28] batch (shift in pixels,
    rotation, scale; zero fill). Small enough that digits stay the same digits."""
    n = len(x)
    u = lambda: torch.rand(n, generator=gen) * 2 - 1
    ang = u() * max_rotate_deg * torch.pi / 180
    scale = 1 + u() * max_scale
    tx, ty = u() * max_shift * 2 / x.shape[-1], u() * max_shift * 2 / x.shape[-2]
    theta = torch.stack([torch.stack([torch.cos(ang) / scale, -torch.sin(ang) / scale, tx], 1),
                         torch.stack([torch.sin(ang) / scale, torch.cos(ang) / scale, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")

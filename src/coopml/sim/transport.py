"""What a member model costs to ship, and the lossy encodings that make it cheaper.

Case Study III counts bytes as real safetensors sizes. A model can travel at full precision
(`fp32`), as half floats (`fp16`), or with every weight matrix / conv kernel quantised to int8
with one float32 scale per output row (`int8`, symmetric; biases and other 1-D tensors stay
float32). The receiver decodes back to float32 and uses exactly what it received, so the
accuracy cost of an encoding is measured, not assumed.

A model is shipped as two objects, its feature extractor (`body.*`) and its head (`head.*`):
a verifier needs both to judge the model, the initiator only the body, since fusion reads the
members' features and never their heads.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
from safetensors.torch import save as st_save

from coopml.errors import CoopmlError

Precision = Literal["fp32", "fp16", "int8"]
State = Mapping[str, torch.Tensor]


def state_bytes(state: State) -> int:
    """Bytes of a tensor dict as it would travel: its safetensors serialisation."""
    return len(st_save({k: v.detach().contiguous().cpu() for k, v in state.items()}))


def encode_state(state: State, precision: Precision) -> dict[str, torch.Tensor]:
    """The tensors that travel for `state` at `precision` (see module docstring)."""
    out: dict[str, torch.Tensor] = {}
    for name, t in state.items():
        t = t.detach().cpu()
        if not t.is_floating_point() or precision == "fp32":
            out[name] = t.contiguous()
        elif precision == "fp16":
            out[name] = t.to(torch.float16).contiguous()
        elif precision == "int8":
            if t.dim() < 2:
                out[name] = t.float().contiguous()
                continue
            rows = t.reshape(t.shape[0], -1).float()
            scale = rows.abs().amax(1).clamp_min(1e-12) / 127.0
            out[name + ".int8"] = torch.round(rows / scale[:, None]).clamp(-127, 127).to(torch.int8).reshape(t.shape)
            out[name + ".scale"] = scale.contiguous()
        else:
            raise CoopmlError(f"unknown precision {precision!r}; use fp32, fp16 or int8")
    return out


def decode_state(encoded: State) -> dict[str, torch.Tensor]:
    """float32 tensors back from `encode_state`'s output (any precision)."""
    out: dict[str, torch.Tensor] = {}
    for name, t in encoded.items():
        if name.endswith(".scale"):
            continue
        if name.endswith(".int8"):
            base = name[:-len(".int8")]
            scale = encoded[base + ".scale"]
            out[base] = (t.float().reshape(t.shape[0], -1) * scale[:, None]).reshape(t.shape)
        elif t.is_floating_point():
            out[name] = t.float()
        else:
            out[name] = t
    return out


def split_parts(state: State) -> dict[str, dict[str, torch.Tensor]]:
    """A FeatureModel's state as its two shipped objects: {"body": ..., "head": ...}."""
    parts: dict[str, dict[str, torch.Tensor]] = {"body": {}, "head": {}}
    for name, t in state.items():
        part = name.split(".", 1)[0]
        if part not in parts:
            raise CoopmlError(f"tensor {name!r} is neither body.* nor head.*")
        parts[part][name] = t
    return parts


def ship(state: State, precision: Precision) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """(the float32 state the receivers rebuild, bytes of each shipped part)."""
    received: dict[str, torch.Tensor] = {}
    sizes = {}
    for part, tensors in split_parts(state).items():
        enc = encode_state(tensors, precision)
        sizes[part] = state_bytes(enc)
        received.update(decode_state(enc))
    return received, sizes

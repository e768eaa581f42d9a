"""Shipping encodings of member weights (Case Study III bytes)."""

import pytest
import torch

from coopml.errors import CoopmlError
from coopml.models import build_model
from coopml.sim.transport import decode_state, encode_state, ship, split_parts, state_bytes


def test_int8_and_fp16_round_trip_within_their_resolution():
    state = build_model("table1-c1", 0).state_dict()
    for precision, rel in (("fp16", 1e-3), ("int8", 1 / 127)):
        back = decode_state(encode_state(state, precision))
        assert back.keys() == state.keys()
        for k, t in state.items():
            assert back[k].dtype == torch.float32 and back[k].shape == t.shape
            row_max = t.reshape(t.shape[0], -1).abs().amax(1) if t.dim() > 1 else t.abs()
            bound = (row_max * rel).reshape(-1, *([1] * (t.dim() - 1))) if t.dim() > 1 else row_max * rel
            assert torch.all((back[k] - t).abs() <= bound + 1e-7), (precision, k)
    assert torch.equal(decode_state(encode_state(state, "fp32"))["head.weight"], state["head.weight"])
    with pytest.raises(CoopmlError, match="precision"):
        encode_state(state, "int4")


def test_shipped_sizes_shrink_and_parts_are_body_and_head():
    state = build_model("table1-c1", 0).state_dict()
    parts = split_parts(state)
    assert set(parts) == {"body", "head"} and set(parts["head"]) == {"head.weight", "head.bias"}
    full = state_bytes(state)
    sizes = {p: ship(state, p)[1] for p in ("fp32", "fp16", "int8")}
    assert abs(sum(sizes["fp32"].values()) - full) < 1024            # two headers instead of one
    assert sum(sizes["fp16"].values()) < 0.51 * full
    assert sum(sizes["int8"].values()) < 0.27 * full
    received, _ = ship(state, "int8")
    model = build_model("table1-c1")
    model.load_state_dict(received)                                   # what the receivers rebuild

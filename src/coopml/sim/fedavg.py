"""Federated Averaging (McMahan et al.) in plain torch, as the Case Study III baseline.

Every round the server sends the global weights to all clients (the paper's Case Study III
ignores client sampling), each client trains `local_epochs` epochs on its own data with Adam,
and the server replaces the global weights by the average weighted by client sample counts:
w <- sum_k n_k / n * w_k. Communication is counted as the serialized (safetensors) size of the
state dict each way: float32 by default, or encoded at `precision` (sim.transport, the same
encodings Case Study III offers our paradigm), in which case the clients train from, and the
server averages, exactly the weights received.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from coopml.data.datasets import Dataset
from coopml.errors import CoopmlError
from coopml.models import TrainConfig, build_model, evaluate, train_epoch
from coopml.models.architectures import FeatureModel
from coopml.sim.transport import Precision, decode_state, encode_state, state_bytes

State = Mapping[str, torch.Tensor]
__all__ = ["FedAvgResult", "fedavg_aggregate", "local_train", "run_fedavg", "state_bytes"]


def fedavg_aggregate(states: Sequence[State], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """Weighted average of client state dicts, weights normalised to sum to one."""
    if not states or len(states) != len(weights):
        raise CoopmlError(f"FedAvg needs one weight per client state, got {len(states)} states and {len(weights)} weights")
    total = float(sum(weights))
    if total <= 0:
        raise CoopmlError("FedAvg client weights must sum to a positive number")
    keys = list(states[0])
    if any(list(s) != keys for s in states):
        raise CoopmlError("FedAvg client states have different parameter names (different architectures?)")
    zero = torch.zeros((), dtype=torch.float64)
    return {k: sum(((w / total) * s[k].double() for s, w in zip(states, weights)), zero).to(states[0][k].dtype)
            for k in keys}


def local_train(model: FeatureModel, data: Dataset, epochs: int, lr: float = 1e-3, batch_size: int = 50,
                seed: int = 0, augment: bool = False) -> None:
    """Plain local epochs (no early stopping: FedAvg clients run a fixed budget), each the
    contributors' `train_epoch`, so `augment=True` distorts images exactly as a contributor's
    `TrainConfig(augment=True)` does (the like-for-like recipe of Case Study III)."""
    gen = torch.Generator().manual_seed(seed)
    x, y = data.tensors()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    cfg = TrainConfig(lr=lr, batch_size=batch_size, augment=augment)
    for _ in range(epochs):
        train_epoch(model, opt, x, y, cfg, gen)
    model.eval()


@dataclass
class FedAvgResult:
    accuracy: float                  # global model on the evaluation set after the last round
    bytes_down: int                  # server -> clients, all rounds
    bytes_up: int                    # clients -> server, all rounds
    precision: str = "fp32"          # how weights travelled both ways
    round_accuracy: list[float] = field(default_factory=list)

    @property
    def bytes_total(self) -> int:
        return self.bytes_down + self.bytes_up


def run_fedavg(arch: str, clients: Sequence[Dataset], rounds: int, local_epochs: int, test: Dataset,
               lr: float = 1e-3, batch_size: int = 50, seed: int = 0, precision: Precision = "fp32",
               augment: bool = False) -> tuple[FeatureModel, FedAvgResult]:
    """Run FedAvg from one shared random initialisation; return the global model and the tally."""
    global_model = build_model(arch, seed)
    weights = [float(len(c)) for c in clients]
    result = FedAvgResult(0.0, 0, 0, precision=precision)
    for r in range(rounds):
        sent = encode_state(global_model.state_dict(), precision)
        size = state_bytes(sent)
        global_state = decode_state(sent)            # what every client receives
        states = []
        for k, data in enumerate(clients):
            result.bytes_down += size
            local = build_model(arch)
            local.load_state_dict(global_state)
            local_train(local, data, local_epochs, lr, batch_size, seed=seed * 1000 + r * 10 + k, augment=augment)
            up = encode_state(local.state_dict(), precision)
            result.bytes_up += state_bytes(up)
            states.append(decode_state(up))          # what the server receives
        global_model.load_state_dict(fedavg_aggregate(states, weights))
        result.round_accuracy.append(evaluate(global_model, test))
    result.accuracy = result.round_accuracy[-1] if result.round_accuracy else evaluate(global_model, test)
    return global_model, result

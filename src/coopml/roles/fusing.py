"""The initiator's fusion job (run off the event loop): bought models + its own data -> MetaModel file."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from coopml.fusion import FusionConfig, fuse
from coopml.models import evaluate
from coopml.storage import Store
from coopml.roles.datasets import split
from coopml.roles.models import load_delivered

if TYPE_CHECKING:
    from coopml.roles.config import InitiatorConfig
    from coopml.roles.initiator import Bought
    from coopml.roles.task import TaskView


def fuse_members(cfg: InitiatorConfig, view: TaskView, members: list[Bought], keys: dict[int, bytes], store: Store,
                 contract: str, workdir: Path) -> dict[str, Any]:
    """Open each bought model from the store (checked against its on-chain envelope hash) and fuse."""
    from coopml.roles.verifier import open_committed
    spec = view.manifest.input
    data = cfg.data.load(spec)
    train, val = split(data, cfg.val_fraction, seed=cfg.seed)
    models, labels = [], []
    for b in members:
        hdr, body = open_committed(store.get(b.cid), keys[b.model_id], bytes.fromhex(b.envelope_hash), contract,
                                   view.info.task_id)
        models.append(load_delivered(hdr, body, spec))
        labels.append(list(b.labels))
    torch.manual_seed(cfg.seed)
    image = spec.is_image
    meta = fuse(models, train, val, view.manifest.fusion.strategy,
                FusionConfig.tuned(max_epochs=cfg.fusion_epochs, patience=8, seed=cfg.seed,
                                   augment_copies=cfg.fusion_augment if image else 0), labels=labels)
    from safetensors.torch import save_file
    out = workdir / "metamodel.safetensors"
    save_file({k: v.contiguous() for k, v in meta.state_dict().items()}, out)
    acc = evaluate(meta, cfg.test_data.load(spec)) if cfg.test_data is not None else None
    return {"members": [b.model_id for b in members], "test_accuracy": acc, "path": str(out)}

"""The resumable training state: one safetensors file, written atomically, holding the model weights, the
optimizer tensors and the RNG state, with the JSON-able rest (epoch, step, best score, optimizer param groups,
scheduler) in its metadata. Being one file, a kill can never leave weights and optimizer from different steps.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, safe_open, save_file

from cpfd.io import atomic_write


def save_training_state(path: str | Path, optimizer: torch.optim.Optimizer, info: dict,
                        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
                        model_state: dict[str, torch.Tensor] | None = None) -> Path:
    opt = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {"rng/torch": torch.get_rng_state()}
    for name, value in (model_state or {}).items():
        tensors[f"model/{name}"] = value.detach().cpu().contiguous()
    for pid, slots in opt["state"].items():
        for key, value in slots.items():
            tensors[f"opt/{pid}/{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    meta = {"info": json.dumps(info), "param_groups": json.dumps(opt["param_groups"])}
    if scheduler is not None:
        meta["scheduler"] = json.dumps({k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"})
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def load_training_state(path: str | Path, optimizer: torch.optim.Optimizer,
                        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
                        ) -> tuple[dict, dict[str, torch.Tensor]]:
    """(the JSON-able state, the model weights) saved by :func:`save_training_state`."""
    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("opt/"):
            _, pid, key = name.split("/", 2)
            state.setdefault(int(pid), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": json.loads(meta["param_groups"])})
    torch.set_rng_state(tensors["rng/torch"])
    if scheduler is not None and "scheduler" in meta:
        scheduler.load_state_dict({**json.loads(meta["scheduler"]), "lr_lambdas": [None] * len(optimizer.param_groups)})
    weights = {name[len("model/"):]: value for name, value in tensors.items() if name.startswith("model/")}
    return json.loads(meta["info"]), weights

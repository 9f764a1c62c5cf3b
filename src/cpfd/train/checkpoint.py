"""The resumable training state, written atomically beside the weights (``cpfd.io.save_weights``).

It is a safetensors file of optimizer tensors and the RNG state whose metadata carries the JSON-able rest (epoch,
best score, optimizer param groups).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, safe_open, save_file

from cpfd.io import atomic_write


def save_training_state(path: str | Path, optimizer: torch.optim.Optimizer, info: dict,
                        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None) -> Path:
    opt = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {"rng/torch": torch.get_rng_state()}
    for pid, slots in opt["state"].items():
        for key, value in slots.items():
            tensors[f"opt/{pid}/{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    meta = {"info": json.dumps(info), "param_groups": json.dumps(opt["param_groups"])}
    if scheduler is not None:
        meta["scheduler"] = json.dumps({k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"})
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def load_training_state(path: str | Path, optimizer: torch.optim.Optimizer,
                        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None) -> dict:
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
    return json.loads(meta["info"])

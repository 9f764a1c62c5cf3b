"""Checkpoints as safetensors, written atomically.

``*.safetensors`` holds model weights; the resumable training state (optimizer tensors, RNG state) is a second
safetensors file whose metadata carries the JSON-able rest (epoch, best score, optimizer param groups).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from cpfd.io import atomic_write, file_sha256


def save_weights(module: nn.Module, path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    return atomic_write(path, lambda tmp: save_file(state, tmp, metadata=metadata or {}))


def load_weights(module: nn.Module, path: str | Path) -> None:
    module.load_state_dict(load_file(str(path)))


def weights_hash(path: str | Path) -> str:
    return file_sha256(path)


def save_training_state(path: str | Path, optimizer: torch.optim.Optimizer, info: dict) -> Path:
    opt = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {"rng/torch": torch.get_rng_state()}
    for pid, slots in opt["state"].items():
        for key, value in slots.items():
            tensors[f"opt/{pid}/{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    meta = {"info": json.dumps(info), "param_groups": json.dumps(opt["param_groups"])}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def load_training_state(path: str | Path, optimizer: torch.optim.Optimizer) -> dict:
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
    return json.loads(meta["info"])

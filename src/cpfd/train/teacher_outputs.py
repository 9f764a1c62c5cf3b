"""Run the frozen teacher once, calibrate it, and cache its outputs on disk.

The cache is keyed by the teacher checkpoint hash(es) and the dataset fingerprint. A cache whose key does not
match (the teacher was re-fitted, the data changed) is reported and rebuilt, never silently reused.
With ``oof_folds = K`` the train rows get cross-fitted outputs: fold teacher k scores the fold it did not see;
the full teacher scores val, test and unlabelled rows.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from cpfd.data.prepared import PreparedData
from cpfd.distill.calibration import fit_temperature
from cpfd.io import atomic_write
from cpfd.train.batches import TeacherTargets
from cpfd.train.checkpoint import weights_hash
from cpfd.train.loop import predict, teacher_forward

CACHE_NAME = "teacher_outputs.safetensors"


def cache_key(checkpoints: list[Path], fingerprint: str) -> str:
    h = hashlib.sha256()
    for path in checkpoints:
        h.update(weights_hash(path).encode())
    h.update(fingerprint.encode())
    return h.hexdigest()


def compute_targets(
    teacher: nn.Module,
    data: PreparedData,
    folds: list[tuple[nn.Module, np.ndarray]] | None = None,
    calibrate: bool = True,
) -> TeacherTargets:
    """Teacher logits and fused embedding for every row; fold teachers overwrite their held-out rows."""
    everything = np.arange(len(data))
    out = predict(teacher, data, everything, teacher_forward, with_privileged=True)
    for fold_teacher, rows in folds or []:
        fold_out = predict(fold_teacher, data, rows, teacher_forward, with_privileged=True)
        for task in out["logits"]:
            out["logits"][task][rows] = fold_out["logits"][task][rows]
        out["embedding"][rows] = fold_out["embedding"][rows]
    temperatures = {}
    for task in data.tasks:
        val = data.indices("val")
        val = val[data.label_mask[task.name].numpy()[val]]
        t = fit_temperature(out["logits"][task.name][val], data.labels[task.name][val], task.type) if calibrate else 1.0
        temperatures[task.name] = t
    return TeacherTargets(out["logits"], out["embedding"], temperatures)


def save_targets(path: Path, targets: TeacherTargets, key: str) -> None:
    tensors = {f"logits/{t}": z.contiguous() for t, z in targets.logits.items()}
    tensors["embedding"] = targets.embedding.contiguous()
    meta = {"key": key, "temperatures": json.dumps(targets.temperatures)}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def cached_key(path: Path) -> str | None:
    if not path.exists():
        return None
    with safe_open(str(path), framework="pt") as fh:
        return (fh.metadata() or {}).get("key")


def load_targets(path: Path) -> TeacherTargets:
    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
    logits = {name.split("/", 1)[1]: z for name, z in tensors.items() if name.startswith("logits/")}
    return TeacherTargets(logits, tensors["embedding"], json.loads(meta["temperatures"]))


def get_or_build(
    cache_dir: Path,
    key: str,
    build: Callable[[], TeacherTargets],
    log: Callable[[str], None] = print,
) -> TeacherTargets:
    """Reuse the cache when its key matches; otherwise say why and rebuild it."""
    path = Path(cache_dir) / CACHE_NAME
    found = cached_key(path)
    if found == key:
        return load_targets(path)
    if found is None:
        log(f"teacher outputs: building cache {path}")
    else:
        log(f"teacher outputs: cache {path} is stale (teacher checkpoint or dataset changed: key {found[:12]} != "
            f"{key[:12]}); rebuilding")
    targets = build()
    save_targets(path, targets, key)
    return targets


def in_sample_confidence(targets: TeacherTargets, data: PreparedData) -> dict[str, float]:
    """Mean calibrated teacher probability of the true class on labelled train rows (a reliability diagnostic)."""
    from cpfd.distill.confidence import true_class
    from cpfd.distill.probs import task_probs

    rows = torch.from_numpy(data.indices("train"))
    out = {}
    for task in data.tasks:
        mask = data.label_mask[task.name][rows]
        probs = task_probs(targets.logits[task.name][rows], task.type, targets.temperatures[task.name])
        c = true_class(probs, data.labels[task.name][rows], mask, task.type)
        c = c[mask]
        out[task.name] = float(c.mean()) if len(c) else float("nan")
    return out

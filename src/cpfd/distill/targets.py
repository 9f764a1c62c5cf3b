"""The teacher's outputs for every row of a dataset, and their on-disk cache.

The cache is one safetensors file keyed by the teacher checkpoint hash(es) and the dataset fingerprint, with a
SHA-256 of its tensors in the metadata. A cache whose key does not match (the teacher was re-fitted, the data
changed), whose checksum does not match (bytes corrupted on disk) or that cannot be read (truncated) is reported
and rebuilt, never silently reused.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from cpfd.io import atomic_write, file_sha256

@dataclass
class TeacherTargets:
    """Teacher logits (and fused embedding, when feature distillation asked for it) for every row of a dataset, plus
    per-task calibration temperatures."""

    logits: dict[str, torch.Tensor]
    embedding: torch.Tensor | None
    temperatures: dict[str, float]
    calibration: dict[str, dict] = field(default_factory=dict)  # how each temperature was chosen


def cache_key(checkpoints: list[Path], fingerprint: str) -> str:
    h = hashlib.sha256()
    for path in checkpoints:
        h.update(file_sha256(path).encode())
    h.update(fingerprint.encode())
    return h.hexdigest()


def _tensors(targets: TeacherTargets) -> dict[str, torch.Tensor]:
    tensors = {f"logits/{t}": z.contiguous() for t, z in targets.logits.items()}
    if targets.embedding is not None:
        tensors["embedding"] = targets.embedding.contiguous()
    return tensors


def _checksum(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_targets(path: Path, targets: TeacherTargets, key: str) -> None:
    tensors = _tensors(targets)
    meta = {"key": key, "temperatures": json.dumps(targets.temperatures), "calibration": json.dumps(targets.calibration),
            "sha256": _checksum(tensors)}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


class CorruptCacheError(ValueError):
    """A cache file whose content does not match its checksum, or that cannot be parsed."""


def load_targets(path: Path) -> TeacherTargets:
    """Read a cache file and check its content against the stored checksum."""
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise CorruptCacheError(f"{path} cannot be read ({err})") from None
    if "sha256" not in meta or _checksum(tensors) != meta["sha256"]:
        raise CorruptCacheError(f"{path}: content does not match its checksum")
    logits = {name.split("/", 1)[1]: z for name, z in tensors.items() if name.startswith("logits/")}
    return TeacherTargets(logits, tensors.get("embedding"), json.loads(meta["temperatures"]),
                          json.loads(meta.get("calibration", "{}")))


def cached_key(path: Path) -> str | None:
    if not path.exists():
        return None
    try:
        with safe_open(str(path), framework="pt") as fh:
            return (fh.metadata() or {}).get("key")
    except (SafetensorError, OSError, ValueError):
        return "unreadable"


def get_or_build(path: Path, key: str, build: Callable[[], TeacherTargets],
                 log: Callable[[str], None] = print) -> TeacherTargets:
    """Reuse the cache file ``path`` when its key and checksum match; otherwise say why and rebuild it."""
    found = cached_key(path)
    if found == key:
        try:
            return load_targets(path)
        except CorruptCacheError as err:
            log(f"teacher outputs: cache is corrupt: {err}; rebuilding")
    elif found is None:
        log(f"teacher outputs: building cache {path}")
    elif found == "unreadable":
        log(f"teacher outputs: cache {path} cannot be read (truncated or not a safetensors file); rebuilding")
    else:
        log(f"teacher outputs: cache {path} is stale (teacher checkpoint or dataset changed: key {found[:12]} != "
            f"{key[:12]}); rebuilding")
    targets = build()
    save_targets(path, targets, key)
    return targets

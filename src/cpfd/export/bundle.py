"""``cpfd export``: a student-only bundle that leaves the training folder.

The bundle holds ``student.safetensors`` (student weights only: nothing of the teacher), ``bundle.json`` (tasks,
classes, validation-tuned thresholds, the student's input signature, the preprocessing: frame sampling, text
fields, encoder identity, and a version hash) and ``student.onnx`` (fusion trunk + heads). Export runs a parity
check, ONNX vs torch on a sample batch, and fails when the largest difference exceeds ``tolerance``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from cpfd.config import RunConfig
from cpfd.data.prepared import PreparedData
from cpfd.data.preprocess import make_frame_encoder, make_text_encoder
from cpfd.errors import CpfdError
from cpfd.io import atomic_write_json, file_sha256, save_weights
from cpfd.models.end_to_end import EndToEndStudent
from cpfd.models.fusion import STUDENT_MODALITIES
from cpfd.models.student import Student
from cpfd.runs import RunFolder

BUNDLE_FORMAT = 1
MASKS = {"frames": "frames_mask", "text": "text_mask"}


class ExportError(CpfdError, RuntimeError):
    """Export refused or failed; nothing at the destination was changed."""


class OnnxStudent(nn.Module):
    """Positional inputs in ``input_names`` order -> one logits tensor per task, for ``torch.onnx.export``."""

    def __init__(self, student: Student, input_names: list[str], task_names: list[str]):
        super().__init__()
        self.student = student
        self.input_names = input_names
        self.task_names = task_names

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.student(**dict(zip(self.input_names, tensors)))
        return tuple(out["logits"][t] for t in self.task_names)


def student_input_names(data: PreparedData) -> list[str]:
    """The student's ONNX inputs: each modality the trunk takes, with its padding mask."""
    names = []
    for modality in STUDENT_MODALITIES:
        key = {"frames": "pixels", "text": "text_ids"}.get(modality) if modality not in data.student_inputs else modality
        if modality in data.student_inputs or key in data.student_inputs:
            names.append(modality)
            if modality in MASKS:
                names.append(MASKS[modality])
    return names


def _core_inputs(model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What the fusion trunk receives for ``batch`` (runs the encoders first in end-to-end mode)."""
    if isinstance(model, EndToEndStudent):
        enc = model.encoders(batch.get("pixels"), batch.get("text_ids"), batch.get("text_mask"))
        core = {"features": batch.get("features"), "frames": enc.get("frames"),
                "frames_mask": batch.get("frames_mask"), "text": enc.get("text"), "text_mask": enc.get("text_mask")}
        return {k: v for k, v in core.items() if v is not None}
    return dict(batch)


class _TextEncoderIds(nn.Module):
    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.encoder.encode_ids(ids, mask)[0]


def _export_encoders(student: nn.Module, data: PreparedData, cfg: RunConfig, out_dir: Path, tolerance: float) -> dict:
    """ONNX copies of the frozen encoders where they export cleanly (parity within ``tolerance``); the others
    stay torch modules built from the registry at load time. Returns what happened to each, for bundle.json."""
    report: dict[str, str] = {}
    x = cfg.extract
    jobs = []
    if "frames" in data.student_inputs:
        frames = make_frame_encoder(x).eval()
        size = x.sampling.size
        sample = (torch.rand(4, 3, size, size, generator=torch.Generator().manual_seed(0)),)
        jobs.append(("frames", frames, sample, ["frames"], {"frames": {0: "n"}, "out": {0: "n"}}))
    if "text" in data.student_inputs:
        text = make_text_encoder(x).eval()
        ids, mask = text.tokenize(["a short title", "a somewhat longer title about a video"])
        jobs.append(("text", _TextEncoderIds(text), (ids, mask), ["ids", "mask"],
                     {"ids": {0: "n"}, "mask": {0: "n"}, "out": {0: "n"}}))
    for name, module, sample, names, axes in jobs:
        path = out_dir / f"{name}_encoder.onnx"
        try:
            torch.onnx.export(module, sample, str(path), input_names=names, output_names=["out"], dynamo=False,
                              opset_version=17, dynamic_axes=axes)
            with torch.no_grad():
                ref = module(*sample).numpy()
            got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
                None, {n: t.numpy() for n, t in zip(names, sample)})[0]
            diff = float(np.abs(got - ref).max())
        except Exception as err:  # noqa: BLE001 - any exporter failure means "keep it in torch"
            diff, reason = float("inf"), f"{type(err).__name__}: {err}"[:200]
        else:
            reason = f"max |onnx - torch| = {diff:.1e}"
        if diff <= tolerance:
            report[name] = f"{path.name} ({reason})"
        else:
            path.unlink(missing_ok=True)
            report[name] = f"not exported, runs in torch ({reason})"
    return report


def _check_destination(out_dir: Path, run: RunFolder, force: bool) -> None:
    """Export writes a new folder or replaces a previous bundle; it never deletes anything else."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise ExportError(f"--out {out_dir} is a file, not a bundle folder")
    if run.path.resolve() == out_dir.resolve() or run.path.resolve().is_relative_to(out_dir.resolve()):
        raise ExportError(f"--out {out_dir} holds the run being exported; choose another folder")
    if any(out_dir.iterdir()) and not (out_dir / "bundle.json").exists() and not force:
        raise ExportError(f"--out {out_dir} is a non-empty folder that is not a bundle; choose an empty or new "
                          "folder (or --force to replace it)")


def export_bundle(run_dir: str | Path, out_dir: str | Path, data: PreparedData, student: nn.Module,
                  tolerance: float = 1e-4, sample_rows: int = 16, force: bool = False) -> dict:
    """Write the bundle for a trained student run; returns ``bundle.json``'s content.

    The bundle is built in a temporary sibling folder and renamed into place only after the parity check, so a
    failed check or a kill leaves the previous bundle (or nothing) at ``out_dir``.
    """
    run, out_dir = RunFolder(run_dir), Path(out_dir)
    _check_destination(out_dir, run, force)
    cfg, metrics, info = run.config, run.metrics(), run.info
    student = student.eval()
    core = student.student if isinstance(student, EndToEndStudent) else student
    names = student_input_names(data)
    tasks = [t.name for t in data.tasks]

    rows = torch.as_tensor(np.concatenate([data.indices("test"), data.indices("val")])[:sample_rows])
    batch = {k: v[rows].float() if v.is_floating_point() else v[rows] for k, v in data.student_inputs.items()}
    with torch.no_grad():
        sample = _core_inputs(student, batch)
        reference = core(**sample)["logits"]
    sample_inputs = tuple(sample[n] for n in names)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        meta = _write_bundle(staging, run, cfg, metrics, info, data, student, core, names, tasks, sample,
                             sample_inputs, reference, tolerance)
        _replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return meta


def _replace(staging: Path, out_dir: Path) -> None:
    """Move the finished bundle into place; an old one is renamed aside first and removed only afterwards."""
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        os.replace(out_dir, old)
    os.replace(staging, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_bundle(out_dir: Path, run: RunFolder, cfg: RunConfig, metrics: dict, info: dict, data: PreparedData,
                  student: nn.Module, core: nn.Module, names: list[str], tasks: list[str], sample: dict,
                  sample_inputs: tuple, reference: dict, tolerance: float) -> dict:
    save_weights(student, out_dir / "student.safetensors")
    onnx_path = out_dir / "student.onnx"
    torch.onnx.export(
        OnnxStudent(core, names, tasks), sample_inputs, str(onnx_path), input_names=names,
        output_names=[f"logits_{t}" for t in tasks], dynamo=False, opset_version=17,
        dynamic_axes={n: {0: "batch"} for n in names + [f"logits_{t}" for t in tasks]},
    )
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(None, {n: t.numpy() for n, t in zip(names, sample_inputs)})
    diff = max(float(np.abs(g - reference[t].numpy()).max()) for g, t in zip(got, tasks))
    if not diff <= tolerance:
        raise ExportError(f"ONNX parity check failed: max |onnx - torch| = {diff:.2e} > {tolerance:.0e}")

    encoders_onnx = _export_encoders(student, data, cfg, out_dir, tolerance) if not isinstance(student, EndToEndStudent) \
        else {"frames": "not exported: end-to-end encoders run in torch"}
    thresholds = {t: metrics["test"]["tasks"][t].get("threshold", metrics["test"]["tasks"][t].get("thresholds"))
                  for t in tasks}
    meta = {
        "format": BUNDLE_FORMAT,
        "version": file_sha256(out_dir / "student.safetensors")[:16],
        "source_run": str(run.path),
        "tasks": [{"name": t.name, "type": t.type, "classes": t.classes, "threshold": thresholds[t.name]}
                  for t in data.tasks],
        "inputs": {n: list(sample[n].shape[1:]) for n in names},
        "input_dtypes": {n: str(sample[n].dtype).removeprefix("torch.") for n in names},
        "feature_names": data.feature_names,
        "end_to_end": isinstance(student, EndToEndStudent),
        "preprocessing": {"extract": cfg.extract.model_dump(mode="json"), "inputs": info["inputs_spec"],
                          "privileged_columns_ignored": True},
        "model": cfg.model.model_dump(mode="json"),
        "input_shapes": info["input_shapes"],
        "parity_max_abs_diff": diff,
        "encoders_onnx": encoders_onnx,
    }
    atomic_write_json(out_dir / "bundle.json", meta)
    return meta

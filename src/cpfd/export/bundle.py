"""``cpfd export``: a student-only bundle that leaves the training folder.

The bundle holds ``student.safetensors`` (student weights only: nothing of the teacher), ``bundle.json`` (tasks,
classes, validation-tuned thresholds, the student's input signature, the preprocessing: frame sampling, text
fields, encoder identity, and a version hash) and ``student.onnx`` (fusion trunk + heads). Export runs a parity
check, ONNX vs torch on a sample batch, and fails when the largest difference exceeds ``tolerance``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn

from cpfd.config import RunConfig
from cpfd.data.prepared import PreparedData
from cpfd.io import atomic_write_json, file_sha256
from cpfd.models.end_to_end import EndToEndStudent
from cpfd.models.fusion import STUDENT_MODALITIES
from cpfd.models.student import Student
from cpfd.train.checkpoint import save_weights

BUNDLE_FORMAT = 1
MASKS = {"frames": "frames_mask", "text": "text_mask"}


class ExportError(RuntimeError):
    pass


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
    import onnxruntime as ort

    from cpfd.encoders import create_encoder

    report: dict[str, str] = {}
    x = cfg.extract
    jobs = []
    if "frames" in data.student_inputs:
        frames = create_encoder(x.frames_encoder, **x.frames_encoder_args).eval()
        size = x.sampling.size
        sample = (torch.rand(4, 3, size, size, generator=torch.Generator().manual_seed(0)),)
        jobs.append(("frames", frames, sample, ["frames"], {"frames": {0: "n"}, "out": {0: "n"}}))
    if "text" in data.student_inputs:
        text = create_encoder(x.text_encoder, max_tokens=x.max_tokens, **x.text_encoder_args).eval()
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


def export_bundle(run_dir: str | Path, out_dir: str | Path, data: PreparedData, student: nn.Module,
                  tolerance: float = 1e-4, sample_rows: int = 16) -> dict:
    """Write the bundle for a trained student run; returns ``bundle.json``'s content."""
    import onnxruntime as ort

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    cfg = RunConfig.model_validate(yaml.safe_load((run_dir / "config.yaml").read_text()))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    student = student.eval()
    core = student.student if isinstance(student, EndToEndStudent) else student
    names = student_input_names(data)
    tasks = [t.name for t in data.tasks]

    rows = torch.as_tensor(np.concatenate([data.indices("test"), data.indices("val")])[:sample_rows])
    batch = {k: v[rows] for k, v in data.student_inputs.items()}
    with torch.no_grad():
        sample = _core_inputs(student, batch)
        reference = core(**sample)["logits"]
    sample_inputs = tuple(sample[n] for n in names)

    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
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
        shutil.rmtree(out_dir)
        raise ExportError(f"ONNX parity check failed: max |onnx - torch| = {diff:.2e} > {tolerance:.0e}")

    encoders_onnx = _export_encoders(student, data, cfg, out_dir, tolerance) if not isinstance(student, EndToEndStudent) \
        else {"frames": "not exported: end-to-end encoders run in torch"}
    thresholds = {t: metrics["test"]["tasks"][t].get("threshold", metrics["test"]["tasks"][t].get("thresholds"))
                  for t in tasks}
    info = json.loads((run_dir / "run.json").read_text())
    meta = {
        "format": BUNDLE_FORMAT,
        "version": file_sha256(out_dir / "student.safetensors")[:16],
        "source_run": str(run_dir),
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

"""The two-stage schedule: fit the teacher (and its fold teachers) -> cache its outputs -> distil the student.

Every run folder gets ``config.yaml`` (resolved), ``run.json`` (what was built, on which data), ``metrics.json``,
``checkpoints/`` (safetensors) and ``logs/`` (CSV + TensorBoard).
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import asdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import yaml
from lightning_fabric import Fabric
from safetensors.torch import load_file
from torch import nn

from cpfd.config import RunConfig, save_config
from cpfd.data.prepared import PreparedData
from cpfd.distill.losses import CPFDLoss, build_loss
from cpfd.evaluate.diagnostics import weight_diagnostics
from cpfd.evaluate.evaluation import evaluate_logits
from cpfd.io import atomic_write_json
from cpfd.models.end_to_end import EndToEndStudent, EndToEndTeacher, Encoders
from cpfd.models.fusion import STUDENT_MODALITIES
from cpfd.models.student import Student
from cpfd.models.teacher import Teacher
from cpfd.train import teacher_outputs
from cpfd.train.batches import TeacherTargets
from cpfd.train.checkpoint import load_weights
from cpfd.train.loop import fit, predict, student_forward, teacher_forward, unwrap

Log = Callable[[str], None]


def input_shapes(data: PreparedData, encoders: Encoders | None = None) -> dict[str, tuple[int, ...]]:
    """Per-row shape of each modality the trunk sees (in end-to-end mode: after the trainable encoders)."""
    shapes = {k: tuple(v.shape[1:]) for k, v in data.student_inputs.items() if k in STUDENT_MODALITIES}
    if encoders is not None:
        if "pixels" in data.student_inputs:
            shapes["frames"] = (data.student_inputs["pixels"].shape[1], encoders.frames.dim)
        if "text_ids" in data.student_inputs:
            shapes["text"] = (data.student_inputs["text_ids"].shape[1], encoders.text.dim)
    return shapes


def is_end_to_end(data: PreparedData) -> bool:
    return "pixels" in data.student_inputs or "text_ids" in data.student_inputs


def build_encoders(data: PreparedData, cfg: RunConfig) -> Encoders | None:
    """Trainable encoders for end-to-end mode (their pretrained weights are the starting point)."""
    if not is_end_to_end(data):
        return None
    from cpfd.encoders import create_encoder

    x = cfg.extract
    frames = create_encoder(x.frames_encoder, **x.frames_encoder_args) if "pixels" in data.student_inputs else None
    text = (create_encoder(x.text_encoder, max_tokens=x.max_tokens, **x.text_encoder_args)
            if "text_ids" in data.student_inputs else None)
    return Encoders(frames, text)


def task_outputs(data: PreparedData) -> dict[str, int]:
    return {t.name: t.n_outputs for t in data.tasks}


def group_ids(data: PreparedData, groups: dict[str, list[str]] | None) -> list[int]:
    """Privileged column -> group index; columns in no named group get a group of their own."""
    ids: list[int] = []
    names = list(groups or {})
    for col in data.privileged_names:
        hit = next((k for k, name in enumerate(names) if any(fnmatch.fnmatchcase(col, p) for p in groups[name])), None)
        ids.append(hit if hit is not None else len(names) + len(ids))
    # Re-number densely so the tower sizes its dropout mask by the groups that exist.
    remap = {g: k for k, g in enumerate(dict.fromkeys(ids))}
    return [remap[g] for g in ids]


def build_teacher(data: PreparedData, cfg: RunConfig) -> nn.Module:
    encoders = build_encoders(data, cfg)
    teacher = Teacher(input_shapes(data, encoders), task_outputs(data), cfg.model, cfg.teacher,
                      len(data.privileged_names), group_ids(data, cfg.teacher.groups))
    train = torch.from_numpy(data.indices("train"))
    teacher.trunk.fit_inputs({k: v[train] for k, v in data.student_inputs.items()})
    if teacher.tower is not None:
        teacher.tower.fit(data.privileged[train])
    return EndToEndTeacher(encoders, teacher) if encoders is not None else teacher


def build_student(data: PreparedData, cfg: RunConfig) -> nn.Module:
    encoders = build_encoders(data, cfg)
    student = Student(input_shapes(data, encoders), task_outputs(data), cfg.model)
    train = torch.from_numpy(data.indices("train"))
    student.trunk.fit_inputs({k: v[train] for k, v in data.student_inputs.items()})
    return EndToEndStudent(encoders, student) if encoders is not None else student


class StudentWithProjector(nn.Module):
    """Student + the feature-distillation projector (training only; export takes ``.student``)."""

    def __init__(self, student: nn.Module, teacher_dim: int):
        super().__init__()
        self.student = student
        self.projector = nn.Linear(student.embedding_dim, teacher_dim)

    def forward(self, **inputs) -> dict:
        out = self.student(**inputs)
        return out | {"projected": self.projector(out["embedding"])}


def _write_run(run_dir: Path, cfg: RunConfig, data: PreparedData, role: str, extra: dict | None = None) -> None:
    info = {
        "role": role,
        "dataset": str(data.root),
        "dataset_name": data.name,
        "fingerprint": data.fingerprint,
        "tasks": [{"name": t.name, "type": t.type, "classes": t.classes} for t in data.tasks],
        "input_shapes": {k: list(v) for k, v in input_shapes(data).items()},
        "privileged_names": data.privileged_names if role == "teacher" else [],
        "skipped_rows": [asdict(row) for row in data.skipped],
        "inputs_spec": data.inputs_spec,
        **(extra or {}),
    }
    save_config(cfg, run_dir / "config.yaml")
    atomic_write_json(run_dir / "run.json", info)


def _train_labelled(data: PreparedData) -> np.ndarray:
    return data.indices("train", labelled_only=True)


def fit_teacher(data: PreparedData, cfg: RunConfig, run_dir: str | Path, fabric: Fabric, resume: bool = False,
                log: Log = print) -> dict:
    """Train the teacher (early stopping on val F1), its fold teachers if ``oof_folds``, then cache its outputs."""
    run_dir = Path(run_dir)
    if fabric.is_global_zero:
        _write_run(run_dir, cfg, data, "teacher")
    fabric.seed_everything(cfg.train.seed, verbose=False)
    teacher = build_teacher(data, cfg)
    fit_result = fit(fabric, teacher, _teacher_loss(cfg, data),
                     data, _train_labelled(data), cfg.train, run_dir, teacher_forward, with_privileged=True,
                     resume=resume, desc="teacher")
    teacher = unwrap(teacher)
    folds = fold_assignment(data, cfg) if cfg.teacher.oof_folds >= 2 else []
    if fabric.is_global_zero and folds:
        atomic_write_json(run_dir / "folds" / "folds.json", [data.ids[rows].tolist() for rows in folds])
    for k, held_out in enumerate(folds):
        fabric.seed_everything(cfg.train.seed + 1000 * (k + 1), verbose=False)
        fold_teacher = build_teacher(data, cfg)
        train_rows = np.setdiff1d(_train_labelled(data), held_out)
        fit(fabric, fold_teacher, _teacher_loss(cfg, data), data,
            train_rows, cfg.train, run_dir / "folds" / str(k), teacher_forward, with_privileged=True,
            resume=resume, desc=f"fold {k + 1}/{len(folds)}")
    metrics = {}
    if fabric.is_global_zero:
        targets = teacher_targets(run_dir, data, log)
        metrics = teacher_report(data, targets, fit_result)
        atomic_write_json(run_dir / "metrics.json", metrics)
    fabric.barrier()
    return metrics


def _teacher_loss(cfg: RunConfig, data: PreparedData) -> nn.Module:
    """Teachers learn from labels only."""
    return build_loss(cfg.distill.model_copy(update={"method": "none"}), _types(data))


def _types(data: PreparedData) -> dict[str, str]:
    return {t.name: t.type for t in data.tasks}


def fold_assignment(data: PreparedData, cfg: RunConfig) -> list[np.ndarray]:
    rows = np.random.default_rng(cfg.train.seed).permutation(_train_labelled(data))
    return [np.sort(part) for part in np.array_split(rows, cfg.teacher.oof_folds)]


def load_teacher(run_dir: str | Path, data: PreparedData, checkpoint: str | Path | None = None) -> nn.Module:
    """Rebuild a teacher from its run folder (config + best weights) for ``data``'s schema."""
    run_dir = Path(run_dir)
    cfg = RunConfig.model_validate(yaml.safe_load((run_dir / "config.yaml").read_text()))
    info = json.loads((run_dir / "run.json").read_text())
    if info["privileged_names"] != data.privileged_names:
        raise ValueError(f"{run_dir}: teacher was trained on privileged columns {info['privileged_names']}, "
                         f"the dataset has {data.privileged_names}")
    teacher = build_teacher(data, cfg)
    load_weights(teacher, checkpoint or run_dir / "checkpoints" / "best.safetensors")
    return teacher.eval()


def teacher_checkpoints(run_dir: Path) -> list[Path]:
    paths = [run_dir / "checkpoints" / "best.safetensors"]
    paths += sorted((run_dir / "folds").glob("*/checkpoints/best.safetensors"), key=lambda p: int(p.parent.parent.name))
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"teacher run {run_dir} has no checkpoint {missing[0]} (run `cpfd fit-teacher` first)")
    return paths


def teacher_targets(run_dir: str | Path, data: PreparedData, log: Log = print) -> TeacherTargets:
    """The teacher's cached outputs for ``data``; (re)built when missing or stale."""
    run_dir = Path(run_dir)
    checkpoints = teacher_checkpoints(run_dir)
    cfg = RunConfig.model_validate(yaml.safe_load((run_dir / "config.yaml").read_text()))

    def build() -> TeacherTargets:
        teacher = load_teacher(run_dir, data)
        folds = []
        folds_file = run_dir / "folds" / "folds.json"
        if folds_file.exists():
            position = {i: k for k, i in enumerate(data.ids)}
            for k, ids in enumerate(json.loads(folds_file.read_text())):
                rows = np.array(sorted(position[i] for i in ids if i in position), dtype=np.int64)
                folds.append((load_teacher(run_dir, data, checkpoints[k + 1]), rows))
        return teacher_outputs.compute_targets(teacher, data, folds, calibrate=cfg.teacher.calibrate)

    key = teacher_outputs.cache_key(checkpoints, data.fingerprint)
    return teacher_outputs.get_or_build(run_dir / "cache", key, build, log)


def teacher_report(data: PreparedData, targets: TeacherTargets, fit_result=None) -> dict:
    raw = evaluate_logits(data, targets.logits)
    calibrated = evaluate_logits(data, targets.logits, temperatures=targets.temperatures)
    report = {
        "role": "teacher",
        "test": raw,
        "calibration": {
            t.name: {"temperature": targets.temperatures[t.name], "test_ece_before": raw["tasks"][t.name]["ece"],
                     "test_ece_after": calibrated["tasks"][t.name]["ece"]}
            for t in data.tasks
        },
        "train_true_class_confidence": teacher_outputs.in_sample_confidence(targets, data),
    }
    if fit_result is not None:
        report |= {"best_epoch": fit_result.best_epoch, "best_val_f1": fit_result.best_score,
                   "epochs_run": fit_result.epochs_run}
    return report


def student_train_rows(data: PreparedData, cfg: RunConfig) -> np.ndarray:
    """Distillation uses unlabelled train rows too (they get the teacher's soft label); the baseline cannot."""
    if cfg.distill.method != "none" and cfg.distill.use_unlabelled:
        return data.indices("train")
    return _train_labelled(data)


def distill(data: PreparedData, cfg: RunConfig, run_dir: str | Path, fabric: Fabric, teacher_dir: str | Path | None,
            resume: bool = False, log: Log = print) -> dict:
    """Train a student: ``method=none`` (baseline), ``pfd`` or ``cpfd`` against a fitted teacher's outputs."""
    run_dir = Path(run_dir)
    method = cfg.distill.method
    targets = None
    if method != "none":
        if teacher_dir is None:
            raise ValueError(f"distill --method {method} needs --teacher RUN (a folder made by `cpfd fit-teacher`)")
        # Rank 0 builds the cache; the others wait and then read it.
        if fabric.is_global_zero:
            targets = teacher_targets(teacher_dir, data, log)
        fabric.barrier()
        if not fabric.is_global_zero:
            targets = teacher_targets(teacher_dir, data, lambda _msg: None)
    if fabric.is_global_zero:
        _write_run(run_dir, cfg, data, "student", {"teacher": str(teacher_dir) if teacher_dir else None})
    online = None
    # Built before seeding, so the student's initialisation and dropout draws match the cached mode.
    with_privileged = False
    if method != "none" and cfg.distill.teacher_outputs == "online":
        frozen = load_teacher(teacher_dir, data).to(fabric.device).requires_grad_(False)
        with_privileged = True

        def online(batch: dict) -> None:
            with torch.no_grad():
                out = frozen(**batch["student"], privileged=batch.pop("privileged"))
            batch["teacher_logits"], batch["teacher_embedding"] = out["logits"], out["embedding"]

    fabric.seed_everything(cfg.train.seed, verbose=False)
    student = build_student(data, cfg)
    model: nn.Module = student
    if method != "none" and cfg.distill.feature_kd != "none":
        model = StudentWithProjector(student, targets.embedding.shape[1])
    loss = build_loss(cfg.distill, _types(data), targets.temperatures if targets else None)
    if isinstance(loss, CPFDLoss) and targets is not None and online is None:
        everything = {"labels": data.labels, "label_mask": data.label_mask}
        targets.confidence = {t.name: loss.confidences(t.name, targets.logits[t.name], everything) for t in data.tasks}
    rows = student_train_rows(data, cfg)
    # Online mode still reads the cache for the calibration temperatures and the weight diagnostics.
    result = fit(fabric, model, loss, data, rows, cfg.train, run_dir, student_forward,
                 with_privileged=with_privileged, teacher_targets=targets if online is None else None,
                 online_teacher=online, resume=resume, desc=f"student[{method}]")
    metrics = {}
    if fabric.is_global_zero:
        metrics = evaluate_student(data, student)
        metrics |= {"role": "student", "method": method, "best_epoch": result.best_epoch,
                    "best_val_f1": result.best_score, "epochs_run": result.epochs_run, "train_rows": int(len(rows))}
        if targets is not None:
            metrics["weights"] = weight_diagnostics(loss, data, targets, rows)
        atomic_write_json(run_dir / "metrics.json", metrics)
    fabric.barrier()
    return metrics


def evaluate_student(data: PreparedData, student: nn.Module) -> dict:
    everything = np.arange(len(data))
    preds = predict(unwrap(student), data, everything, student_forward)
    return {"test": evaluate_logits(data, preds["logits"]), "val": evaluate_logits(data, preds["logits"], "val")}


def load_student(run_dir: str | Path, data: PreparedData) -> nn.Module:
    run_dir = Path(run_dir)
    cfg = RunConfig.model_validate(yaml.safe_load((run_dir / "config.yaml").read_text()))
    student = build_student(data, cfg)
    state = load_file(str(run_dir / "checkpoints" / "best.safetensors"))
    if any(k.startswith("projector.") for k in state):  # trained with feature distillation: drop the projector
        state = {k.removeprefix("student."): v for k, v in state.items() if k.startswith("student.")}
    student.load_state_dict(state)
    return student.eval()

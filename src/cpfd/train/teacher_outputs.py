"""Run the frozen teacher once over every row, calibrate it, and cache its outputs (:mod:`cpfd.distill.targets`).

With ``oof_folds = K`` the train rows get cross-fitted outputs: fold teacher k scores the fold it did not see;
the full teacher scores val, test and unlabelled rows.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from cpfd.data.prepared import PreparedData
from cpfd.distill import targets as cache
from cpfd.distill.calibration import choose_temperature
from cpfd.distill.confidence import true_class
from cpfd.distill.probs import task_probs
from cpfd.distill.targets import TeacherTargets
from cpfd.evaluate.evaluation import evaluate_logits
from cpfd.models.build import load_teacher
from cpfd.runs import RunFolder
from cpfd.train.loop import predict

Log = Callable[[str], None]


def compute_targets(teacher: nn.Module, data: PreparedData, folds: list[tuple[nn.Module, np.ndarray]] | None = None,
                    calibrate: bool = True, calibration_share: float = 0.5) -> TeacherTargets:
    """Teacher logits and fused embedding for every row; fold teachers overwrite their held-out rows. The
    temperature is fitted on the calibration slice of validation and kept only if it lowers the cross-fitted
    held-out NLL (:func:`cpfd.distill.calibration.choose_temperature`)."""
    everything = np.arange(len(data))
    out = predict(teacher, data, everything, with_privileged=True)
    for fold_teacher, rows in folds or []:
        fold_out = predict(fold_teacher, data, rows, with_privileged=True)
        for task in out["logits"]:
            out["logits"][task][rows] = fold_out["logits"][task][rows]
        out["embedding"][rows] = fold_out["embedding"][rows]
    temperatures, report = {}, {}
    calib = data.calibration_rows(calibration_share)
    fraction = data.id_fraction()
    for task in data.tasks:
        rows = np.flatnonzero(calib & data.label_mask[task.name].numpy())
        if not calibrate:
            temperatures[task.name] = 1.0
            continue
        # Two folds inside the slice, from the same id hash: each row is held out once.
        scale = calibration_share if calibration_share > 0 else 1.0
        folds = (fraction[rows] / scale * 2).astype(int).clip(0, 1)
        choice = choose_temperature(out["logits"][task.name][rows], data.labels[task.name][rows], task.kind, folds)
        temperatures[task.name] = choice["temperature"]
        report[task.name] = choice | {"rows": len(rows)}
    return TeacherTargets(out["logits"], out["embedding"], temperatures, report)


def teacher_targets(run: RunFolder, data: PreparedData, log: Log = print) -> TeacherTargets:
    """The teacher's cached outputs for ``data``; (re)built when missing, stale or corrupt."""
    run = RunFolder(run)
    checkpoints = run.teacher_checkpoints()

    def build() -> TeacherTargets:
        teacher = load_teacher(run, data)
        folds = []
        if run.folds_file.exists():
            position = {i: k for k, i in enumerate(data.ids)}
            for k, ids in enumerate(run.folds_ids()):
                rows = np.array(sorted(position[i] for i in ids if i in position), dtype=np.int64)
                folds.append((load_teacher(run, data, checkpoints[k + 1]), rows))
        t_cfg = run.config.teacher
        return compute_targets(teacher, data, folds, calibrate=t_cfg.calibrate, calibration_share=t_cfg.calibration_share)

    return cache.get_or_build(run.teacher_outputs, cache.cache_key(checkpoints, data.fingerprint), build, log)


def in_sample_confidence(targets: TeacherTargets, data: PreparedData) -> dict[str, float]:
    """Mean calibrated teacher probability of the true class on labelled train rows (a reliability diagnostic)."""
    rows = torch.from_numpy(data.indices("train"))
    out = {}
    for task in data.tasks:
        mask = data.label_mask[task.name][rows]
        probs = task_probs(targets.logits[task.name][rows], task.kind, targets.temperatures[task.name])
        c = true_class(probs, data.labels[task.name][rows], mask, task.kind)[mask]
        out[task.name] = float(c.mean()) if len(c) else float("nan")
    return out


def teacher_report(data: PreparedData, targets: TeacherTargets) -> dict:
    raw = evaluate_logits(data, targets.logits)
    calibrated = evaluate_logits(data, targets.logits, temperatures=targets.temperatures)
    report = {
        "role": "teacher",
        "test": raw,
        "calibration": {
            t.name: {"temperature": targets.temperatures[t.name], "test_ece_before": raw["tasks"][t.name]["ece"],
                     "test_ece_after": calibrated["tasks"][t.name]["ece"], **targets.calibration.get(t.name, {})}
            for t in data.tasks
        },
        "train_true_class_confidence": in_sample_confidence(targets, data),
    }
    return report

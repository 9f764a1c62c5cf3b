"""Diagnostics of the per-sample distillation weights: histogram, effective sample size, weight when the teacher
is right vs wrong. If confidence weighting works, teacher-wrong rows should get clearly smaller weights. The
weights are the task's own (:meth:`cpfd.distill.task.DistillTask.row_weights`), not recomputed another way."""

from __future__ import annotations

import numpy as np
import torch

from cpfd.data.oracle import OracleLabels
from cpfd.data.prepared import PreparedData
from cpfd.distill.probs import task_probs
from cpfd.distill.targets import TeacherTargets
from cpfd.distill.task import DistillTask

BINS = 20


def effective_sample_size(w: np.ndarray) -> float:
    r"""Kish's effective sample size as a fraction of n: :math:`(\sum w)^2 / (n \sum w^2)`."""
    w = np.asarray(w, dtype=np.float64).reshape(-1)
    denom = len(w) * np.sum(w**2)
    return float(np.sum(w) ** 2 / denom) if denom > 0 else 0.0


def weight_diagnostics(task: DistillTask, data: PreparedData, targets: TeacherTargets, rows: np.ndarray,
                       oracle: OracleLabels | None = None) -> dict:
    """The weights ``task`` gives ``rows`` in training, summarised per task. Right/wrong is judged on labelled
    rows, plus the unlabelled rows ``oracle`` has hidden labels for (evaluation only: the weights are the task's)."""
    idx = torch.as_tensor(rows, dtype=torch.long)
    weights = task.row_weights(idx, data.labels, data.label_mask, targets.logits)
    report = {}
    for info in data.tasks:
        w = weights[info.name].detach().cpu()
        probs = task_probs(targets.logits[info.name][idx], info.kind, targets.temperatures.get(info.name, 1.0))
        labels, known = data.labels[info.name][idx], data.label_mask[info.name][idx]
        if oracle is not None and info.name in oracle.labels:
            hidden = oracle.mask[info.name][idx] & ~known
            labels = torch.where(info.kind.element_mask(hidden, labels), oracle.labels[info.name][idx].to(labels.dtype),
                                 labels)
            known = known | hidden
        correct = info.kind.correct(probs, labels)
        mask = info.kind.element_mask(known, w)
        counts, edges = np.histogram(w.numpy().reshape(-1), bins=BINS, range=(0.0, max(1.0, float(w.max()))))
        right, wrong = w[mask & correct], w[mask & ~correct]
        mass = float(right.sum() + wrong.sum())
        report[info.name] = {
            "kd_mass_teacher_wrong": float(wrong.sum()) / mass if mass > 0 else float("nan"),
            "rows_judged": int(mask.sum()),
            "mean_weight": float(w.mean()),
            "ess_fraction": effective_sample_size(w.numpy()),
            "mean_weight_teacher_correct": float(right.mean()) if len(right) else float("nan"),
            "mean_weight_teacher_wrong": float(wrong.mean()) if len(wrong) else float("nan"),
            "teacher_error_rate": float(len(wrong) / max(len(right) + len(wrong), 1)),
            "histogram": {"edges": edges.tolist(), "counts": counts.tolist()},
        }
    return report

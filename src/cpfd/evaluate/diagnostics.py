"""Diagnostics of CPFD's per-sample weights: histogram, effective sample size, weight when the teacher is right
vs wrong. If confidence weighting works, teacher-wrong rows should get clearly smaller weights."""

from __future__ import annotations

import numpy as np
import torch

from cpfd.data.prepared import PreparedData
from cpfd.distill.probs import task_probs
from cpfd.train.batches import TeacherTargets

BINS = 20


def teacher_correct(probs: torch.Tensor, labels: torch.Tensor, task_type: str) -> torch.Tensor:
    """Per row (binary, multiclass) or per label (multilabel): does the teacher's decision match the label?"""
    if task_type == "multiclass":
        return probs.argmax(-1) == labels.long()
    return (probs >= 0.5).float() == labels.float()


def effective_sample_size(w: np.ndarray) -> float:
    r"""Kish's effective sample size as a fraction of n: :math:`(\sum w)^2 / (n \sum w^2)`."""
    w = np.asarray(w, dtype=np.float64).reshape(-1)
    denom = len(w) * np.sum(w**2)
    return float(np.sum(w) ** 2 / denom) if denom > 0 else 0.0


def weight_diagnostics(loss, data: PreparedData, targets: TeacherTargets, rows: np.ndarray) -> dict:
    """Weights the loss would give ``rows`` (``loss.sample_weights``), summarised per task."""
    idx = torch.as_tensor(rows, dtype=torch.long)
    batch = {"labels": {t: y[idx] for t, y in data.labels.items()},
             "label_mask": {t: m[idx] for t, m in data.label_mask.items()}}
    report = {}
    for task in data.tasks:
        logits = targets.logits[task.name][idx]
        w = loss.sample_weights(task.name, logits, batch).detach()
        probs = task_probs(logits, task.type, targets.temperatures.get(task.name, 1.0))
        correct = teacher_correct(probs, batch["labels"][task.name], task.type)
        mask = batch["label_mask"][task.name]
        if w.dim() == 2:
            mask = mask.unsqueeze(-1).expand_as(w)
        counts, edges = np.histogram(w.numpy().reshape(-1), bins=BINS, range=(0.0, max(1.0, float(w.max()))))
        right, wrong = w[mask & correct], w[mask & ~correct]
        report[task.name] = {
            "mean_weight": float(w.mean()),
            "ess_fraction": effective_sample_size(w.numpy()),
            "mean_weight_teacher_correct": float(right.mean()) if len(right) else float("nan"),
            "mean_weight_teacher_wrong": float(wrong.mean()) if len(wrong) else float("nan"),
            "teacher_error_rate": float(len(wrong) / max(len(right) + len(wrong), 1)),
            "histogram": {"edges": edges.tolist(), "counts": counts.tolist()},
        }
    return report

"""Metrics per task (implemented by each :class:`~cpfd.task_types.TaskType`) and the gap closed."""

from __future__ import annotations

import numpy as np

from cpfd.task_types import N_BINS, TaskType, best_threshold, task_type

__all__ = ["N_BINS", "best_threshold", "tune_thresholds", "task_metrics", "primary_f1", "gap_closed"]


def tune_thresholds(kind: str | TaskType, val_probs: np.ndarray, val_labels: np.ndarray) -> list[float] | None:
    return task_type(kind).tune_thresholds(val_probs, val_labels)


def task_metrics(kind: str | TaskType, probs: np.ndarray, labels: np.ndarray, thresholds: list[float] | None) -> dict:
    """Metrics for one task on labelled rows. ``probs``: binary (n,), multiclass (n, C), multilabel (n, L)."""
    return task_type(kind).metrics(probs, labels, thresholds)


def primary_f1(metrics: dict) -> float:
    """The F1 a task is judged by: binary F1, multiclass macro-F1, multilabel macro-F1."""
    return metrics["f1"]


def gap_closed(student: float, baseline: float, teacher: float) -> float | None:
    """(F1_student − F1_baseline) / (F1_teacher − F1_baseline); None (undefined) unless the teacher is better."""
    if not np.isfinite([student, baseline, teacher]).all() or teacher <= baseline:
        return None
    return (student - baseline) / (teacher - baseline)

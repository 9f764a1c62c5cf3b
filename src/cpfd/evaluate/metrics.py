"""Per-task metrics from scikit-learn and torchmetrics.

binary: F1 of the positive class at the threshold that maximises F1 on validation, applied unchanged to test;
multiclass: macro-F1; multilabel: micro- and macro-F1 with per-label validation thresholds. Also precision,
recall, ROC-AUC, PR-AUC and ECE (torchmetrics ``CalibrationError``, 15 bins).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import (
    average_precision_score,
    f1_score,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_auc_score,
)
from torchmetrics.functional.classification import binary_calibration_error, multiclass_calibration_error

N_BINS = 15


def best_threshold(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Threshold maximising F1 of the positive class (sklearn's precision-recall curve); 0.5 if undefined."""
    if y_true.sum() == 0 or y_true.sum() == len(y_true):
        return 0.5
    precision, recall, thresholds = precision_recall_curve(y_true, scores)
    f1 = 2 * precision * recall / np.clip(precision + recall, 1e-12, None)
    return float(thresholds[int(np.argmax(f1[:-1]))])


def primary_f1(metrics: dict) -> float:
    """The F1 a task is judged by: binary F1, multiclass macro-F1, multilabel macro-F1."""
    return metrics["f1"]


def _safe(fn, *args, **kwargs) -> float:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UndefinedMetricWarning)
            warnings.simplefilter("ignore", UserWarning)
            return float(fn(*args, **kwargs))
    except ValueError:
        return float("nan")


def tune_thresholds(task_type: str, val_probs: np.ndarray, val_labels: np.ndarray) -> list[float] | None:
    if task_type == "binary":
        return [best_threshold(val_labels.astype(int), val_probs)]
    if task_type == "multilabel":
        return [best_threshold(val_labels[:, k].astype(int), val_probs[:, k]) for k in range(val_probs.shape[1])]
    return None


def task_metrics(task_type: str, probs: np.ndarray, labels: np.ndarray, thresholds: list[float] | None) -> dict:
    """Metrics for one task on labelled rows. ``probs``: binary (n,), multiclass (n, C), multilabel (n, L)."""
    n = len(labels)
    out: dict = {"n": int(n)}
    if n == 0:
        return out | {"f1": float("nan")}
    if task_type == "binary":
        y = labels.astype(int)
        pred = (probs >= thresholds[0]).astype(int)
        out |= {
            "f1": _safe(f1_score, y, pred, zero_division=0),
            "precision": _safe(precision_score, y, pred, zero_division=0),
            "recall": _safe(recall_score, y, pred, zero_division=0),
            "roc_auc": _safe(roc_auc_score, y, probs),
            "pr_auc": _safe(average_precision_score, y, probs),
            "ece": float(binary_calibration_error(torch.from_numpy(probs).float(), torch.from_numpy(y), n_bins=N_BINS)),
            "threshold": thresholds[0],
        }
    elif task_type == "multiclass":
        y = labels.astype(int)
        pred = probs.argmax(1)
        n_classes = probs.shape[1]
        present = np.unique(y)
        out |= {
            "f1": _safe(f1_score, y, pred, average="macro", labels=np.arange(n_classes), zero_division=0),
            "precision": _safe(precision_score, y, pred, average="macro", labels=np.arange(n_classes), zero_division=0),
            "recall": _safe(recall_score, y, pred, average="macro", labels=np.arange(n_classes), zero_division=0),
            "accuracy": float((pred == y).mean()),
            # AUCs over the classes present in this split, so a class absent from test does not void them.
            "roc_auc": _safe(roc_auc_score, np.eye(n_classes)[y][:, present], probs[:, present], average="macro"),
            "pr_auc": _safe(average_precision_score, np.eye(n_classes)[y][:, present], probs[:, present], average="macro"),
            "ece": float(multiclass_calibration_error(torch.from_numpy(probs).float(), torch.from_numpy(y),
                                                      num_classes=n_classes, n_bins=N_BINS)),
        }
    else:
        y = labels.astype(int)
        pred = (probs >= np.asarray(thresholds)[None, :]).astype(int)
        varying = (y.min(0) != y.max(0))
        out |= {
            "f1": _safe(f1_score, y, pred, average="macro", zero_division=0),
            "f1_micro": _safe(f1_score, y, pred, average="micro", zero_division=0),
            "precision": _safe(precision_score, y, pred, average="macro", zero_division=0),
            "recall": _safe(recall_score, y, pred, average="macro", zero_division=0),
            "roc_auc": _safe(roc_auc_score, y[:, varying], probs[:, varying], average="macro") if varying.any() else float("nan"),
            "pr_auc": _safe(average_precision_score, y[:, varying], probs[:, varying], average="macro") if varying.any() else float("nan"),
            "ece": float(binary_calibration_error(torch.from_numpy(probs.reshape(-1)).float(),
                                                  torch.from_numpy(y.reshape(-1)), n_bins=N_BINS)),
            "thresholds": list(map(float, thresholds)),
        }
    return out


def gap_closed(student: float, baseline: float, teacher: float) -> float | None:
    """(F1_student − F1_baseline) / (F1_teacher − F1_baseline); None (undefined) unless the teacher is better."""
    if not np.isfinite([student, baseline, teacher]).all() or teacher <= baseline:
        return None
    return (student - baseline) / (teacher - baseline)

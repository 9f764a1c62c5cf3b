"""Task kinds as objects: everything that differs between binary, multiclass and multilabel lives here.

A :class:`TaskType` knows its output count, how logits become probabilities, its hard loss and Hinton KD, its
two-class view for label-free confidences, how its labels are parsed from a table and decoded for users, how
decision thresholds are tuned on validation, and its metrics. Adding a task kind is one registered subclass in
this module (or a plugin); nothing else compares task-type strings.

Shapes: binary logits (B, 1) and probabilities (B,); multiclass (B, C); multilabel (B, L). Element-wise losses
and confidences are (B,) for binary/multiclass and (B, L) for multilabel, so per-label weights line up.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import (
    average_precision_score,
    f1_score,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_auc_score,
)
from torch import Tensor
from torchmetrics.functional.classification import binary_calibration_error, multiclass_calibration_error

from cpfd.registry import TASK_TYPES

N_BINS = 15
TRUE_VALUES = {"1", "true", "yes"}
FALSE_VALUES = {"0", "false", "no"}


def best_threshold(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Threshold maximising F1 of the positive class (sklearn's precision-recall curve); 0.5 if undefined."""
    if y_true.sum() == 0 or y_true.sum() == len(y_true):
        return 0.5
    precision, recall, thresholds = precision_recall_curve(y_true, scores)
    f1 = 2 * precision * recall / np.clip(precision + recall, 1e-12, None)
    return float(thresholds[int(np.argmax(f1[:-1]))])


def safe_metric(fn, *args, **kwargs) -> float:
    """A sklearn metric, NaN where it is undefined (e.g. AUC with one class present)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UndefinedMetricWarning)
            warnings.simplefilter("ignore", UserWarning)
            return float(fn(*args, **kwargs))
    except ValueError:
        return float("nan")


def is_missing(value: Any) -> bool:
    """None, NaN, pandas NA or a blank string."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    if type(value).__name__ in ("NAType", "NaTType"):
        return True
    return isinstance(value, str) and value.strip() == ""


def class_name(v: Any) -> str:
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v))
    return str(v).strip()


def natural_order(s: str):
    return (0, int(s), s) if s.lstrip("-").isdigit() else (1, 0, s)


class TaskType:
    """The interface; subclasses implement it for one kind of label."""

    name: str
    per_label: bool = False  # confidences / weights per label (B, L) rather than per row (B,)

    def n_outputs(self, classes: list[str]) -> int:
        raise NotImplementedError

    def probs(self, logits: Tensor, temperature: float | Tensor = 1.0) -> Tensor:
        raise NotImplementedError

    def hard_loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        raise NotImplementedError

    def logits_from_probs(self, probs: Tensor, like: Tensor, eps: float = 1e-6) -> Tensor:
        """The inverse of :meth:`probs` at temperature 1, shaped like the logits ``like`` (for built targets)."""
        raise NotImplementedError

    def label_probs(self, labels: Tensor, like: Tensor) -> Tensor:
        """Labels as a probability tensor shaped like ``like`` (one-hot for multiclass)."""
        raise NotImplementedError

    def kd_loss(self, student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
        raise NotImplementedError

    def two_class(self, probs: Tensor) -> Tensor:
        """Probabilities as distributions over the last axis: (..., K)."""
        raise NotImplementedError

    def true_class_prob(self, probs: Tensor, labels: Tensor) -> Tensor:
        raise NotImplementedError

    def correct(self, probs: Tensor, labels: Tensor) -> Tensor:
        """Per row (or per label): does the decision match the label?"""
        raise NotImplementedError

    def element_mask(self, row_mask: Tensor, like: Tensor) -> Tensor:
        """A (B,) row mask broadcast to the shape of ``like`` (per-label values get the row's mask)."""
        return row_mask.unsqueeze(-1).expand_as(like) if like.dim() == 2 else row_mask

    def tune_thresholds(self, val_probs: np.ndarray, val_labels: np.ndarray) -> list[float] | None:
        return None

    def metrics(self, probs: np.ndarray, labels: np.ndarray, thresholds: list[float] | None) -> dict:
        raise NotImplementedError

    def calibration_error(self, probs: np.ndarray, labels: np.ndarray) -> float:
        """Expected calibration error over ``N_BINS`` equal-width bins (torchmetrics, L1 norm)."""
        raise NotImplementedError

    def parse_labels(self, raw: list, classes: list[str] | None) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray]:
        """Table values -> (labels, labelled mask, classes, invalid mask)."""
        raise NotImplementedError

    def decode(self, probs: np.ndarray, threshold: Any, classes: list[str]) -> list:
        """Probabilities (n, ...) -> user-facing labels at the tuned threshold(s)."""
        raise NotImplementedError

    def prediction_types(self) -> tuple[pa.DataType, pa.DataType]:
        """Arrow types of one row's probabilities and label in prediction files."""
        raise NotImplementedError

    def varies(self, train_labels: Tensor) -> bool:
        """Whether train labels have at least two values (a single class cannot be learnt)."""
        return len(train_labels) > 0 and train_labels.unique().numel() >= 2

    single_class_message = " has a single class in train"

    def invalid_label_message(self, classes: list[str]) -> str:
        return f"label outside the declared classes {classes}"


class Bernoulli(TaskType):
    """Independent sigmoid outputs (binary: one, flattened to (B,); multilabel: one per label)."""

    def _shape(self, x: Tensor) -> Tensor:
        return x

    def probs(self, logits, temperature=1.0):
        return torch.sigmoid(self._shape(logits / temperature))

    def logits_from_probs(self, probs, like, eps=1e-6):
        q = probs.clamp(eps, 1 - eps)
        return (q.log() - (1 - q).log()).reshape(like.shape)

    def label_probs(self, labels, like):
        return labels.to(like.dtype).reshape(like.shape)

    def hard_loss(self, logits, labels):
        return F.binary_cross_entropy_with_logits(self._shape(logits), labels.float(), reduction="none")

    def kd_loss(self, student_logits, teacher_logits, temperature):
        s = self._shape(student_logits / temperature)
        q_t = torch.sigmoid(self._shape(teacher_logits.detach() / temperature))
        return F.binary_cross_entropy_with_logits(s, q_t, reduction="none") * temperature**2

    def two_class(self, probs):
        return torch.stack([1 - probs, probs], dim=-1)

    def true_class_prob(self, probs, labels):
        y = labels.float()
        return y * probs + (1 - y) * (1 - probs)

    def calibration_error(self, probs, labels):
        # Every (row, label) probability is one binary forecast: multilabel tasks are scored flattened.
        return float(binary_calibration_error(torch.from_numpy(np.asarray(probs, dtype=np.float32).reshape(-1)),
                                              torch.from_numpy(np.asarray(labels).astype(int).reshape(-1)),
                                              n_bins=N_BINS))

    def correct(self, probs, labels):
        return (probs >= 0.5).float() == labels.float()


@TASK_TYPES.register("binary")
class Binary(Bernoulli):
    r"""One logit, :math:`q = \sigma(z)`; labels 0/1 or true/false; F1 of the positive class at the threshold
    that maximises F1 on validation."""

    name = "binary"

    def _shape(self, x: Tensor) -> Tensor:
        return x.reshape(-1)

    def n_outputs(self, classes):
        return 1

    def tune_thresholds(self, val_probs, val_labels):
        return [best_threshold(val_labels.astype(int), val_probs)]

    def metrics(self, probs, labels, thresholds):
        out: dict = {"n": int(len(labels))}
        if not len(labels):
            return out | {"f1": float("nan")}
        y = labels.astype(int)
        pred = (probs >= thresholds[0]).astype(int)
        return out | {
            "f1": safe_metric(f1_score, y, pred, zero_division=0),
            "precision": safe_metric(precision_score, y, pred, zero_division=0),
            "recall": safe_metric(recall_score, y, pred, zero_division=0),
            "roc_auc": safe_metric(roc_auc_score, y, probs),
            "pr_auc": safe_metric(average_precision_score, y, probs),
            "ece": self.calibration_error(probs, y),
            "threshold": thresholds[0],
        }

    def parse_labels(self, raw, classes):
        n = len(raw)
        missing = np.array([is_missing(v) for v in raw], dtype=bool)
        y = np.zeros(n, dtype=np.float32)
        bad = np.zeros(n, dtype=bool)
        for i, v in enumerate(raw):
            if missing[i]:
                continue
            key = str(v).strip().lower()
            if isinstance(v, (int, float, np.number)) and not isinstance(v, bool) and float(v) in (0.0, 1.0):
                y[i] = float(v)
            elif key in TRUE_VALUES or key in FALSE_VALUES:
                y[i] = 1.0 if key in TRUE_VALUES else 0.0
            else:
                bad[i] = True
        return y, ~missing & ~bad, ["0", "1"], bad

    def decode(self, probs, threshold, classes):
        return (np.asarray(probs) >= threshold).astype(int).tolist()

    def invalid_label_message(self, classes):
        return "binary label must be 0/1 or true/false"

    def prediction_types(self):
        return pa.float64(), pa.int64()


@TASK_TYPES.register("multiclass")
class Multiclass(TaskType):
    r"""C logits, :math:`p = \mathrm{softmax}(z)`; one class name per row; macro-F1 of the argmax."""

    name = "multiclass"

    def n_outputs(self, classes):
        return len(classes)

    def probs(self, logits, temperature=1.0):
        return torch.softmax(logits / temperature, dim=-1)

    def logits_from_probs(self, probs, like, eps=1e-6):
        return probs.clamp(eps, 1 - eps).log().reshape(like.shape)

    def label_probs(self, labels, like):
        return F.one_hot(labels.clamp(min=0).long(), like.shape[-1]).to(like.dtype)

    def hard_loss(self, logits, labels):
        return F.cross_entropy(logits, labels.clamp(min=0).long(), reduction="none")

    def kd_loss(self, student_logits, teacher_logits, temperature):
        p_t = torch.softmax(teacher_logits.detach() / temperature, dim=-1)
        return -(p_t * torch.log_softmax(student_logits / temperature, dim=-1)).sum(-1) * temperature**2

    def two_class(self, probs):
        return probs

    def true_class_prob(self, probs, labels):
        return probs.gather(-1, labels.clamp(min=0).long().unsqueeze(-1)).squeeze(-1)

    def calibration_error(self, probs, labels):
        return float(multiclass_calibration_error(torch.from_numpy(np.asarray(probs, dtype=np.float32)),
                                                  torch.from_numpy(np.asarray(labels).astype(int)),
                                                  num_classes=np.shape(probs)[1], n_bins=N_BINS))

    def correct(self, probs, labels):
        return probs.argmax(-1) == labels.long()

    def metrics(self, probs, labels, thresholds):
        out: dict = {"n": int(len(labels))}
        if not len(labels):
            return out | {"f1": float("nan")}
        y = labels.astype(int)
        pred = probs.argmax(1)
        n_classes = probs.shape[1]
        every = np.arange(n_classes)
        present = np.unique(y)
        onehot = np.eye(n_classes)[y][:, present]
        return out | {
            "f1": safe_metric(f1_score, y, pred, average="macro", labels=every, zero_division=0),
            "precision": safe_metric(precision_score, y, pred, average="macro", labels=every, zero_division=0),
            "recall": safe_metric(recall_score, y, pred, average="macro", labels=every, zero_division=0),
            "accuracy": float((pred == y).mean()),
            # AUCs over the classes present in this split, so a class absent from test does not void them.
            "roc_auc": safe_metric(roc_auc_score, onehot, probs[:, present], average="macro"),
            "pr_auc": safe_metric(average_precision_score, onehot, probs[:, present], average="macro"),
            "ece": self.calibration_error(probs, y),
        }

    def parse_labels(self, raw, classes):
        values = [None if is_missing(v) else class_name(v) for v in raw]
        classes = list(classes) if classes else sorted({v for v in values if v is not None}, key=natural_order)
        index = {c: k for k, c in enumerate(classes)}
        bad = np.array([v is not None and v not in index for v in values], dtype=bool)
        y = np.array([index.get(v, -1) if v is not None else -1 for v in values], dtype=np.int64)
        return y, (y >= 0), classes, bad

    def decode(self, probs, threshold, classes):
        return [classes[k] for k in np.asarray(probs).argmax(1)]

    def prediction_types(self):
        return pa.list_(pa.float64()), pa.string()


@TASK_TYPES.register("multilabel")
class Multilabel(Bernoulli):
    r"""L logits, one :math:`\sigma` per label; a list column or "a|b|c"; "" or [] is a labelled row with no tag,
    null is no label. Macro- and micro-F1 with per-label validation thresholds."""

    name = "multilabel"
    per_label = True

    def n_outputs(self, classes):
        return len(classes)

    def tune_thresholds(self, val_probs, val_labels):
        return [best_threshold(val_labels[:, k].astype(int), val_probs[:, k]) for k in range(val_probs.shape[1])]

    def metrics(self, probs, labels, thresholds):
        out: dict = {"n": int(len(labels))}
        if not len(labels):
            return out | {"f1": float("nan")}
        y = labels.astype(int)
        pred = (probs >= np.asarray(thresholds)[None, :]).astype(int)
        varying = y.min(0) != y.max(0)
        def auc(fn) -> float:
            return safe_metric(fn, y[:, varying], probs[:, varying], average="macro") if varying.any() else float("nan")

        return out | {
            "f1": safe_metric(f1_score, y, pred, average="macro", zero_division=0),
            "f1_micro": safe_metric(f1_score, y, pred, average="micro", zero_division=0),
            "precision": safe_metric(precision_score, y, pred, average="macro", zero_division=0),
            "recall": safe_metric(recall_score, y, pred, average="macro", zero_division=0),
            "roc_auc": auc(roc_auc_score),
            "pr_auc": auc(average_precision_score),
            "ece": self.calibration_error(probs, y),
            "thresholds": list(map(float, thresholds)),
        }

    def parse_labels(self, raw, classes):
        sets: list[list[str] | None] = []
        for v in raw:
            if isinstance(v, (list, tuple, np.ndarray)):
                sets.append([class_name(x) for x in v])
            elif v is None or (isinstance(v, float) and math.isnan(v)) or type(v).__name__ == "NAType":
                sets.append(None)
            else:
                sets.append([s.strip() for s in str(v).split("|") if s.strip()])
        classes = list(classes) if classes else sorted({c for s in sets if s for c in s}, key=natural_order)
        index = {c: k for k, c in enumerate(classes)}
        bad = np.array([s is not None and any(c not in index for c in s) for s in sets], dtype=bool)
        y = np.zeros((len(raw), len(classes)), dtype=np.float32)
        for i, s in enumerate(sets):
            for c in s or []:
                if c in index:
                    y[i, index[c]] = 1.0
        missing = np.array([s is None for s in sets], dtype=bool)
        return y, ~missing & ~bad, classes, bad

    def decode(self, probs, threshold, classes):
        on = np.asarray(probs) >= np.asarray(threshold)[None, :]
        return [[c for c, flag in zip(classes, row) if flag] for row in on]

    def prediction_types(self):
        return pa.list_(pa.float64()), pa.list_(pa.string())

    def varies(self, train_labels):
        return len(train_labels) > 0 and bool((train_labels.min(0).values != train_labels.max(0).values).any())

    single_class_message = ": no label varies in train (single class)"


def task_type(kind: str | TaskType) -> TaskType:
    """The :class:`TaskType` for a registered name (instances pass through)."""
    if isinstance(kind, TaskType):
        return kind
    return TASK_TYPES.get(kind)()

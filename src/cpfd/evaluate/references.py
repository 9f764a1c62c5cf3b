"""Simple-model references for every comparison: scikit-learn logistic regression on the student's inputs and on
the student's + privileged inputs, scored exactly like the arms (validation-tuned thresholds, the same metrics).

Video and text become pooled embeddings (the mean of the frame vectors, the masked mean of the text tokens);
privileged missing values become the train mean plus a missing-indicator column (for columns missing on a train
row). The regularisation strength is
chosen per task on the validation split (log-loss), never on test. A teacher below its reference, or a baseline
student below its own, is a model that has not learnt what a linear model gets from the same inputs.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from cpfd.data.prepared import PreparedData
from cpfd.evaluate.evaluation import evaluate_logits

C_GRID = (0.01, 0.1, 1.0, 10.0)
REFERENCES = {
    "logreg_student": ("student", "logistic regression on the student inputs (pooled embeddings)"),
    "logreg_privileged": ("privileged", "logistic regression on the student + privileged inputs"),
}


# Rows per read: a teacher of kind logreg/auto reads a big table in pieces of this many rows, so memory follows the
# labelled rows it fits on, not the table.
CHUNK_ROWS = 65_536


def _row_chunks(data: PreparedData, rows: np.ndarray | None):
    rows = np.arange(len(data), dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
    for start in range(0, max(len(rows), 1), CHUNK_ROWS):
        yield torch.from_numpy(rows[start:start + CHUNK_ROWS])


def _pooled(inputs: dict[str, torch.Tensor]) -> np.ndarray:
    parts = []
    if "features" in inputs:
        parts.append(inputs["features"].numpy())
    if "frames" in inputs:
        mask = inputs["frames_mask"].float().unsqueeze(-1)
        parts.append(((inputs["frames"] * mask).sum(1) / mask.sum(1).clamp(min=1)).numpy())
    if "text" in inputs:
        mask = inputs["text_mask"].float().unsqueeze(-1)
        parts.append(((inputs["text"] * mask).sum(1) / mask.sum(1).clamp(min=1)).numpy())
    return np.concatenate(parts, axis=1).astype(np.float64)


def has_student_vectors(data: PreparedData) -> bool:
    """Whether the student's inputs are precomputed vectors a linear model can read (not end-to-end pixels or
    token ids)."""
    return "pixels" not in data.student_inputs and "text_ids" not in data.student_inputs


def student_matrix(data: PreparedData, rows: np.ndarray | None = None) -> np.ndarray | None:
    """Student inputs of ``rows`` (default: every row) as one vector each; None in end-to-end mode (no embeddings
    to pool)."""
    if not has_student_vectors(data):
        return None
    return np.concatenate([_pooled(data.student_rows(chunk)) for chunk in _row_chunks(data, rows)])


def privileged_fill(data: PreparedData, train: np.ndarray) -> dict:
    """How missing privileged values are filled: the train mean of each column (0 when a column is missing on every
    train row), and the columns that get a missing-indicator (those missing on some train row)."""
    width = data.privileged.shape[1]
    total, count, missing = np.zeros(width), np.zeros(width), np.zeros(width, dtype=bool)
    for chunk in _row_chunks(data, train):
        values = data.privileged_rows(chunk).numpy().astype(np.float64)
        nan = np.isnan(values)
        total += np.where(nan, 0.0, values).sum(axis=0)
        count += (~nan).sum(axis=0)
        missing |= nan.any(axis=0)
    fill = np.divide(total, count, out=np.zeros(width), where=count > 0)
    return {"fill": fill.tolist(), "indicators": np.flatnonzero(missing).tolist()}


def privileged_matrix(data: PreparedData, fill: dict, rows: np.ndarray | None = None) -> np.ndarray:
    """The privileged columns of ``rows`` (default: every row) with missing values filled as ``fill``
    (:func:`privileged_fill`) says, plus the indicator columns."""
    parts = []
    for chunk in _row_chunks(data, rows):
        values = data.privileged_rows(chunk).numpy().astype(np.float64)
        missing = np.isnan(values)
        filled = np.where(missing, np.asarray(fill["fill"]), values)
        parts.append(np.concatenate([filled, missing[:, fill["indicators"]].astype(np.float64)], axis=1))
    return np.concatenate(parts)


def best_binary(x: np.ndarray, y: np.ndarray, train: np.ndarray, val: np.ndarray) -> LogisticRegression | float:
    """The logistic regression with the lowest validation log-loss over ``C_GRID``; with one class in train, the
    constant log-odds of the train labels instead."""
    if len(np.unique(y[train])) < 2:
        p = float(np.clip(y[train].mean() if len(train) else 0.5, 1e-6, 1 - 1e-6))
        return float(np.log(p / (1 - p)))
    best, best_loss = None, np.inf
    for c in C_GRID:
        model = LogisticRegression(C=c, max_iter=2000)
        model.fit(x[train], y[train])
        z = model.decision_function(x[val])
        loss = float(np.mean(np.logaddexp(0, z) - y[val] * z)) if len(val) else 0.0
        if loss < best_loss:
            best, best_loss = model, loss
    return best


def best_multiclass(x: np.ndarray, y: np.ndarray, train: np.ndarray, val: np.ndarray) -> LogisticRegression:
    """The multinomial logistic regression with the lowest validation log-loss over ``C_GRID``."""
    best, best_loss = None, np.inf
    for c in C_GRID:
        model = LogisticRegression(C=c, max_iter=2000)
        model.fit(x[train], y[train])
        logp = model.predict_log_proba(x[val])
        cols = {k: j for j, k in enumerate(model.classes_)}
        loss = -float(np.mean([logp[i, cols[k]] if k in cols else -30.0 for i, k in enumerate(y[val])])) if len(val) else 0
        if loss < best_loss:
            best, best_loss = model, loss
    return best


def _fit_binary(x: np.ndarray, y: np.ndarray, train: np.ndarray, val: np.ndarray) -> np.ndarray:
    """Decision values for every row from the C with the lowest validation log-loss."""
    model = best_binary(x, y, train, val)
    return np.full(len(x), model) if isinstance(model, float) else model.decision_function(x)


def _fit_multiclass(x: np.ndarray, y: np.ndarray, n_classes: int, train: np.ndarray, val: np.ndarray) -> np.ndarray:
    best = best_multiclass(x, y, train, val)
    out = np.full((len(x), n_classes), -30.0)
    out[:, best.classes_] = best.predict_log_proba(x)
    return out


def reference_logits(data: PreparedData, x: np.ndarray) -> dict[str, torch.Tensor]:
    """Per task, logits for every row from logistic regressions fitted on labelled train rows."""
    logits = {}
    for task in data.tasks:
        mask = data.label_mask[task.name].numpy()
        train = np.flatnonzero((data.split == "train") & mask)
        val = np.flatnonzero((data.split == "val") & mask)
        scaler = StandardScaler().fit(x[train])
        z = scaler.transform(x)
        y = data.labels[task.name].numpy()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            if task.kind.per_label:
                out = np.stack([_fit_binary(z, y[:, k], train, val) for k in range(y.shape[1])], axis=1)
            elif task.n_outputs == 1:
                out = _fit_binary(z, y, train, val)[:, None]
            else:
                out = _fit_multiclass(z, y.astype(int), task.n_outputs, train, val)
        logits[task.name] = torch.from_numpy(out.astype(np.float32))
    return logits


def reference_metrics(data: PreparedData) -> dict[str, dict]:
    """``{name: {"test": ..., "val": ..., "description": ...}}`` for the references that apply to ``data``."""
    student = student_matrix(data)
    if student is None:
        return {}
    train = data.indices("train")
    privileged = privileged_matrix(data, privileged_fill(data, train))
    inputs = {"student": student, "privileged": np.concatenate([student, privileged], axis=1)}
    out = {}
    for name, (which, description) in REFERENCES.items():
        if which == "privileged" and not data.privileged_names:
            continue
        logits = reference_logits(data, inputs[which])
        out[name] = {"test": evaluate_logits(data, logits), "val": evaluate_logits(data, logits, "val"),
                     "description": description}
    return out

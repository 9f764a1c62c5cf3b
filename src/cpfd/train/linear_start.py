"""Start a wide & deep model at its logistic regression (``model.wide_init: logreg``).

The wide path of a student (or teacher) is set to the validation-tuned logistic regression on the very inputs that
path reads, and the deep heads start at zero, so the untrained model predicts exactly what that regression
predicts; the training loop scores this starting point as a checkpoint, so early stopping can only keep a model
whose validation loss is at least as good. The deep part then learns the residual, as in boosting from a linear
base model (Friedman, "Greedy function approximation", 2001; the zero-initialised residual branch of Goyal et al.,
2017). On a few hundred labelled rows a network trained from a random start often ends below the linear model on
its own inputs; this removes that failure by construction.

The regularisation strength comes from the same grid and the same rule as the simple-model references in every
``compare`` (:mod:`cpfd.evaluate.references`): the lowest log-loss on labelled validation rows.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.preprocessing import StandardScaler
from torch import nn

from cpfd.data.prepared import PreparedData
from cpfd.errors import UsageError
from cpfd.evaluate.references import best_binary, best_multiclass
from cpfd.models.student import Student
from cpfd.models.teacher import Teacher
from cpfd.train.batches import RowDataset

MAX_ROWS = 50_000  # labelled rows the regressions are fitted on at most (a seeded sample beyond)
MISSING_CLASS_LOGIT = -10.0  # a class no train row has: a low logit the deep part can still move
BATCH = 4096


@torch.no_grad()
def wide_inputs(model: nn.Module, data: PreparedData, rows: np.ndarray) -> np.ndarray:
    """What ``model``'s wide path reads for ``rows`` (eval mode: no privileged-group dropout), as float64."""
    takes_privileged = isinstance(model, Teacher) and model.tower is not None
    dataset = RowDataset(data, rows, with_privileged=takes_privileged)
    was_training = model.training
    model.eval()
    parts = []
    for start in range(0, len(rows), BATCH):
        batch = dataset.__getitems__(list(range(start, min(start + BATCH, len(rows)))))
        x = model.trunk.linear_inputs(**batch["student"])  # model.wide is required, so the path reads these
        if takes_privileged:
            x = model.wide_inputs(model.tower.standardise(batch["privileged"]), x)
        parts.append(x.double().numpy())
    model.train(was_training)
    data.release_memory()
    return np.concatenate(parts) if parts else np.zeros((0, 0))


def _linear_layer(x: np.ndarray, y: np.ndarray, n_outputs: int, per_label: bool, train: np.ndarray,
                  val: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(weight (n_outputs, d), bias (n_outputs,)) of the regression, on the unscaled inputs ``x``."""
    scaler = StandardScaler().fit(x[train])
    z = scaler.transform(x)
    weight = np.zeros((n_outputs, x.shape[1]))
    bias = np.zeros(n_outputs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        if per_label or n_outputs == 1:
            columns = y.reshape(len(y), -1)
            for k in range(columns.shape[1]):
                fitted = best_binary(z, columns[:, k], train, val)
                if isinstance(fitted, float):
                    bias[k] = fitted
                else:
                    weight[k], bias[k] = fitted.coef_[0], fitted.intercept_[0]
        else:
            bias[:] = MISSING_CLASS_LOGIT
            present = np.unique(y[train]).astype(int)
            if len(present) < 2:  # one class in train: nothing to regress, that class gets the highest logit
                bias[present] = 0.0
                return weight, bias
            fitted = best_multiclass(z, y.astype(int), train, val)
            if len(fitted.classes_) == 2:  # scikit-learn keeps one row for two classes: split it symmetrically
                coef = np.stack([-fitted.coef_[0], fitted.coef_[0]]) / 2
                intercept = np.array([-fitted.intercept_[0], fitted.intercept_[0]]) / 2
            else:
                coef, intercept = fitted.coef_, fitted.intercept_
            weight[fitted.classes_], bias[fitted.classes_] = coef, intercept
    # The regression saw (x - mean) / scale; fold the standardisation into the layer.
    weight = weight / scaler.scale_
    bias = bias - weight @ scaler.mean_
    return weight, bias


def start_from_logistic_regression(model: nn.Module, data: PreparedData, rows: np.ndarray,
                                   val_within: np.ndarray | None = None, seed: int = 0) -> dict[str, int]:
    """Set ``model``'s wide path to the logistic regression fitted on the labelled rows among ``rows`` (C chosen on
    labelled validation rows, within ``val_within`` when given) and zero its deep heads. Returns each task's
    number of labelled train rows the regression was fitted on, for the log."""
    if not isinstance(model, (Student, Teacher)):
        raise UsageError("model.wide_init=logreg needs cached embeddings (not extract.end_to_end)")
    if model.wide is None:
        raise UsageError("model.wide_init=logreg needs a wide path (model.wide=true)")
    val_rows = data.indices("val", labelled_only=True)
    if val_within is not None:
        val_rows = val_rows[val_within[val_rows]]
    fit_rows = np.intersect1d(rows, data.indices("train", labelled_only=True))
    if len(fit_rows) > MAX_ROWS:
        fit_rows = np.sort(np.random.default_rng(seed).choice(fit_rows, MAX_ROWS, replace=False))
    all_rows = np.concatenate([fit_rows, val_rows])
    x = wide_inputs(model, data, all_rows)
    counts = {}
    for task in data.tasks:
        labelled = data.label_mask[task.name].numpy()[all_rows]
        train = np.flatnonzero(labelled[: len(fit_rows)])
        val = len(fit_rows) + np.flatnonzero(labelled[len(fit_rows):])
        y = data.labels[task.name].numpy()[all_rows].astype(np.float64)
        weight, bias = _linear_layer(x, y, task.n_outputs, task.kind.per_label, train, val)
        head = model.wide.heads[task.name]
        with torch.no_grad():
            head.weight.copy_(torch.from_numpy(weight))
            head.bias.copy_(torch.from_numpy(bias))
            for heads in (model.heads, getattr(model, "aux_heads", None)):
                if heads is not None:
                    heads.heads[task.name].weight.zero_()
                    heads.heads[task.name].bias.zero_()
        counts[task.name] = len(train)
    return counts

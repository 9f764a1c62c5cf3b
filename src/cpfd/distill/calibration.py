"""Temperature scaling of the teacher on the validation split, before its confidence is trusted.

Reference: Guo, Pleiss, Sun & Weinberger, *On Calibration of Modern Neural Networks*, ICML 2017.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from cpfd.task_types import TaskType
from cpfd.task_types import task_type as as_task_type


def fit_temperature(logits: Tensor, labels: Tensor, task_type: str | TaskType, max_iter: int = 200) -> float:
    r"""Temperature :math:`T^* = \arg\min_T \frac{1}{n}\sum_i \mathrm{CE}(y_i, z_i / T)` over labelled val rows.

    Optimised in :math:`\log T` with L-BFGS, so T stays positive. Returns 1.0 when there is nothing to fit: no
    rows, or every row's true class already the teacher's decision. Then the likelihood keeps rising as
    :math:`T \to 0` and has no maximum; L-BFGS would stop at an arbitrary sharpening (T = 0.04 on a 30-row slice
    of breast cancer), which the rows cannot support.
    """
    if logits.shape[0] == 0:
        return 1.0
    kind = as_task_type(task_type)
    logits = logits.detach().double()
    if bool(kind.correct(kind.probs(logits), labels).all()):
        return 1.0
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = kind.hard_loss(logits / log_t.exp(), labels).mean()
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.detach().exp())
    return t if math.isfinite(t) else 1.0


def temperature_nll(logits: Tensor, labels: Tensor, task_type: str | TaskType, temperature: float) -> float:
    """Mean negative log-likelihood of ``labels`` under ``logits / temperature``."""
    if logits.shape[0] == 0:
        return 0.0
    with torch.no_grad():
        return float(as_task_type(task_type).hard_loss(logits.double() / temperature, labels).mean())


# A few dozen rows give noise: T from 0.04 to 3 over seeds on breast cancer's 28-30-row slices.
MIN_CALIBRATION_ROWS = 30


def choose_temperature(logits: Tensor, labels: Tensor, task_type: str | TaskType, folds: np.ndarray,
                       min_rows: int = MIN_CALIBRATION_ROWS) -> dict:
    r"""Temperature scaling that is kept only if it helps on data it was not fitted on.

    With the calibration rows split into two folds, :math:`T_k` is fitted on fold :math:`1-k` and scored on fold
    :math:`k`. The temperature is kept only if, over the held-out folds, it lowers *both* the NLL and the expected
    calibration error (ECE, 15 bins) of the uncalibrated teacher (:math:`T = 1`); it is then refitted on all
    calibration rows. NLL alone is not enough: a few confidently wrong rows dominate it, so a softening that pays
    for them can still move the bulk of the rows away from their frequencies (ECE up on test) — the second test
    asks the held-out rows whether that happened. With fewer than ``min_rows`` calibration rows no temperature is
    kept (the floor of :func:`scenario_temperatures` too): each fold would hold a dozen rows.
    """
    kind = as_task_type(task_type)
    base = temperature_nll(logits, labels, kind, 1.0)
    crossed, n = 0.0, max(len(folds), 1)
    uncalibrated = kind.probs(logits.detach().double())
    held_probs = torch.zeros_like(uncalibrated)
    for k in (0, 1):
        held, fit = torch.from_numpy(folds == k), torch.from_numpy(folds != k)
        t = fit_temperature(logits[fit], labels[fit], kind)
        crossed += temperature_nll(logits[held], labels[held], kind, t) * int(held.sum())
        held_probs[held] = kind.probs(logits[held].detach().double(), t)
    crossed /= n
    ece_before = ece_after = 0.0
    if len(folds):
        ece_before = kind.calibration_error(uncalibrated.numpy(), labels.numpy())
        ece_after = kind.calibration_error(held_probs.numpy(), labels.numpy())
    fitted = fit_temperature(logits, labels, kind)
    # fitted == 1.0: nothing was fitted (see fit_temperature); the two NLLs then differ by rounding only.
    kept = bool(len(folds) >= max(2, min_rows) and fitted != 1.0 and crossed < base and ece_after < ece_before)
    return {"temperature": fitted if kept else 1.0, "fitted": fitted, "kept": kept,
            "heldout_nll_before": base, "heldout_nll_after": crossed,
            "heldout_ece_before": ece_before, "heldout_ece_after": ece_after}


def scenario_temperatures(logits: Tensor, labels: Tensor, label_mask: Tensor, split: np.ndarray,
                          groups: np.ndarray | None, task_type: str | TaskType, min_rows: int = MIN_CALIBRATION_ROWS,
                          within: np.ndarray | None = None) -> Tensor:
    r"""One temperature per business scenario, returned per row: :math:`T_{g(i)}`.

    :math:`T_g = \arg\min_T \sum_{i \in V_g} \mathrm{CE}(y_i, z_i / T)` over the labelled validation rows
    :math:`V_g` of scenario g (:func:`fit_temperature`); scenarios with fewer than ``min_rows`` such rows, and
    datasets without scenarios, use the temperature fitted on all of them (T = 1 when those are fewer than
    ``min_rows`` too). ``within`` (a row mask) keeps only the
    validation rows the teacher was not selected on (its calibration slice): on the rows early stopping chose it
    by, the teacher looks better than it is and the temperatures come out too low. Where a scenario's privileged
    features went stale the teacher is confidently wrong there and :math:`T_g` grows, flattening its targets
    there only. Reference: Guo et al., ICML 2017 (temperature scaling), applied per scenario as in
    docs/method.md ("When can confidence weighting beat uniform PFD?").
    """
    val = np.asarray(split == "val") & label_mask.numpy().astype(bool)
    if within is not None:
        val &= within
    # Fewer than min_rows rows in all: a temperature fitted on them is noise (0.04 to 3 across seeds on a
    # 28-row slice), so the targets stay as they are.
    global_t = (fit_temperature(logits[torch.from_numpy(val)], labels[torch.from_numpy(val)], task_type)
                if val.sum() >= min_rows else 1.0)
    per_row = torch.full((logits.shape[0],), global_t, dtype=torch.float32)
    if groups is not None:
        groups = np.asarray(groups)
        for g in np.unique(groups):
            rows = val & (groups == g)
            if rows.sum() >= min_rows:
                per_row[torch.from_numpy(groups == g)] = fit_temperature(
                    logits[torch.from_numpy(rows)], labels[torch.from_numpy(rows)], task_type)
    return per_row

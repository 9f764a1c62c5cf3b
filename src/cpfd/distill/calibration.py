"""Temperature scaling of the teacher on the validation split, before its confidence is trusted.

Reference: Guo, Pleiss, Sun & Weinberger, *On Calibration of Modern Neural Networks*, ICML 2017.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from cpfd.task_types import TaskType, task_type as as_task_type


def fit_temperature(logits: Tensor, labels: Tensor, task_type: str | TaskType, max_iter: int = 200) -> float:
    r"""Temperature :math:`T^* = \arg\min_T \frac{1}{n}\sum_i \mathrm{CE}(y_i, z_i / T)` over labelled val rows.

    Optimised in :math:`\log T` with L-BFGS, so T stays positive; returns 1.0 when there is nothing to fit.
    """
    if logits.shape[0] == 0:
        return 1.0
    kind = as_task_type(task_type)
    logits = logits.detach().double()
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

"""Logits -> probabilities per task type (binary: sigmoid of one logit; multiclass: softmax; multilabel: sigmoids)."""

from __future__ import annotations

import torch
from torch import Tensor


def task_probs(logits: Tensor, task_type: str, temperature: float | Tensor = 1.0) -> Tensor:
    """binary -> (B,) probability of class 1; multiclass -> (B, C); multilabel -> (B, L)."""
    z = logits / temperature
    if task_type == "binary":
        return torch.sigmoid(z.reshape(-1))
    if task_type == "multiclass":
        return torch.softmax(z, dim=-1)
    return torch.sigmoid(z)

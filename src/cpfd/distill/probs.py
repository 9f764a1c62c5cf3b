"""Logits -> probabilities per task type (binary: sigmoid of one logit; multiclass: softmax; multilabel: sigmoids)."""

from __future__ import annotations

from torch import Tensor

from cpfd.task_types import TaskType, task_type as as_task_type


def task_probs(logits: Tensor, task_type: str | TaskType, temperature: float | Tensor = 1.0) -> Tensor:
    """binary -> (B,) probability of class 1; multiclass -> (B, C); multilabel -> (B, L)."""
    return as_task_type(task_type).probs(logits, temperature)

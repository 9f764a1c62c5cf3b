"""Teacher-confidence functions c_i for CPFD, in a registry selectable by name (``distill.confidence``).

Each takes the (calibrated) teacher probabilities from :func:`cpfd.distill.probs.task_probs`, the labels, the
label mask and the task type (a name or :class:`~cpfd.task_types.TaskType`), and returns c in [0, 1]: shape (B,)
for binary/multiclass, (B, L) for multilabel (one per label). Confidence on a row without a label must be
label-free, so label-based functions fall back to ``max_prob``. Adding one::

    from cpfd.registry import CONFIDENCES

    @CONFIDENCES.register("my_conf")
    def my_conf(probs, labels, label_mask, task_type): ...
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from cpfd.registry import CONFIDENCES
from cpfd.task_types import task_type as as_task_type

__all__ = ["CONFIDENCES", "max_prob", "true_class", "entropy", "margin"]
_EPS = 1e-12


@CONFIDENCES.register("max_prob")
def max_prob(probs: Tensor, labels: Tensor, label_mask: Tensor, task_type) -> Tensor:
    r"""Label-free: :math:`c_i = \max_k p^t_{ik}` (binary: :math:`\max(q, 1-q)`).

    Reference: Hendrycks & Gimpel, *A Baseline for Detecting Misclassified and Out-of-Distribution Examples*,
    ICLR 2017 (maximum softmax probability).
    """
    return as_task_type(task_type).two_class(probs).max(dim=-1).values


@CONFIDENCES.register("true_class")
def true_class(probs: Tensor, labels: Tensor, label_mask: Tensor, task_type) -> Tensor:
    r"""Teacher probability of the ground-truth class: :math:`c_i = p^t_{i, y_i}`.

    Binary: :math:`q` if :math:`y=1` else :math:`1-q`; multilabel: per label. Rows without a label fall back to
    :func:`max_prob`. Reference: Shi et al., *CPFD*, CIKM 2024 (confidence-weighted distillation; the choice of
    the true-class probability is ours, see docs/method.md).
    """
    kind = as_task_type(task_type)
    fallback = max_prob(probs, labels, label_mask, kind)
    c = kind.true_class_prob(probs, labels)
    return torch.where(kind.element_mask(label_mask, c), c, fallback)


@CONFIDENCES.register("entropy")
def entropy(probs: Tensor, labels: Tensor, label_mask: Tensor, task_type) -> Tensor:
    r"""Label-free: :math:`c_i = 1 - H(p^t_i) / \log C` (binary and per-label: C = 2).

    Reference: Shannon entropy as predictive uncertainty, e.g. Gal, *Uncertainty in Deep Learning*, 2016.
    """
    p = as_task_type(task_type).two_class(probs)
    h = -(p * (p + _EPS).log()).sum(-1)
    return (1 - h / math.log(p.shape[-1])).clamp(0.0, 1.0)


@CONFIDENCES.register("margin")
def margin(probs: Tensor, labels: Tensor, label_mask: Tensor, task_type) -> Tensor:
    r"""Label-free: top-1 minus top-2 probability, :math:`c_i = p_{(1)} - p_{(2)}` (binary: :math:`|2q-1|`).

    Reference: Scheffer et al., *Active Hidden Markov Models for Information Extraction*, IDA 2001 (margin).
    """
    top2 = as_task_type(task_type).two_class(probs).topk(2, dim=-1).values
    return top2[..., 0] - top2[..., 1]

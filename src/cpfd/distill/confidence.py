"""Teacher-confidence functions c_i for CPFD, in a registry selectable by name (``distill.confidence``).

Each takes the (calibrated) teacher probabilities from :func:`cpfd.distill.probs.task_probs`, the labels and the
label mask, and returns c in [0, 1]: shape (B,) for binary/multiclass, (B, L) for multilabel (one per label).
Confidence on a row without a label must be label-free, so label-based functions fall back to ``max_prob``.
Adding one::

    @CONFIDENCES.register("my_conf")
    def my_conf(probs, labels, label_mask, task_type): ...
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from cpfd.registry import Registry

CONFIDENCES: Registry = Registry("confidence function")
_EPS = 1e-12


def _as_two_class(probs: Tensor, task_type: str) -> Tensor:
    """binary (B,) / multilabel (B, L) -> (..., 2) Bernoulli distributions; multiclass unchanged."""
    if task_type == "multiclass":
        return probs
    return torch.stack([1 - probs, probs], dim=-1)


@CONFIDENCES.register("max_prob")
def max_prob(probs: Tensor, labels: Tensor, label_mask: Tensor, task_type: str) -> Tensor:
    r"""Label-free: :math:`c_i = \max_k p^t_{ik}` (binary: :math:`\max(q, 1-q)`).

    Reference: Hendrycks & Gimpel, *A Baseline for Detecting Misclassified and Out-of-Distribution Examples*,
    ICLR 2017 (maximum softmax probability).
    """
    return _as_two_class(probs, task_type).max(dim=-1).values


@CONFIDENCES.register("true_class")
def true_class(probs: Tensor, labels: Tensor, label_mask: Tensor, task_type: str) -> Tensor:
    r"""Teacher probability of the ground-truth class: :math:`c_i = p^t_{i, y_i}`.

    Binary: :math:`q` if :math:`y=1` else :math:`1-q`; multilabel: per label. Rows without a label fall back to
    :func:`max_prob`. Reference: Shi et al., *CPFD*, CIKM 2024 (confidence-weighted distillation; the choice of
    the true-class probability is ours, see docs/method.md).
    """
    fallback = max_prob(probs, labels, label_mask, task_type)
    if task_type == "multiclass":
        idx = labels.clamp(min=0).long().unsqueeze(-1)
        c = probs.gather(-1, idx).squeeze(-1)
        return torch.where(label_mask, c, fallback)
    y = labels.float()
    c = y * probs + (1 - y) * (1 - probs)
    mask = label_mask if task_type == "binary" else label_mask.unsqueeze(-1).expand_as(c)
    return torch.where(mask, c, fallback)


@CONFIDENCES.register("entropy")
def entropy(probs: Tensor, labels: Tensor, label_mask: Tensor, task_type: str) -> Tensor:
    r"""Label-free: :math:`c_i = 1 - H(p^t_i) / \log C` (binary and per-label: C = 2).

    Reference: Shannon entropy as predictive uncertainty, e.g. Gal, *Uncertainty in Deep Learning*, 2016.
    """
    p = _as_two_class(probs, task_type)
    h = -(p * (p + _EPS).log()).sum(-1)
    return (1 - h / math.log(p.shape[-1])).clamp(0.0, 1.0)


@CONFIDENCES.register("margin")
def margin(probs: Tensor, labels: Tensor, label_mask: Tensor, task_type: str) -> Tensor:
    r"""Label-free: top-1 minus top-2 probability, :math:`c_i = p_{(1)} - p_{(2)}` (binary: :math:`|2q-1|`).

    Reference: Scheffer et al., *Active Hidden Markov Models for Information Extraction*, IDA 2001 (margin).
    """
    top2 = _as_two_class(probs, task_type).topk(2, dim=-1).values
    return top2[..., 0] - top2[..., 1]

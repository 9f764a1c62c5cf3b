"""Teacher-confidence functions c_i for CPFD, in a registry selectable by name (``distill.confidence``).

Each takes the (calibrated) teacher probabilities from :func:`cpfd.distill.probs.task_probs`, the labels, the
label mask and the task type (a name or :class:`~cpfd.task_types.TaskType`), and returns c in [0, 1]: shape (B,)
for binary/multiclass, (B, L) for multilabel (one per label). Confidence on a row without a label must be
label-free, so label-based functions fall back to ``max_prob``. Adding one::

    from cpfd.registry import CONFIDENCES

    @CONFIDENCES.register("my_conf")
    def my_conf(probs, labels, label_mask, task_type): ...

A function that declares a ``context`` parameter also receives a :class:`~cpfd.distill.context.TaskContext`
(split, business scenario, a no-privileged reference model's probabilities; hidden labels for the oracle control
only) and is called once on every row of the dataset. Its ``needs`` attribute says which of ``"reference"`` and
``"oracle"`` it requires; the scenario-aware functions below are built that way (see docs/method.md, "When can
confidence weighting beat uniform PFD?").
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import torch
from torch import Tensor

from cpfd.distill.calibration import fit_temperature
from cpfd.distill.context import TaskContext
from cpfd.registry import CONFIDENCES
from cpfd.task_types import task_type as as_task_type

__all__ = ["CONFIDENCES", "max_prob", "true_class", "entropy", "margin", "scenario_reliability",
           "agreement_reliability", "reference_agreement", "oracle_gate", "fold_variance"]
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


def _columns(x: Tensor) -> Tensor:
    """(n,) -> (n, 1); (n, L) stays: scenario statistics are computed per label column."""
    return x.reshape(x.shape[0], -1)


def _log_gain(kind, probs: Tensor, reference_probs: Tensor, labels: Tensor) -> Tensor:
    r"""Per row (and label) :math:`\log p^t_{i,y_i} - \log p^{ref}_{i,y_i}`, float64, shaped (n, 1) or (n, L)."""
    return _columns((kind.true_class_prob(probs, labels).clamp_min(_EPS).log()
                     - kind.true_class_prob(reference_probs, labels).clamp_min(_EPS).log()).double())


def _calibrated_log_gain(kind, probs: Tensor, reference_probs: Tensor, labels: Tensor, rows: Tensor) -> Tensor:
    r""":func:`_log_gain` on ``rows`` after each model's own temperature fitted on those rows
    (:func:`cpfd.distill.calibration.fit_temperature`: one per model, shared across labels for multilabel), so a
    teacher that is only over- or under-confident there is not counted as less reliable than the reference."""
    def tempered(p: Tensor) -> Tensor:
        logits = kind.logits_from_probs(p[rows].double(), p[rows])
        return kind.probs(logits, fit_temperature(logits, labels[rows], kind))

    return _log_gain(kind, tempered(probs), tempered(reference_probs), labels[rows])


@CONFIDENCES.register("scenario_reliability")
def scenario_reliability(probs: Tensor, labels: Tensor, label_mask: Tensor, task_type, context: TaskContext) -> Tensor:
    r"""Per-scenario reliability of the teacher relative to a no-privileged reference, one weight per scenario.

    On the labelled validation rows of scenario g, with :math:`x_i = \log p^t_{i,y_i} - \log p^{ref}_{i,y_i}` the
    teacher's log-likelihood gain over the reference, :math:`\bar x_g` its mean over the :math:`n_g` rows and
    :math:`s_g` their standard deviation, :math:`c_g = \min\bigl(1, \exp(k(\bar x_g + z\, s_g/\sqrt{n_g}))\bigr)`
    with :math:`z` = ``context.shortfall_se`` (``distill.reliability_se``, 2 by default) and :math:`k` =
    ``context.shortfall_power`` (``distill.reliability_sharpness``, 3 by default): 1 where the teacher is
    at least as good as the reference (its privileged features help or are neutral) or trails it within noise,
    the likelihood ratio's upper confidence bound (to the power k) where it is worse beyond noise (stale or
    misleading privileged features); k → ∞ is a gate that drops those scenarios. Where no scenario is unreliable
    beyond noise every weight is 1, so the recipe *is* PFD on an in-distribution teacher instead of re-weighting
    scenarios by noise. With ``context.scenario_calibrated`` (``distill.reliability_calibration: scenario``, the
    default) :math:`x_i` compares the two models after each one's own temperature fitted on those rows
    (:func:`_calibrated_log_gain`), so over- or under-confidence alone (a scenario without privileged features)
    costs no weight, only a loss of discrimination does. Scenarios with fewer than ``context.min_group_rows``
    validation rows use the same formula over all validation rows; without a ``group`` column every weight is 1
    (PFD) and no reference is needed. The weights are then divided by their mean over train rows, so the
    average distillation strength stays λ (:math:`\lambda_g = \lambda\, c_g / \bar c`); unlike the other
    confidences, values can exceed 1.
    Weighting by scenario re-weights scenarios against each other and leaves the optimum inside each untouched.
    References: Lukasik et al., *Teacher's pet: understanding and mitigating biases in distillation*, TMLR 2022;
    Iliopoulos et al., *Weighted distillation with unlabeled examples*, NeurIPS 2022.
    """
    kind = as_task_type(task_type)
    if context.groups is None:  # one scenario: a constant weight, which the normalisation makes 1 (= PFD)
        return torch.ones(kind.true_class_prob(probs, labels).shape)
    if context.reference_probs is None:
        raise ValueError("scenario_reliability needs a no-privileged reference model (context.reference_probs)")
    val = torch.from_numpy(np.asarray(context.split == "val")) & label_mask.bool()
    if context.scenario_calibrated:
        gain_on = partial(_calibrated_log_gain, kind, probs, context.reference_probs, labels)
    else:
        plain = _log_gain(kind, probs, context.reference_probs, labels)
        gain_on = lambda rows: plain[rows]

    width = _columns(kind.true_class_prob(probs[:1], labels[:1])).shape[1]  # 1, or L labels

    def reliability(rows: Tensor) -> Tensor:
        if not bool(rows.any()):
            return torch.ones(width, dtype=torch.float64)
        gain = gain_on(rows)
        n = gain.shape[0]
        upper = gain.mean(0) + context.shortfall_se * (gain.var(0, correction=1) / n).nan_to_num(0.0).sqrt()
        return (context.shortfall_power * upper).exp().clamp(max=1.0)

    c = reliability(val).expand(len(val), width).clone()
    groups = np.asarray(context.groups)
    for g in np.unique(groups):
        in_g = torch.from_numpy(groups == g)
        if int((val & in_g).sum()) >= context.min_group_rows:
            c[in_g] = reliability(val & in_g)
    train = torch.from_numpy(np.asarray(context.split == "train"))
    c = c / c[train].mean(0).clamp_min(_EPS)
    return c.float() if kind.per_label else c.float().squeeze(-1)


scenario_reliability.needs = ("reference",)
scenario_reliability.reference_needs_groups = True  # without scenarios it is PFD and reads no reference
scenario_reliability.mean_one_over_train = True  # a relative weight, not a probability


def _shrunk_cell_gains(gain: np.ndarray, scenario: np.ndarray, cell: np.ndarray, prior: np.ndarray) -> np.ndarray:
    r"""Empirical-Bayes cell means (Morris, JASA 1983): :math:`\hat g_c = M_g + B_c (m_c - M_g)`.

    ``gain``, ``scenario``, ``cell``: the labelled validation rows; ``prior``: :math:`M_g` per row (the scenario's
    estimate). :math:`B_c = \tau^2 / (\tau^2 + s^2 / n_c)` with :math:`s^2` the pooled within-cell variance and
    :math:`\tau^2 = \max\bigl(0, (\sum_c n_c (m_c - \bar m_g)^2 - (K - G) s^2) / (N - \sum_g \sum_{c \in g}
    n_c^2 / N_g)\bigr)` the between-cell variance inside scenarios (the nested one-way ANOVA estimator). Returns
    :math:`\hat g_c` per row.
    """
    cells = np.unique(cell)
    index = np.searchsorted(cells, cell)
    n = np.bincount(index).astype(float)
    m = np.bincount(index, weights=gain) / n
    scenario_of = np.array([scenario[index == k][0] for k in range(len(cells))])
    groups = np.unique(scenario_of)
    n_g = np.array([n[scenario_of == g].sum() for g in groups])
    mean_g = np.array([gain[scenario == g].mean() for g in groups])[np.searchsorted(groups, scenario_of)]
    big_n, k, g = n.sum(), len(cells), len(groups)
    s2 = float(((gain - m[index]) ** 2).sum() / (big_n - k)) if big_n > k else 0.0
    denominator = big_n - sum((n[scenario_of == h] ** 2).sum() / n_h for h, n_h in zip(groups, n_g))
    between = float((n * (m - mean_g) ** 2).sum())
    tau2 = max(0.0, (between - (k - g) * s2) / denominator) if denominator > 0 else 0.0
    b = np.where(tau2 > 0, tau2 / (tau2 + s2 / n), 0.0) if s2 > 0 else np.ones_like(n) * (tau2 > 0)
    return prior + b[index] * (m[index] - prior)


@CONFIDENCES.register("agreement_reliability")
def agreement_reliability(probs: Tensor, labels: Tensor, label_mask: Tensor, task_type,
                          context: TaskContext) -> Tensor:
    r""":func:`scenario_reliability` refined inside each scenario by whether the teacher and the no-privileged
    reference agree: cells :math:`(g, a)` with :math:`a_i = \mathbb{1}[\arg\max p^t_i = \arg\max p^{ref}_i]`
    (binary and per label: the same side of 1/2), label-free on every row.

    With :math:`x_i = \log p^t_{i,y_i} - \log p^{ref}_{i,y_i}` on the labelled validation rows, :math:`M_g` the
    scenario's mean gain (the global one for scenarios under ``context.min_group_rows`` rows, as in
    :func:`scenario_reliability`) and :math:`m_c` the mean over :math:`n_c` rows of cell c, the cell's gain is shrunk
    toward its scenario by empirical Bayes, :math:`\hat g_c = M_g + B_c (m_c - M_g)`,
    :math:`B_c = \tau^2/(\tau^2 + s^2/n_c)` (:func:`_shrunk_cell_gains`), and
    :math:`c_i = \min(1, \exp \hat g_{c(i)})`, divided by its mean over train rows (:math:`\lambda_c = \lambda
    c_c / \bar c`). Where stale privileged features make the teacher disagree with what the online inputs support,
    the disagreeing rows of that scenario lose weight and the agreeing ones keep it. For a calibrated
    in-distribution teacher every cell's expected gain is a KL divergence, :math:`\ge 0`, so every weight is 1 (PFD)
    in expectation; without a ``group`` column it is PFD, as :func:`scenario_reliability`. References: Lukasik et
    al., *Teacher's pet*, TMLR 2022 (per-group distillation weights); Ortiz-Jimenez et al., ICML 2023 (agreement
    with a no-privileged model); Morris, *Parametric empirical Bayes inference*, JASA 1983 (the shrinkage).
    """
    kind = as_task_type(task_type)
    if context.groups is None:
        return torch.ones(kind.true_class_prob(probs, labels).shape)
    if context.reference_probs is None:
        raise ValueError("agreement_reliability needs a no-privileged reference model (context.reference_probs)")
    gain = _log_gain(kind, probs, context.reference_probs, labels).numpy()
    agree = _columns(kind.two_class(probs).argmax(-1) == kind.two_class(context.reference_probs).argmax(-1)).numpy()
    groups = np.asarray(context.groups).astype(str)
    val = np.asarray(context.split == "val") & label_mask.numpy().astype(bool)
    val = np.broadcast_to(val.reshape(val.shape[0], -1), gain.shape)
    c = np.ones(gain.shape)
    for j in range(gain.shape[1]):
        rows = val[:, j]
        if not rows.any():
            continue
        scenario_gain = np.full(len(groups), gain[rows, j].mean())
        for g in np.unique(groups):
            in_g = rows & (groups == g)
            if in_g.sum() >= context.min_group_rows:
                scenario_gain[groups == g] = gain[in_g, j].mean()
        cell = np.char.add(groups, np.where(agree[:, j], "\x00agree", "\x00disagree"))
        shrunk = _shrunk_cell_gains(gain[rows, j], groups[rows], cell[rows], scenario_gain[rows])
        cell_gain = dict(zip(cell[rows], shrunk))
        c[:, j] = np.exp(np.minimum(0.0, [cell_gain.get(x, s) for x, s in zip(cell, scenario_gain)]))
    train = np.asarray(context.split == "train")
    c = torch.from_numpy(c / np.maximum(c[train].mean(0), _EPS))
    return c.float() if kind.per_label else c.float().squeeze(-1)


agreement_reliability.needs = ("reference",)
agreement_reliability.reference_needs_groups = True
agreement_reliability.mean_one_over_train = True


@CONFIDENCES.register("reference_agreement")
def reference_agreement(probs: Tensor, labels: Tensor, label_mask: Tensor, task_type, context: TaskContext) -> Tensor:
    r"""Label-free agreement of the teacher with a no-privileged reference model:
    :math:`c_i = \sum_k \min(p^t_{ik}, p^{ref}_{ik}) = 1 - \mathrm{TV}(p^t_i, p^{ref}_i)` (binary and per label on
    the two-class view). Rows where the privileged features pull the teacher far from what the online inputs
    support get less weight. Reference: Ortiz-Jimenez et al., *When does privileged information explain away label
    noise?*, ICML 2023 (agreement with a no-privileged model as a reliability signal).
    """
    kind = as_task_type(task_type)
    if context.reference_probs is None:
        raise ValueError("reference_agreement needs a no-privileged reference model (context.reference_probs)")
    return torch.minimum(kind.two_class(probs), kind.two_class(context.reference_probs)).sum(-1).clamp(0.0, 1.0)


reference_agreement.needs = ("reference",)


@CONFIDENCES.register("oracle_gate")
def oracle_gate(probs: Tensor, labels: Tensor, label_mask: Tensor, task_type, context: TaskContext) -> Tensor:
    r"""The ceiling of any weighting (a control, not a method): :math:`w_i = \mathbb{1}[\arg\max p^t_i = y_i]` on
    every row, the label of an unlabelled row taken from hidden oracle labels (``cpfd compare --oracle-labels``).
    Rows with no label anywhere keep weight 1. Reference: the oracle gate of docs/method.md (the upper bound any
    confidence function that tries to drop the teacher's mistakes can reach).
    """
    kind = as_task_type(task_type)
    if context.oracle_labels is None or context.oracle_mask is None:
        raise ValueError("oracle_gate needs hidden labels (cpfd compare --oracle-labels FILE)")
    own = kind.element_mask(label_mask.bool(), kind.true_class_prob(probs, labels))
    hidden = kind.element_mask(context.oracle_mask.bool(), own)
    y = torch.where(own, labels, context.oracle_labels.to(labels.dtype))
    right = kind.correct(probs, y).float()
    return torch.where(own | hidden, right, torch.ones_like(right))


oracle_gate.needs = ("oracle",)


@CONFIDENCES.register("fold_variance")
def fold_variance(probs: Tensor, labels: Tensor, label_mask: Tensor, task_type, context: TaskContext) -> Tensor:
    r"""Label-free disagreement of K cross-fitted fold teachers: :math:`v_i = \sum_k \mathrm{Var}_f(p^{(f)}_{ik})`
    (binary and per label: the variance of :math:`q`), :math:`c_i = 1 / (1 + v_i / \mathrm{median}_j v_j)`.
    Used with the fold teachers' mean as the target (the distil step swaps it in when this confidence is
    chosen). Reference: Mukherjee & Awadallah, *Uncertainty-aware Self-training for Few-shot Text
    Classification* (UST), NeurIPS 2020.
    """
    if context.fold_probs is None or context.fold_probs.shape[0] < 2:
        raise ValueError("fold_variance needs >= 2 cross-fitted fold teachers (teacher.oof_folds >= 2)")
    kind = as_task_type(task_type)
    v = context.fold_probs.double().var(dim=0, unbiased=False)
    if not kind.per_label and v.dim() == 2:
        v = v.sum(-1)
    median = v.median() if not kind.per_label else v.median(dim=0).values
    return (1 / (1 + v / median.clamp_min(1e-12))).float()


fold_variance.needs = ("folds",)

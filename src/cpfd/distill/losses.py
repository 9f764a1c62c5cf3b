"""Hard loss, Hinton KD, and the training objectives (baseline, PFD, CPFD) in a registry (``distill.method``).

Shapes follow the task type (:mod:`cpfd.task_types`): binary logits (B, 1), multiclass (B, C), multilabel (B, L).
Element-wise losses come back as (B,) for binary/multiclass and (B, L) for multilabel, so per-label confidence
weights line up. An objective is called as ``objective(output, batch)`` and returns ``{"loss", <named parts>}``;
the batch carries ``teacher_logits`` (and ``confidence`` when it was precomputed) for distilling objectives.
Adding one is a registered ``nn.Module`` subclass taking ``(cfg, task_types, calibration)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cpfd.config import DistillConfig
from cpfd.distill.context import TaskContext, needs, takes_context
from cpfd.distill.probs import task_probs
from cpfd.registry import CONFIDENCES, LOSSES
from cpfd.task_types import TaskType, task_type as as_task_type

__all__ = ["LOSSES", "hard_loss", "kd_loss", "feature_kd_loss", "SupervisedLoss", "PFDLoss", "CPFDLoss", "build_loss"]


def hard_loss(logits: Tensor, labels: Tensor, task_type: str | TaskType) -> Tensor:
    r"""Supervised loss per element: BCE for binary and per label, softmax cross-entropy for multiclass.

    :math:`\mathrm{CE}(y, s) = -\log \mathrm{softmax}(s)_y` (multiclass),
    :math:`-[y\log\sigma(s) + (1-y)\log(1-\sigma(s))]` (binary, multilabel per label).
    Rows without a label must be masked by the caller (their label value is arbitrary).
    """
    return as_task_type(task_type).hard_loss(logits, labels)


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float, task_type: str | TaskType) -> Tensor:
    r"""Hinton distillation: cross-entropy of the student's tempered distribution against the teacher's, times τ².

    :math:`\mathrm{KD} = -\tau^2 \sum_k p^t_k(\tau) \log p^s_k(\tau)` with :math:`p(\tau) = \mathrm{softmax}(z/\tau)`
    (multiclass); Bernoulli per label with :math:`q = \sigma(z/\tau)` for binary and multilabel. No gradient
    reaches the teacher. Reference: Hinton, Vinyals & Dean, *Distilling the Knowledge in a Neural Network*, 2015
    (the τ² keeps the gradient scale independent of τ).
    """
    return as_task_type(task_type).kd_loss(student_logits, teacher_logits, temperature)


def feature_kd_loss(student_projected: Tensor, teacher_embedding: Tensor, kind: str) -> Tensor:
    r"""Per-row feature distillation between the projected student [CLS] and the teacher's fused vector.

    ``mse``: :math:`\frac{1}{D}\lVert P s - t\rVert^2`; ``cosine``: :math:`1 - \cos(P s, t)`.
    Reference: Romero et al., *FitNets: Hints for Thin Deep Nets*, ICLR 2015 (a regressor onto teacher features).
    """
    t = teacher_embedding.detach()
    if kind == "mse":
        return ((student_projected - t) ** 2).mean(-1)
    if kind == "cosine":
        return 1 - F.cosine_similarity(student_projected, t, dim=-1)
    raise ValueError(f"unknown feature_kd {kind!r} (mse, cosine)")


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` over rows where ``mask``; (B, L) values use a (B,) mask broadcast over labels."""
    m = mask.float()
    if values.dim() == 2:
        m = m.unsqueeze(-1).expand_as(values)
    return (values * m).sum() / m.sum().clamp(min=1.0)


@LOSSES.register("none")
class SupervisedLoss(nn.Module):
    r"""Baseline student (and every teacher): :math:`L = \mathrm{CE}(y, s)` averaged over labelled rows of each
    task, summed over tasks. Reference: the plain maximum-likelihood baseline of every distillation paper."""

    distils = False

    def __init__(self, cfg: DistillConfig, task_types: dict[str, str | TaskType],
                 calibration: dict[str, float] | None = None):
        super().__init__()
        self.cfg = cfg
        self.task_types = {name: as_task_type(kind) for name, kind in task_types.items()}
        self.calibration = calibration or {}

    def forward(self, output: dict, batch: dict) -> dict[str, Tensor]:
        total = 0.0
        parts: dict[str, Tensor] = {}
        for task, kind in self.task_types.items():
            ce = kind.hard_loss(output["logits"][task], batch["labels"][task])
            parts[f"ce/{task}"] = _masked_mean(ce, batch["label_mask"][task])
            total = total + parts[f"ce/{task}"]
        return {"loss": total, **parts}


@LOSSES.register("pfd")
class PFDLoss(SupervisedLoss):
    r"""Vanilla privileged-feature distillation: :math:`L = (1-\lambda)\,\mathrm{CE}(y,s) + \lambda\,\tau^2\,
    \mathrm{KD}(t/\tau, s/\tau)` with every row weighted equally.

    CE averages over labelled rows, KD over every row (unlabelled rows contribute KD only).
    Reference: Xu et al., *Privileged Features Distillation at Taobao Recommendations*, KDD 2020.
    """

    distils = True

    takes_context = False  # whether row_confidence needs a TaskContext (scenario-aware confidences)
    context_needs: frozenset[str] = frozenset()

    def row_confidence(self, task: str, teacher_logits: Tensor, labels: Tensor, label_mask: Tensor,
                       context: TaskContext | None = None) -> Tensor | None:
        """Per-row (per-label) confidence c_i, a constant of the teacher and the labels; None: uniform weights."""
        return None

    def confidences(self, task: str, teacher_logits: Tensor, batch: dict) -> Tensor | None:
        """c_i for the rows of ``batch``: precomputed (``batch["confidence"]``) or computed from the teacher."""
        if "confidence" in batch:
            return batch["confidence"][task]
        return self.row_confidence(task, teacher_logits, batch["labels"][task], batch["label_mask"][task])

    def weights_from_confidence(self, c: Tensor) -> Tensor:
        return c

    def sample_weights(self, task: str, teacher_logits: Tensor, batch: dict) -> Tensor:
        """The distillation weight w_i of each row of ``batch`` (per label for multilabel)."""
        c = self.confidences(task, teacher_logits, batch)
        if c is None:
            shape = teacher_logits.shape if self.task_types[task].per_label else teacher_logits.shape[:1]
            return torch.ones(shape, device=teacher_logits.device)
        return self.weights_from_confidence(c)

    def target_logits(self, task: str, teacher_logits: Tensor, batch: dict) -> Tensor:
        """Hook for objectives that correct the teacher's target before KD; default: the teacher's logits."""
        return teacher_logits

    def step_weights(self, task: str, student_logits: Tensor, teacher_logits: Tensor, batch: dict, w: Tensor) -> Tensor:
        """Hook for weights that depend on the student's current output (recomputed every step); default: ``w``."""
        return w

    def combine(self, ce: Tensor, kd: Tensor, w: Tensor, mask: Tensor) -> Tensor:
        lam = self.cfg.lam
        return (1 - lam) * _masked_mean(ce, mask) + lam * (w * kd).mean()

    def forward(self, output: dict, batch: dict) -> dict[str, Tensor]:
        total = 0.0
        parts: dict[str, Tensor] = {}
        weights = []
        for task, kind in self.task_types.items():
            s = output["logits"][task]
            t = self.target_logits(task, batch["teacher_logits"][task], batch)
            mask = batch["label_mask"][task]
            ce = kind.hard_loss(s, batch["labels"][task])
            kd = kind.kd_loss(s, t, self.cfg.temperature)
            w = self.step_weights(task, s, t, batch, self.sample_weights(task, t, batch)).detach()
            task_loss = self.combine(ce, kd, w, mask)
            weights.append(w.reshape(w.shape[0], -1).mean(-1))
            parts[f"ce/{task}"] = _masked_mean(ce, mask).detach()
            parts[f"kd/{task}"] = kd.mean().detach()
            parts[f"w/{task}"] = w.mean().detach()
            total = total + task_loss
        if self.cfg.feature_kd != "none" and "projected" in output:
            row_w = torch.stack(weights).mean(0)
            fkd = feature_kd_loss(output["projected"], batch["teacher_embedding"], self.cfg.feature_kd)
            parts["feature_kd"] = (row_w * fkd).mean().detach()
            total = total + self.cfg.feature_kd_weight * (row_w * fkd).mean()
        return {"loss": total, **parts}


@LOSSES.register("cpfd")
class CPFDLoss(PFDLoss):
    r"""Confidence-aware PFD: :math:`L = (1-\lambda)\,\mathrm{CE}(y,s) + \lambda\, w_i\, \tau^2\,
    \mathrm{KD}(t/\tau, s/\tau)`, :math:`w_i = \mathrm{stopgrad}(c_i)`.

    :math:`c_i` comes from the confidence registry on the calibrated teacher (temperature from validation).
    Weighting modes: ``kd_only`` (above); ``interpolate``: :math:`(1-c_i)\,\mathrm{CE} + c_i\,\mathrm{KD}`;
    ``gate``: :math:`w_i = \mathbb{1}[c_i \ge \gamma]`. Options: ``floor`` (:math:`w_i \ge w_{min}`) then
    ``normalize`` (divide by the batch mean of w).
    Reference: Shi et al., *CPFD: Confidence-aware Privileged Feature Distillation for Short Video
    Classification*, CIKM 2024.
    """

    def __init__(self, cfg: DistillConfig, task_types: dict[str, str | TaskType],
                 calibration: dict[str, float] | None = None):
        super().__init__(cfg, task_types, calibration)
        self.confidence = CONFIDENCES.get(cfg.confidence)
        if cfg.weighting == "interpolate" and getattr(self.confidence, "mean_one_over_train", False):
            raise ValueError(f"weighting=interpolate needs c in [0, 1]; {cfg.confidence} is a relative weight")
        self.takes_context = takes_context(self.confidence)
        self.context_needs = needs(self.confidence)

    def row_confidence(self, task, teacher_logits, labels, label_mask, context=None):
        kind = self.task_types[task]
        probs = task_probs(teacher_logits.detach(), kind, self.calibration.get(task, 1.0))
        if not self.takes_context:
            return self.confidence(probs, labels, label_mask, kind)
        if context is None:
            raise ValueError(f"confidence {self.cfg.confidence!r} is computed once over the whole dataset and "
                             "needs its context (cached teacher outputs, see cpfd.distill.context)")
        return self.confidence(probs, labels, label_mask, kind, context=context)

    def weights_from_confidence(self, c: Tensor) -> Tensor:
        if self.cfg.weighting == "gate":
            c = (c >= self.cfg.gate_threshold).float()
        w = c.clamp(min=self.cfg.floor)
        if self.cfg.normalize:
            w = w / w.mean().clamp(min=1e-8)
        return w

    def combine(self, ce: Tensor, kd: Tensor, w: Tensor, mask: Tensor) -> Tensor:
        if self.cfg.weighting != "interpolate":
            return super().combine(ce, kd, w, mask)
        return _masked_mean((1 - w) * ce, mask) + (w * kd).mean()


@LOSSES.register("wsld")
class WSLDLoss(PFDLoss):
    r"""Student-aware weighted soft labels: PFD with :math:`w_i = 1 - \exp\bigl(-\mathrm{CE}(y_i, s_i) /
    \mathrm{CE}(y_i, t_i)\bigr)` on labelled rows, recomputed every step from the detached student logits
    (teacher logits at temperature 1). Where the teacher fits the label no better than the student, the weight
    falls; rows without a label keep :math:`w_i = 1`. The weight diagnostics report the label-free part (1).
    Reference: Zhou et al., *Rethinking Soft Labels for Knowledge Distillation: A Bias-Variance Tradeoff
    Perspective*, ICLR 2021 (WSLD).
    """

    summary = "WSLD: student-aware weights 1 - exp(-CE_s/CE_t), recomputed every step"

    def step_weights(self, task, student_logits, teacher_logits, batch, w):
        kind = self.task_types[task]
        labels = batch["labels"][task]
        ce_s = kind.hard_loss(student_logits.detach(), labels)
        ce_t = kind.hard_loss(teacher_logits.detach(), labels)
        wsld = 1 - torch.exp(-ce_s / ce_t.clamp_min(1e-8))
        labelled = kind.element_mask(batch["label_mask"][task].bool(), wsld)
        return w * torch.where(labelled, wsld, torch.ones_like(wsld))


@LOSSES.register("cckd_t")
class CCKDTargetLoss(PFDLoss):
    r"""PFD against a target pulled toward the label where the teacher doubts it (labelled rows only):

    :math:`t'_i = c_i\, p^t_i + (1 - c_i)\, e_{y_i}` with :math:`c_i` the calibrated teacher's probability of the
    true class and :math:`p^t` the target PFD distils (binary and per label: :math:`q' = c\,q + (1-c)\,y`);
    unlabelled rows keep :math:`p^t`. KD then uses :math:`\log t'` as the teacher's logits. Reference: Mishra & Sundaram,
    *Confidence Conditioned Knowledge Distillation*, 2021 (CCKD-T, target correction).
    """

    summary = "CCKD-T: KD target pulled toward the label where the teacher doubts it"

    def target_logits(self, task, teacher_logits, batch):
        kind = self.task_types[task]
        y, labelled = batch["labels"][task], batch["label_mask"][task].bool()
        c = kind.true_class_prob(task_probs(teacher_logits.detach(), kind, self.calibration.get(task, 1.0)), y)
        p = task_probs(teacher_logits.detach(), kind)  # the target PFD distils (temperature 1), corrected
        c = c.reshape(c.shape + (1,) * (p.dim() - c.dim()))
        corrected = kind.logits_from_probs(c * p + (1 - c) * kind.label_probs(y, p), teacher_logits)
        keep = kind.element_mask(labelled, kind.true_class_prob(p, y))
        keep = keep.reshape(keep.shape + (1,) * (teacher_logits.dim() - keep.dim()))
        return torch.where(keep, corrected, teacher_logits.detach())


@LOSSES.register("sync")
class SynchronousLoss(SupervisedLoss):
    r"""The Taobao synchronous schedule: teacher and student on one shared trunk, trained on the same batches,

    :math:`L = \mathrm{CE}(y, t) + \alpha\,\mathrm{CE}(y, t_{aux}) + (1-\lambda)\,\mathrm{CE}(y, s)
    + \lambda\,\mathbb{1}[k \ge k_0]\,\tau^2\,\mathrm{KD}(\mathrm{sg}(t)/\tau, s/\tau)`

    with k the optimiser step, :math:`k_0` = ``distill.sync_warmup_steps`` (no distillation while the teacher is
    still untrained), sg the stop-gradient and α = ``teacher.aux_weight`` (the dense tower's own prediction).
    CE terms average over labelled rows, KD over every row. The model is a
    :class:`~cpfd.models.synchronous.SynchronousPair`. Reference: Xu et al., *Privileged Features Distillation at
    Taobao Recommendations*, KDD 2020.
    """

    summary = "Taobao synchronous schedule: teacher and student trained together on one trunk"

    distils = False  # no separate teacher run: the teacher is trained inside the model
    trains_teacher = True

    def __init__(self, cfg: DistillConfig, task_types: dict[str, str | TaskType],
                 calibration: dict[str, float] | None = None, aux_weight: float = 0.0):
        super().__init__(cfg, task_types, calibration)
        self.aux_weight = aux_weight
        self.steps_seen = 0  # counts training forwards (one per optimiser step)

    def forward(self, output: dict, batch: dict) -> dict[str, Tensor]:
        if self.training:
            self.steps_seen += 1
        distilling = self.steps_seen > self.cfg.sync_warmup_steps or not self.training
        lam = self.cfg.lam
        total = 0.0
        parts: dict[str, Tensor] = {}
        for task, kind in self.task_types.items():
            s, t = output["logits"][task], output["teacher_logits"][task]
            mask, y = batch["label_mask"][task], batch["labels"][task]
            teacher_ce = _masked_mean(kind.hard_loss(t, y), mask)
            if self.aux_weight > 0 and output.get("teacher_aux_logits") is not None:
                teacher_ce = teacher_ce + self.aux_weight * _masked_mean(
                    kind.hard_loss(output["teacher_aux_logits"][task], y), mask)
            ce = _masked_mean(kind.hard_loss(s, y), mask)
            kd = kind.kd_loss(s, t.detach(), self.cfg.temperature).mean()
            total = total + teacher_ce + (1 - lam) * ce + (lam * kd if distilling else 0.0)
            parts[f"ce/{task}"], parts[f"kd/{task}"] = ce.detach(), kd.detach()
            parts[f"teacher_ce/{task}"] = teacher_ce.detach()
        return {"loss": total, **parts}


class WithAuxiliary(nn.Module):
    r"""A teacher's objective: :math:`L = L_{main} + \alpha\, L(\text{aux logits})`, the same loss on the dense
    tower's own prediction. Reference: auxiliary classifiers on intermediate branches, Szegedy et al.,
    *Going Deeper with Convolutions*, CVPR 2015 (deep supervision: Lee et al., AISTATS 2015)."""

    distils = False

    def __init__(self, base: nn.Module, weight: float):
        super().__init__()
        self.base = base
        self.weight = weight

    def forward(self, output: dict, batch: dict) -> dict[str, Tensor]:
        out = self.base(output, batch)
        if self.weight > 0 and "aux_logits" in output:
            aux = self.base({"logits": output["aux_logits"]}, batch)
            out = {**out, "loss": out["loss"] + self.weight * aux["loss"], "aux": aux["loss"].detach()}
        return out


def build_loss(cfg: DistillConfig, task_types: dict[str, str | TaskType],
               calibration: dict[str, float] | None = None) -> nn.Module:
    return LOSSES.get(cfg.method)(cfg, task_types, calibration)

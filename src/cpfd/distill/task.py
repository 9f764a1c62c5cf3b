"""One distillation step as one module (timm's ``TrainingTask`` shape).

A :class:`DistillTask` owns the trainable model (a student, a student + feature projector, or a teacher being
trained), an optional teacher source (cached targets or a frozen teacher run online) and the objective from the
loss registry. :meth:`DistillTask.prepare` computes the per-row constants once (the CPFD confidences of a cached
teacher); :meth:`DistillTask.forward` returns ``{"loss", "logits", <named loss parts>}``; the weight diagnostics
call :meth:`DistillTask.row_weights`, the very weights the loss uses. Only ``task.model`` is trained and wrapped
for data parallelism; the teacher never is.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cpfd.distill.context import TaskContext
from cpfd.distill.targets import TeacherTargets


class CachedTeacher:
    """Teacher outputs read from the cache by row index."""

    def __init__(self, targets: TeacherTargets):
        self.targets = targets
        self.temperatures = targets.temperatures

    def outputs(self, batch: dict) -> tuple[dict[str, Tensor], Tensor]:
        rows = batch["index"].cpu()
        device = batch["index"].device
        logits = {t: z[rows].to(device) for t, z in self.targets.logits.items()}
        embedding = self.targets.embedding
        return logits, embedding[rows].to(device) if embedding is not None else None


class OnlineTeacher(nn.Module):
    """A frozen teacher run on every batch (benchmarks; the Taobao-style schedule). Needs ``batch["privileged"]``."""

    def __init__(self, teacher: nn.Module, targets: TeacherTargets):
        super().__init__()
        self.teacher = teacher.eval().requires_grad_(False)
        self.targets = targets  # the same teacher's cached outputs, for confidences computed over every row
        self.temperatures = targets.temperatures

    def train(self, mode: bool = True) -> "OnlineTeacher":
        return super().train(False)  # frozen: dropout and group dropout stay off

    @torch.no_grad()
    def outputs(self, batch: dict) -> tuple[dict[str, Tensor], Tensor]:
        out = self.teacher(**batch["student"], privileged=batch["privileged"])
        return out["logits"], out["embedding"]


class DistillTask(nn.Module):
    """``model`` trained with ``objective``, against ``teacher`` when the objective distils.

    ``model_takes_privileged`` is true when the trained model is itself a teacher (its forward takes the
    privileged features); a student's forward has no such argument.
    """

    def __init__(self, model: nn.Module, objective: nn.Module, teacher: CachedTeacher | OnlineTeacher | None = None,
                 model_takes_privileged: bool = False):
        super().__init__()
        if getattr(objective, "distils", False) and teacher is None:
            raise ValueError("a distilling objective needs a teacher source")
        self.model = model
        self.objective = objective
        self.teacher = teacher if getattr(objective, "distils", False) else None
        self.model_takes_privileged = model_takes_privileged
        self.confidence: dict[str, Tensor] | None = None

    @property
    def needs_privileged(self) -> bool:
        return self.model_takes_privileged or isinstance(self.teacher, OnlineTeacher)

    def prepare(self, labels: dict[str, Tensor], label_mask: dict[str, Tensor],
                contexts: dict[str, TaskContext] | None = None) -> None:
        """Per-row confidences, computed once for every row of the dataset from the cached teacher outputs (an
        online teacher's are computed per batch, except for context-aware confidences, which need every row)."""
        if self.teacher is None:
            return
        if isinstance(self.teacher, CachedTeacher) or getattr(self.objective, "takes_context", False):
            logits = self.teacher.targets.logits
            conf = {t: self.objective.row_confidence(t, logits[t], labels[t], label_mask[t],
                                                     (contexts or {}).get(t)) for t in logits}
            self.confidence = None if any(c is None for c in conf.values()) else conf

    def model_forward(self, batch: dict) -> dict:
        if self.model_takes_privileged:
            return self.model(**batch["student"], privileged=batch["privileged"])
        return self.model(**batch["student"])

    def forward(self, batch: dict) -> dict[str, Tensor]:
        if self.teacher is not None:
            batch = dict(batch)
            batch["teacher_logits"], batch["teacher_embedding"] = self.teacher.outputs(batch)
            if self.confidence is not None:
                rows = batch["index"].cpu()
                batch["confidence"] = {t: c[rows].to(batch["index"].device) for t, c in self.confidence.items()}
        out = self.model_forward(batch)
        return {**self.objective(out, batch), "logits": out["logits"]}

    @torch.no_grad()
    def row_weights(self, rows: Tensor, labels: dict[str, Tensor], label_mask: dict[str, Tensor],
                    teacher_logits: dict[str, Tensor]) -> dict[str, Tensor]:
        """The distillation weight of each of ``rows`` per task, as the objective computes it in training."""
        batch: dict = {"labels": {t: y[rows] for t, y in labels.items()},
                       "label_mask": {t: m[rows] for t, m in label_mask.items()}}
        if self.confidence is not None:
            batch["confidence"] = {t: c[rows] for t, c in self.confidence.items()}
        return {t: self.objective.sample_weights(t, z[rows], batch) for t, z in teacher_logits.items()}

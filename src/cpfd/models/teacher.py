"""The teacher (DF-X-VLM style): the student's trunk + a dense-feature tower, fused late: ``head([cls ; mlp(d)])``."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cpfd.config import ModelConfig, TeacherConfig
from cpfd.errors import UsageError
from cpfd.models.fusion import FusionTrunk
from cpfd.models.heads import TaskHeads
from cpfd.models.statistics import column_moments


HEAVY_TAIL_SKEW = 3.0


class DenseTower(nn.Module):
    """Privileged dense features -> vector.

    Standardisation is fitted on train rows (:meth:`fit`); a missing value becomes 0 with its mask bit set, and
    the mask is an extra input so the tower can tell "missing" from "average". During training each privileged
    group is dropped with probability ``group_dropout`` (zeroed and marked missing) so the teacher stays sane when
    a scenario lacks a feature group.
    """

    def __init__(self, n_features: int, hidden: list[int], group_ids: list[int], group_dropout: float, dropout: float):
        super().__init__()
        self.register_buffer("log_scale", torch.zeros(n_features, dtype=torch.bool))
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("std", torch.ones(n_features))
        self.register_buffer("group_ids", torch.tensor(group_ids, dtype=torch.long))
        self.n_groups = max(group_ids) + 1 if group_ids else 0
        self.group_dropout = group_dropout
        layers: list[nn.Module] = []
        width = 2 * n_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.GELU(), nn.Dropout(dropout)]
            width = h
        self.mlp = nn.Sequential(*layers)
        self.out_dim = width

    @torch.no_grad()
    def fit(self, values: Tensor, rows: Tensor | None = None, read=None) -> None:
        """Per-feature mean/std from train rows (``values[rows]``), ignoring NaN; constant or all-missing columns
        get std 1.

        Heavy-tailed columns (|skewness| > ``HEAVY_TAIL_SKEW`` on train: counts, amounts, view histories) are
        first mapped through sign(x)·log(1 + |x|), so a few extreme rows do not squash the rest to zero."""
        _, _, skew = column_moments(values, rows, read=read)
        self.log_scale.copy_(skew.abs() > HEAVY_TAIL_SKEW)
        mean, std, _ = column_moments(values, rows, self._shape, read)
        self.mean.copy_(mean)
        self.std.copy_(torch.where(std > 1e-8, std, torch.ones_like(std)))

    def _shape(self, values: Tensor) -> Tensor:
        return torch.where(self.log_scale, values.sign() * values.abs().log1p(), values)

    def standardise(self, values: Tensor) -> Tensor:
        """[z ; missing mask] (B, 2F): standardised values (0 where missing or dropped) and the mask."""
        missing = torch.isnan(values)
        values = self._shape(values)
        if self.training and self.group_dropout > 0 and self.n_groups:
            drop = torch.rand(values.shape[0], self.n_groups, device=values.device) < self.group_dropout
            missing = missing | drop[:, self.group_ids]
        z = torch.where(missing, torch.zeros_like(values), (values - self.mean) / self.std)
        return torch.cat([z, missing.float()], dim=1)

    def forward(self, values: Tensor) -> Tensor:
        return self.mlp(self.standardise(values))


class Teacher(nn.Module):
    """Student trunk (+ dense tower when ``use_privileged``); without the tower it is the self-distillation teacher."""

    def __init__(
        self,
        input_shapes: dict[str, tuple[int, ...]],
        task_outputs: dict[str, int],
        cfg: ModelConfig,
        teacher_cfg: TeacherConfig,
        n_privileged: int,
        group_ids: list[int] | None = None,
    ):
        super().__init__()
        self.trunk = FusionTrunk(input_shapes, cfg)
        self.tower = None
        width = self.trunk.out_dim
        if teacher_cfg.use_privileged:
            if n_privileged == 0:
                raise UsageError("a privileged teacher needs privileged columns in the dataset (or teacher.use_privileged=false)")
            self.tower = DenseTower(n_privileged, teacher_cfg.dense_hidden, group_ids or list(range(n_privileged)),
                                    teacher_cfg.group_dropout, cfg.dropout)
            width += self.tower.out_dim
        self.trunk_dropout = teacher_cfg.trunk_dropout if self.tower is not None else 0.0
        self.heads = TaskHeads(width, task_outputs, cfg.dropout)
        # The dense tower's own prediction, trained with an auxiliary loss (teacher.aux_weight) so the privileged
        # path learns to predict instead of leaving the work to a trunk that can memorise its inputs.
        self.aux_heads = TaskHeads(self.tower.out_dim, task_outputs, cfg.dropout) if self.tower is not None else None
        # Wide & deep (Cheng et al., DLRS 2016): a linear path from the standardised privileged features to the
        # logits, so the teacher can always represent what a linear model on them finds.
        # With model.wide the student's own linear inputs join that path (the student has the same one), so the
        # teacher can represent the logistic regression on student + privileged inputs.
        self.privileged_wide = self.tower is not None and teacher_cfg.wide
        self.inputs_wide = cfg.wide
        wide_dim = 2 * n_privileged * self.privileged_wide + self.trunk.linear_dim * self.inputs_wide
        self.wide = TaskHeads(wide_dim, task_outputs) if wide_dim else None
        self.embedding_dim = width

    def forward(
        self,
        features: Tensor | None = None,
        frames: Tensor | None = None,
        frames_mask: Tensor | None = None,
        text: Tensor | None = None,
        text_mask: Tensor | None = None,
        privileged: Tensor | None = None,
    ) -> dict:
        inputs = {"features": features, "frames": frames, "frames_mask": frames_mask, "text": text,
                  "text_mask": text_mask}
        linear = self.trunk.linear_inputs(**inputs) if self.inputs_wide else None
        return self.fuse(self.trunk(**inputs), privileged, linear)

    def fuse(self, cls: Tensor, privileged: Tensor | None, linear: Tensor | None = None) -> dict:
        """Everything after the trunk: the dense tower, fusion and heads (the synchronous schedule shares the
        trunk with a student and calls this on its output). ``linear``: the trunk's ``linear_inputs`` (needed
        with ``model.wide``)."""
        if self.inputs_wide and linear is None:
            raise ValueError("this teacher has a wide path over the student's inputs: pass linear=linear_inputs")
        if self.tower is not None:
            if privileged is None:
                raise ValueError("this teacher needs privileged features")
            if self.training and self.trunk_dropout > 0:
                keep = (torch.rand(cls.shape[0], 1, device=cls.device) >= self.trunk_dropout).to(cls.dtype)
                cls = cls * keep / (1 - self.trunk_dropout)
            standardised = self.tower.standardise(privileged)
            dense = self.tower.mlp(standardised)
            cls = torch.cat([cls, dense], dim=1)
            logits = self.heads(cls)
            aux = self.aux_heads(dense)
            if self.wide is not None:
                wide = self.wide(self.wide_inputs(standardised, linear))
                logits = {t: z + wide[t] for t, z in logits.items()}
                aux = {t: z + wide[t] for t, z in aux.items()}
            return {"logits": logits, "embedding": cls, "aux_logits": aux}
        logits = self.heads(cls)
        if self.wide is not None:  # the self-distillation teacher with model.wide: the student's architecture
            wide = self.wide(linear)
            logits = {t: z + wide[t] for t, z in logits.items()}
        return {"logits": logits, "embedding": cls}

    def wide_inputs(self, standardised: Tensor, linear: Tensor | None) -> Tensor:
        """What the linear path reads: [z ; missing] of the privileged features and/or the student's linear inputs."""
        parts = ([standardised] if self.privileged_wide else []) + ([linear] if self.inputs_wide else [])
        return torch.cat(parts, dim=1)

"""Batches of rows: student inputs and privileged features travel in separate fields.

``batch["student"]`` holds only student-visible inputs and is what the student's forward receives
(``student(**batch["student"])``); ``batch["privileged"]`` exists only when a teacher has to run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from cpfd.data.prepared import PreparedData


@dataclass
class TeacherTargets:
    """Teacher outputs for every row of a dataset (cached), plus per-task calibration temperatures."""

    logits: dict[str, torch.Tensor]
    embedding: torch.Tensor
    temperatures: dict[str, float]
    # Per-row confidence c_i per task: a constant of the teacher, labels and calibration, computed once per run.
    confidence: dict[str, torch.Tensor] | None = None


class RowDataset(Dataset):
    """Rows ``indices`` of ``data``, fetched a batch at a time (``__getitems__``) to avoid per-row Python work."""

    def __init__(
        self,
        data: PreparedData,
        indices: np.ndarray,
        with_privileged: bool = False,
        teacher: TeacherTargets | None = None,
    ):
        self.data = data
        self.indices = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        self.with_privileged = with_privileged
        self.teacher = teacher

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        return self.__getitems__([i])

    def __getitems__(self, positions: list[int]) -> dict:
        rows = self.indices[torch.as_tensor(positions, dtype=torch.long)]
        d = self.data
        batch = {
            "index": rows,
            "student": {name: value[rows] for name, value in d.student_inputs.items()},
            "labels": {t: y[rows] for t, y in d.labels.items()},
            "label_mask": {t: m[rows] for t, m in d.label_mask.items()},
        }
        if self.with_privileged:
            batch["privileged"] = d.privileged[rows]
        if self.teacher is not None:
            batch["teacher_logits"] = {t: z[rows] for t, z in self.teacher.logits.items()}
            batch["teacher_embedding"] = self.teacher.embedding[rows]
            if self.teacher.confidence is not None:
                batch["confidence"] = {t: c[rows] for t, c in self.teacher.confidence.items()}
        return batch


def passthrough(batch: dict) -> dict:
    """Collate for :class:`RowDataset`, whose ``__getitems__`` already returns a batch."""
    return batch

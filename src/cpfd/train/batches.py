"""Batches of rows: student inputs and privileged features travel in separate fields.

``batch["student"]`` holds only student-visible inputs and is what the student's forward receives
(``student(**batch["student"])``); ``batch["privileged"]`` exists only when a teacher has to run. Teacher outputs
are not batch fields of the dataset: the :class:`~cpfd.distill.task.DistillTask` adds them by row index.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from cpfd.data.prepared import PreparedData


class RowDataset(Dataset):
    """Rows ``indices`` of ``data``, fetched a batch at a time (``__getitems__``) to avoid per-row Python work."""

    def __init__(self, data: PreparedData, indices: np.ndarray, with_privileged: bool = False):
        self.data = data
        self.indices = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        self.with_privileged = with_privileged

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
        return batch


def passthrough(batch: dict) -> dict:
    """Collate for :class:`RowDataset`, whose ``__getitems__`` already returns a batch."""
    return batch

"""Batches of rows: student inputs and privileged features travel in separate fields.

``batch["student"]`` holds only student-visible inputs and is what the student's forward receives
(``student(**batch["student"])``); ``batch["privileged"]`` exists only when a teacher has to run. Teacher outputs
are not batch fields of the dataset: the :class:`~cpfd.distill.task.DistillTask` adds them by row index.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from cpfd.data.prepared import PreparedData


# Batches between hand-backs of mapped store pages by default (PreparedData.release_memory); 0: only at the end of
# each pass (train.release_pages_every). Only the narrow arrays (labels, masks) are still gathered through the map;
# the wide ones go through store.RowReader.
RELEASE_EVERY = 0


def as_model_input(value: torch.Tensor) -> torch.Tensor:
    """Embeddings stored as float16 (``extract.store_float16``) reach the model as float32."""
    return value.float() if value.dtype == torch.float16 else value


class RowDataset(Dataset):
    """Rows ``indices`` of ``data``, fetched a batch at a time (``__getitems__``) to avoid per-row Python work.

    The wide arrays of a batch are read from the store with positioned reads, one per run of consecutive rows
    (:class:`~cpfd.data.store.RowReader`), so an epoch's random rows never map the store into the process."""

    def __init__(self, data: PreparedData, indices: np.ndarray, with_privileged: bool = False,
                 release_every: int | None = None):
        self.data = data
        self.indices = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        self.with_privileged = with_privileged
        self.release_every = RELEASE_EVERY if release_every is None else release_every
        self.fetched = 0

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        return self.__getitems__([i])

    def __getitems__(self, positions: list[int]) -> dict:
        rows = self.indices[torch.as_tensor(positions, dtype=torch.long)]
        d = self.data
        self.fetched += 1
        if self.release_every and self.fetched % self.release_every == 0:
            d.release_memory()
        batch = {
            "index": rows,
            "student": {name: as_model_input(value) for name, value in d.student_rows(rows).items()},
            "labels": {t: y[rows] for t, y in d.labels.items()},
            "label_mask": {t: m[rows] for t, m in d.label_mask.items()},
        }
        if self.with_privileged:
            batch["privileged"] = d.privileged_rows(rows)
        return batch


def passthrough(batch: dict) -> dict:
    """Collate for :class:`RowDataset`, whose ``__getitems__`` already returns a batch."""
    return batch


class ShuffledShard(Sampler):
    """This rank's shuffled positions for one epoch, the order of ``DistributedSampler(shuffle=True)`` exactly,
    without its first ``skip`` positions (a resumed epoch's remainder).

    ``DistributedSampler`` turns the permutation into a Python list (about 36 bytes a row: 110 MB at 3M rows); here
    it stays an int64 tensor and positions are handed out a block at a time.

    ``block_rows > 1`` shuffles runs of that many consecutive positions instead of single ones (the order of the
    runs is random, the rows inside a run stay together, each rank takes a contiguous share of the shuffled runs):
    a batch then reads a few contiguous stretches of the memory-mapped store, so each page is read about once per
    epoch and handing pages back during the epoch (``train.release_pages_every``) costs little. Rows of one run
    share a batch, so keep it well below the batch size when the table is sorted by time or label."""

    BLOCK = 65_536

    def __init__(self, n: int, world_size: int = 1, rank: int = 0, seed: int = 0, skip: int = 0, block_rows: int = 1):
        self.n, self.world_size, self.rank, self.seed, self.skip = n, world_size, rank, seed, skip
        self.block_rows = max(int(block_rows), 1)
        self.epoch = 0
        self.per_rank = math.ceil(n / world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def skipping(self, skip: int) -> "ShuffledShard":
        other = ShuffledShard(self.n, self.world_size, self.rank, self.seed, skip, self.block_rows)
        other.epoch = self.epoch
        return other

    def _order(self, g: torch.Generator) -> torch.Tensor:
        if self.block_rows == 1:
            return torch.randperm(self.n, generator=g)
        runs = torch.randperm(math.ceil(self.n / self.block_rows), generator=g)
        order = (runs[:, None] * self.block_rows + torch.arange(self.block_rows)).flatten()
        return order[order < self.n]

    def __iter__(self):
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        perm = self._order(g)
        total = self.per_rank * self.world_size
        if total > self.n:  # pad by repeating the permutation, as DistributedSampler does
            perm = torch.cat([perm, perm.repeat(math.ceil((total - self.n) / self.n))[: total - self.n]])
        if self.block_rows == 1:
            mine = perm[self.rank : total : self.world_size]
        else:  # a contiguous share keeps each run on one rank
            mine = perm[self.rank * self.per_rank : (self.rank + 1) * self.per_rank]
        mine = mine[self.skip :]
        for block in mine.split(self.BLOCK):
            yield from block.tolist()

    def __len__(self) -> int:
        return max(self.per_rank - self.skip, 0)

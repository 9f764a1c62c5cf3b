"""The training budget: the same rule for every arm, adapted to the size of the data.

- **Batch size** is capped by the train size, so an epoch has at least ``min_batches_per_epoch`` optimiser steps:
  ``batch = min(train.batch_size, max(8, ceil(n_train / min_batches_per_epoch)))``.
- **Length**: ``train.epochs`` epochs, extended until at least ``train.min_steps`` optimiser steps are planned (a
  300-row table with batch 256 would otherwise stop after a few dozen steps).
- **Learning rate**: linear warm-up over ``warmup_fraction`` of the planned steps, then cosine decay to 0
  (``torch.optim.lr_scheduler.LambdaLR``); ``schedule: constant`` keeps the rate fixed.
- **Early stopping** on validation loss (the hard loss on labelled validation rows): training stops once
  ``patience_steps`` steps have passed without a new best *and* ``min_steps`` steps are done; the best weights
  are restored at the end.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from cpfd.config import TrainConfig


@dataclass(frozen=True)
class Budget:
    batch_size: int
    steps_per_epoch: int
    epochs: int
    total_steps: int
    warmup_steps: int
    min_steps: int
    patience_steps: int

    def to_json(self) -> dict:
        return asdict(self)

    def lr_factor(self, step: int, schedule: str) -> float:
        """Multiplier of the base learning rate at optimiser step ``step`` (0-based)."""
        if schedule == "constant":
            return 1.0
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return 0.5 * (1.0 + math.cos(math.pi * progress))


def plan_budget(cfg: TrainConfig, n_train: int, world_size: int = 1) -> Budget:
    """The budget for ``n_train`` rows split over ``world_size`` processes."""
    per_rank = math.ceil(max(n_train, 1) / world_size)
    batch = min(cfg.batch_size, max(8, math.ceil(per_rank / cfg.min_batches_per_epoch)))
    steps_per_epoch = max(1, math.ceil(per_rank / batch))
    epochs = max(cfg.epochs, math.ceil(cfg.min_steps / steps_per_epoch))
    total = epochs * steps_per_epoch
    warmup = min(total, max(1, round(cfg.warmup_fraction * total))) if cfg.warmup_fraction > 0 else 0
    return Budget(batch, steps_per_epoch, epochs, total, warmup, min(cfg.min_steps, total), cfg.patience_steps)

"""One linear head per task: binary -> 1 logit, multiclass -> C logits, multilabel -> L logits."""

from __future__ import annotations

from torch import Tensor, nn


class TaskHeads(nn.Module):
    def __init__(self, in_dim: int, task_outputs: dict[str, int], dropout: float = 0.0):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.heads = nn.ModuleDict({name: nn.Linear(in_dim, n) for name, n in task_outputs.items()})

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        x = self.drop(x)
        return {name: head(x) for name, head in self.heads.items()}

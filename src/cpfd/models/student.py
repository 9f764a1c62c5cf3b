"""The deployable student (X-VLM style): student-visible inputs only.

Its ``forward`` has no argument through which privileged features could enter; passing one is a ``TypeError``.
"""

from __future__ import annotations

from torch import Tensor, nn

from cpfd.config import ModelConfig
from cpfd.models.fusion import FusionTrunk
from cpfd.models.heads import TaskHeads


class Student(nn.Module):
    def __init__(self, input_shapes: dict[str, tuple[int, ...]], task_outputs: dict[str, int], cfg: ModelConfig):
        super().__init__()
        self.trunk = FusionTrunk(input_shapes, cfg)
        self.heads = TaskHeads(self.trunk.out_dim, task_outputs, cfg.dropout)
        self.embedding_dim = self.trunk.out_dim

    def forward(
        self,
        features: Tensor | None = None,
        frames: Tensor | None = None,
        frames_mask: Tensor | None = None,
        text: Tensor | None = None,
        text_mask: Tensor | None = None,
    ) -> dict:
        cls = self.trunk(features=features, frames=frames, frames_mask=frames_mask, text=text, text_mask=text_mask)
        return {"logits": self.heads(cls), "embedding": cls}

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
        # Wide & deep (Cheng et al., DLRS 2016): a linear path from the inputs to the logits, so the student can
        # always represent what a logistic regression on its inputs finds, however few the labels.
        self.wide = TaskHeads(self.trunk.linear_dim, task_outputs) if cfg.wide else None
        self.embedding_dim = self.trunk.out_dim

    def forward(
        self,
        features: Tensor | None = None,
        frames: Tensor | None = None,
        frames_mask: Tensor | None = None,
        text: Tensor | None = None,
        text_mask: Tensor | None = None,
    ) -> dict:
        inputs = {"features": features, "frames": frames, "frames_mask": frames_mask, "text": text,
                  "text_mask": text_mask}
        return self.predict(self.trunk(**inputs), inputs)

    def predict(self, cls: Tensor, inputs: dict[str, Tensor | None]) -> dict:
        """Logits from the trunk's [CLS] vector and, with the wide path, the raw inputs (the synchronous schedule
        computes ``cls`` itself and calls this)."""
        logits = self.heads(cls)
        if self.wide is not None:
            wide = self.wide(self.trunk.linear_inputs(**inputs))
            logits = {t: z + wide[t] for t, z in logits.items()}
        return {"logits": logits, "embedding": cls}

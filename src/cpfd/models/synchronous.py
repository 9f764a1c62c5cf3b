"""Teacher and student trained together on one shared trunk (the Taobao synchronous schedule).

Xu et al., *Privileged Features Distillation at Taobao Recommendations*, KDD 2020, train the teacher and the
student at the same time on the same batches, sharing the embedding of the features both see, the student
distilling from the teacher's detached logits after a warm-up. Here the student's fusion trunk *is* the
teacher's trunk; the teacher adds its dense tower and heads on top (:meth:`cpfd.models.teacher.Teacher.fuse`).
What is deployed is the student alone (trunk + its heads): its weights are the ``student.*`` entries.
"""

from __future__ import annotations

from torch import Tensor, nn

from cpfd.errors import UsageError
from cpfd.models.student import Student
from cpfd.models.teacher import Teacher


class SynchronousPair(nn.Module):
    def __init__(self, student: nn.Module, teacher: nn.Module):
        super().__init__()
        if not isinstance(student, Student) or not isinstance(teacher, Teacher):
            raise UsageError("the synchronous schedule (method=sync) needs precomputed inputs (no end-to-end "
                             "encoders): run `cpfd extract` first")
        if teacher.tower is None:
            raise UsageError("the synchronous schedule needs a privileged teacher (teacher.use_privileged=true)")
        self.student = student
        teacher.trunk = None  # the student's trunk is the shared embedding (one copy of its weights on disk)
        self.teacher = teacher
        self.embedding_dim = student.embedding_dim

    def forward(self, features: Tensor | None = None, frames: Tensor | None = None,
                frames_mask: Tensor | None = None, text: Tensor | None = None, text_mask: Tensor | None = None,
                privileged: Tensor | None = None) -> dict:
        inputs = {"features": features, "frames": frames, "frames_mask": frames_mask, "text": text,
                  "text_mask": text_mask}
        cls = self.student.trunk(**inputs)
        linear = self.student.trunk.linear_inputs(**inputs) if self.teacher.inputs_wide else None
        teacher = self.teacher.fuse(cls, privileged, linear)
        return self.student.predict(cls, inputs) | {"teacher_logits": teacher["logits"],
                                                    "teacher_aux_logits": teacher.get("aux_logits")}

"""Build the student and the teacher for a dataset's schema, and load them back from their run folders.

Standardisation statistics (numeric features, privileged features) are fitted here on train rows only. In
end-to-end mode the frozen encoders of the preprocessing path become trainable modules in front of the trunk.
"""

from __future__ import annotations

import fnmatch

import torch
from safetensors.torch import load_file
from torch import nn

from cpfd.config import RunConfig
from cpfd.data.prepared import PreparedData
from cpfd.data.preprocess import make_frame_encoder, make_text_encoder
from cpfd.errors import UsageError
from cpfd.io import load_weights
from cpfd.models.end_to_end import EndToEndStudent, EndToEndTeacher, Encoders
from cpfd.models.fusion import STUDENT_MODALITIES
from cpfd.models.student import Student
from cpfd.models.teacher import Teacher
from cpfd.runs import RunFolder


def input_shapes(data: PreparedData, encoders: Encoders | None = None) -> dict[str, tuple[int, ...]]:
    """Per-row shape of each modality the trunk sees (in end-to-end mode: after the trainable encoders)."""
    shapes = {k: tuple(v.shape[1:]) for k, v in data.student_inputs.items() if k in STUDENT_MODALITIES}
    if encoders is not None:
        if "pixels" in data.student_inputs:
            shapes["frames"] = (data.student_inputs["pixels"].shape[1], encoders.frames.dim)
        if "text_ids" in data.student_inputs:
            shapes["text"] = (data.student_inputs["text_ids"].shape[1], encoders.text.dim)
    return shapes


def is_end_to_end(data: PreparedData) -> bool:
    return "pixels" in data.student_inputs or "text_ids" in data.student_inputs


def build_encoders(data: PreparedData, cfg: RunConfig) -> Encoders | None:
    """Trainable encoders for end-to-end mode (their pretrained weights are the starting point)."""
    if not is_end_to_end(data):
        return None
    frames = make_frame_encoder(cfg.extract) if "pixels" in data.student_inputs else None
    text = make_text_encoder(cfg.extract) if "text_ids" in data.student_inputs else None
    return Encoders(frames, text)


def task_outputs(data: PreparedData) -> dict[str, int]:
    return {t.name: t.n_outputs for t in data.tasks}


def group_ids(data: PreparedData, groups: dict[str, list[str]] | None) -> list[int]:
    """Privileged column -> group index; columns in no named group get a group of their own."""
    ids: list[int] = []
    names = list(groups or {})
    for col in data.privileged_names:
        hit = next((k for k, name in enumerate(names) if any(fnmatch.fnmatchcase(col, p) for p in groups[name])), None)
        ids.append(hit if hit is not None else len(names) + len(ids))
    # Re-number densely so the tower sizes its dropout mask by the groups that exist.
    remap = {g: k for k, g in enumerate(dict.fromkeys(ids))}
    return [remap[g] for g in ids]


def build_teacher(data: PreparedData, cfg: RunConfig, fit: bool = True) -> nn.Module:
    """A new teacher for ``data``; ``fit`` fits its input standardisation on the train rows (a teacher about to
    load saved weights skips it: the statistics are buffers of the checkpoint)."""
    encoders = build_encoders(data, cfg)
    teacher = Teacher(input_shapes(data, encoders), task_outputs(data), cfg.model, cfg.teacher,
                      len(data.privileged_names), group_ids(data, cfg.teacher.groups))
    if fit:
        train = torch.from_numpy(data.indices("train"))
        teacher.trunk.fit_inputs(data.student_inputs, train, data.rows_of)
        if teacher.tower is not None:
            teacher.tower.fit(data.privileged, train, data.rows_of)
        data.release_memory()
    return EndToEndTeacher(encoders, teacher) if encoders is not None else teacher


def build_student(data: PreparedData, cfg: RunConfig, fit: bool = True) -> nn.Module:
    """A new student for ``data``; ``fit`` as in :func:`build_teacher`."""
    encoders = build_encoders(data, cfg)
    student = Student(input_shapes(data, encoders), task_outputs(data), cfg.model)
    if fit:
        student.trunk.fit_inputs(data.student_inputs, torch.from_numpy(data.indices("train")), data.rows_of)
        data.release_memory()
    return EndToEndStudent(encoders, student) if encoders is not None else student


class StudentWithProjector(nn.Module):
    """Student + the feature-distillation projector (training only; export takes ``.student``)."""

    def __init__(self, student: nn.Module, teacher_dim: int):
        super().__init__()
        self.student = student
        self.projector = nn.Linear(student.embedding_dim, teacher_dim)

    def forward(self, **inputs) -> dict:
        out = self.student(**inputs)
        return out | {"projected": self.projector(out["embedding"])}


def load_teacher(run: RunFolder, data: PreparedData, checkpoint=None) -> nn.Module:
    """Rebuild a teacher from its run folder (its own config + best weights) for ``data``'s schema."""
    run = RunFolder(run)
    trained_on = run.info["privileged_names"]
    if trained_on != data.privileged_names:
        raise UsageError(f"{run.path}: teacher was trained on privileged columns {trained_on}, "
                         f"the dataset has {data.privileged_names}")
    teacher = build_teacher(data, run.config, fit=False)
    load_weights(teacher, checkpoint or run.best)
    return teacher.eval()


def load_student(run: RunFolder, data: PreparedData) -> nn.Module:
    """Rebuild a student from its run folder; a feature-distillation projector or a synchronous teacher is
    dropped."""
    run = RunFolder(run)
    student = build_student(data, run.config, fit=False)
    state = load_file(str(run.best))
    if any(k.startswith(("projector.", "teacher.")) for k in state):  # feature-KD projector, synchronous teacher
        state = {k.removeprefix("student."): v for k, v in state.items() if k.startswith("student.")}
    student.load_state_dict(state)
    return student.eval()

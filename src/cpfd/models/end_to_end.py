"""End-to-end mode (for a GPU): the frame and text encoders are trained with the model instead of frozen.

Inputs are decoded frames (uint8, B×K×H×W×3) and token ids; :class:`Encoders` turns them into the frame and
text token sequences the fusion trunk takes, so student and teacher are the very same models as in the frozen
mode, with their encoders in front. The student wrapper has no privileged argument either.
"""

from __future__ import annotations

from torch import Tensor, nn


class Encoders(nn.Module):
    def __init__(self, frame_encoder: nn.Module | None, text_encoder: nn.Module | None):
        super().__init__()
        self.frames = frame_encoder
        self.text = text_encoder

    def forward(self, pixels: Tensor | None, text_ids: Tensor | None, text_mask: Tensor | None) -> dict:
        out: dict[str, Tensor] = {}
        if pixels is not None:
            b, k = pixels.shape[:2]
            x = pixels.flatten(0, 1).permute(0, 3, 1, 2).float() / 255.0
            out["frames"] = self.frames(x).view(b, k, -1)
        if text_ids is not None:
            tokens, mask, _ = self.text.encode_ids(text_ids, text_mask)
            out["text"], out["text_mask"] = tokens, mask
        return out


class EndToEndStudent(nn.Module):
    def __init__(self, encoders: Encoders, student: nn.Module):
        super().__init__()
        self.encoders = encoders
        self.student = student
        self.embedding_dim = student.embedding_dim

    def forward(self, features: Tensor | None = None, pixels: Tensor | None = None, frames_mask: Tensor | None = None,
                text_ids: Tensor | None = None, text_mask: Tensor | None = None) -> dict:
        enc = self.encoders(pixels, text_ids, text_mask)
        return self.student(features=features, frames=enc.get("frames"), frames_mask=frames_mask,
                            text=enc.get("text"), text_mask=enc.get("text_mask"))


class EndToEndTeacher(nn.Module):
    def __init__(self, encoders: Encoders, teacher: nn.Module):
        super().__init__()
        self.encoders = encoders
        self.teacher = teacher
        self.embedding_dim = teacher.embedding_dim

    def forward(self, features: Tensor | None = None, pixels: Tensor | None = None, frames_mask: Tensor | None = None,
                text_ids: Tensor | None = None, text_mask: Tensor | None = None,
                privileged: Tensor | None = None) -> dict:
        enc = self.encoders(pixels, text_ids, text_mask)
        return self.teacher(features=features, frames=enc.get("frames"), frames_mask=frames_mask,
                            text=enc.get("text"), text_mask=enc.get("text_mask"), privileged=privileged)

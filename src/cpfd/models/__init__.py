"""Student (X-VLM style, frames + text + online vectors) and teacher (DF-X-VLM style, + privileged dense tower)."""

from cpfd.models.student import Student
from cpfd.models.teacher import DenseTower, Teacher

__all__ = ["Student", "Teacher", "DenseTower"]

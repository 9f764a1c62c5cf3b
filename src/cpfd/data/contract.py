"""``dataset.yaml`` (format v1, see docs/dataset-format.md) and the error type every validation failure uses.

Rows in messages are 1-based data rows of the named file (the header is not counted), so "row 3" is the third
record of that file, whatever its format.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cpfd.errors import ConfigError, CpfdError
from cpfd.io import load_yaml
from cpfd.registry import TASK_TYPES

SPLITS = ("train", "val", "test")
MAX_LISTED_ROWS = 10


def printable(value: object, limit: int = 64) -> str:
    """A value as it may appear in a message: control characters escaped, at most ``limit`` characters."""
    text = re.sub(r"[\x00-\x1f\x7f]", lambda m: f"\\x{ord(m.group()):02x}", str(value))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def confined(root: Path, value: str, allow_outside: bool) -> Path:
    """``root / value`` with symlinks resolved; a path that leaves ``root`` is refused unless ``allow_outside``."""
    path = (root / value).resolve()
    if not allow_outside and not path.is_relative_to(root.resolve()):
        raise ValueError(f"path {printable(value)!r} leaves the dataset folder (absolute, '..' or a symlink); set "
                         "allow_outside: true in dataset.yaml to read shared storage")
    return path


@dataclass
class Problem:
    """One validation failure, located by file, row(s) and column."""

    file: str
    message: str
    column: str | None = None
    rows: list[int] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        where = [self.file]
        if self.column is not None:
            where.append(f"column {self.column!r}")
        if self.rows:
            shown = ", ".join(str(r) for r in self.rows[:MAX_LISTED_ROWS])
            more = f" (+{len(self.rows) - MAX_LISTED_ROWS} more)" if len(self.rows) > MAX_LISTED_ROWS else ""
            where.append(f"row{'s' if len(self.rows) > 1 else ''} {shown}{more}")
        ids = ""
        if self.ids:
            shown = ", ".join(printable(i) for i in self.ids[:MAX_LISTED_ROWS])
            ids = f" [id: {shown}{' ...' if len(self.ids) > MAX_LISTED_ROWS else ''}]"
        return f"{', '.join(where)}: {self.message}{ids}"


class DatasetError(CpfdError, ValueError):
    """Raised before any compute when a dataset breaks the contract; lists every problem found."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        lines = [f"dataset is invalid ({len(problems)} problem{'s' if len(problems) != 1 else ''}):"]
        lines += [f"  - {p}" for p in problems]
        super().__init__("\n".join(lines))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InputsSpec(_Strict):
    video: str | None = None
    frames: str | None = None
    text: list[str] | None = None
    features: list[str] | None = None

    @field_validator("text", "features", mode="before")
    @classmethod
    def _listify(cls, v):
        return [v] if isinstance(v, str) else v


class TaskSpec(_Strict):
    name: str
    type: str = Field(description="name in the task-type registry: binary, multiclass, multilabel, or a plugin's")
    column: str
    classes: list[str] | None = None

    @field_validator("type")
    @classmethod
    def _registered_type(cls, name: str) -> str:
        return TASK_TYPES.check(name)


class DatasetSpec(_Strict):
    format: Literal[1] = 1
    name: str
    table: str
    id: str
    split: str | None = None
    group: str | None = None
    allow_outside: bool = False  # table and media paths may leave the dataset folder (shared storage)
    inputs: InputsSpec
    privileged: list[str] = Field(default_factory=list)
    tasks: list[TaskSpec] = Field(min_length=1)

    @field_validator("privileged", mode="before")
    @classmethod
    def _listify(cls, v):
        return [v] if isinstance(v, str) else (v or [])


def load_spec(folder: str | Path) -> tuple[DatasetSpec, Path]:
    """Read ``<folder>/dataset.yaml``; unknown keys and wrong types are a :class:`DatasetError`."""
    folder = Path(folder)
    path = folder / "dataset.yaml" if folder.is_dir() else folder
    if not path.exists():
        raise DatasetError([Problem(str(path), "dataset.yaml not found (a dataset is a folder with dataset.yaml)")])
    try:
        raw = load_yaml(path.read_text(), str(path))
    except ConfigError as err:
        raise DatasetError([Problem(str(path), str(err).removeprefix(f"{path}: "))]) from None
    if not isinstance(raw, dict):
        raise DatasetError([Problem(str(path), "must be a mapping with keys format, name, table, id, inputs, tasks")])
    try:
        spec = DatasetSpec.model_validate(raw)
    except ValidationError as err:
        problems = []
        for e in err.errors():
            key = ".".join(str(p) for p in e["loc"])
            msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"].removeprefix("Value error, ")
            problems.append(Problem(str(path), f"key {key!r}: {msg}"))
        raise DatasetError(problems) from None
    names = [t.name for t in spec.tasks]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DatasetError([Problem(str(path), f"duplicate task names: {', '.join(dupes)}")])
    if not any([spec.inputs.video, spec.inputs.frames, spec.inputs.text, spec.inputs.features]):
        raise DatasetError([Problem(str(path), "inputs: at least one student input (video, frames, text, features)")])
    return spec, path.parent

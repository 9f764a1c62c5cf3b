"""Run and compare folders: every file name and layout in one place, each file parsed once here.

A run folder (``cpfd fit-teacher`` / ``cpfd distill``)::

    config.yaml        the resolved RunConfig          run.json       role, dataset, tasks, arm, skipped rows
    metrics.json       test/val metrics at the end     history.json   per-epoch records
    eval.json          written by ``cpfd evaluate``    logs/          CSV + TensorBoard
    checkpoints/       best.safetensors, last.safetensors, last_state.safetensors (neural teachers, students);
                       lightgbm.json / logreg.json / teacher_outputs.parquet (other teacher kinds);
                       teacher_choice.json (teacher.kind=auto: the kind kept and why)
    cache/             teacher_outputs.safetensors (teachers only)
    folds/             folds.json and one run folder per fold teacher (cross-fitting)

A compare folder (``cpfd compare``)::

    results.json  report.md  *.png      seed_<s>/teacher_<kind>/  seed_<s>/<arm>/   (run folders)
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Any

from cpfd.config import RunConfig, config_from_dict, save_config
from cpfd.errors import CpfdError
from cpfd.io import atomic_write_json, load_yaml

TEACHER_OUTPUTS = "teacher_outputs.safetensors"


class RunFolderError(CpfdError, FileNotFoundError):
    """A run folder that lacks a file a command needs (the message says which command makes it)."""


def _read_json(path: Path, made_by: str) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RunFolderError(f"{path} not found ({made_by})") from None
    except json.JSONDecodeError as err:
        raise RunFolderError(f"{path} is not valid JSON: {err}") from None


class RunFolder:
    def __init__(self, path: "str | Path | RunFolder"):
        self.path = path.path if isinstance(path, RunFolder) else Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # ---- layout ----
    @property
    def config_file(self) -> Path:
        return self.path / "config.yaml"

    @property
    def run_file(self) -> Path:
        return self.path / "run.json"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.json"

    @property
    def history_file(self) -> Path:
        return self.path / "history.json"

    @property
    def eval_file(self) -> Path:
        return self.path / "eval.json"

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def best(self) -> Path:
        return self.checkpoints / "best.safetensors"

    @property
    def last(self) -> Path:
        return self.checkpoints / "last.safetensors"

    @property
    def last_state(self) -> Path:
        return self.checkpoints / "last_state.safetensors"

    @property
    def gbdt_model(self) -> Path:
        return self.checkpoints / "lightgbm.json"

    @property
    def logreg_model(self) -> Path:
        return self.checkpoints / "logreg.json"

    @property
    def imported_outputs(self) -> Path:
        return self.checkpoints / "teacher_outputs.parquet"

    @property
    def teacher_choice_file(self) -> Path:
        return self.checkpoints / "teacher_choice.json"

    def teacher_model(self, kind: str) -> Path:
        """The file that is the teacher of ``kind`` (its hash keys the output cache)."""
        return {"neural": self.best, "lightgbm": self.gbdt_model, "logreg": self.logreg_model,
                "file": self.imported_outputs}[kind]

    @property
    def teacher_kind(self) -> str:
        """The kind of teacher this run holds: ``teacher.kind``, or for ``auto`` the kind it chose."""
        kind = self.config.teacher.kind
        if kind != "auto":
            return kind
        return _read_json(self.teacher_choice_file, "fit-teacher with teacher.kind=auto writes it")["kind"]

    @property
    def teacher_outputs(self) -> Path:
        return self.path / "cache" / TEACHER_OUTPUTS

    @property
    def folds_file(self) -> Path:
        return self.path / "folds" / "folds.json"

    def folds_ids(self) -> list[list[str]]:
        """The ids each fold teacher held out (cross-fitting)."""
        return _read_json(self.folds_file, "fit-teacher with oof_folds >= 2 writes it")

    @property
    def reference(self) -> "RunFolder":
        """The no-privileged reference teacher fitted beside this teacher (``teacher.fit_reference``)."""
        return RunFolder(self.path / "reference")

    def fold(self, k: int) -> "RunFolder":
        return RunFolder(self.path / "folds" / str(k))

    def fold_runs(self) -> list["RunFolder"]:
        folds = sorted((p for p in (self.path / "folds").glob("*") if p.name.isdigit()), key=lambda p: int(p.name))
        return [RunFolder(p) for p in folds]

    # ---- content, parsed once ----
    @cached_property
    def config(self) -> RunConfig:
        try:
            text = self.config_file.read_text()
        except FileNotFoundError:
            raise RunFolderError(f"{self.config_file} not found: {self.path} is not a run folder") from None
        return config_from_dict(load_yaml(text, str(self.config_file)) or {}, str(self.config_file))

    @cached_property
    def info(self) -> dict:
        return _read_json(self.run_file, f"{self.path} is not a run folder")

    @property
    def role(self) -> str:
        return self.info["role"]

    def metrics(self) -> dict:
        return _read_json(self.metrics_file, "the run did not finish")

    def history(self) -> dict:
        return _read_json(self.history_file, "the run did not finish")

    def write(self, cfg: RunConfig, info: dict) -> None:
        save_config(cfg, self.config_file)
        atomic_write_json(self.run_file, info)
        self.__dict__.pop("config", None)
        self.__dict__.pop("info", None)

    def teacher_checkpoints(self) -> list[Path]:
        """The teacher's model file, then each fold teacher's (their hashes key the output cache)."""
        kind = self.teacher_kind
        paths = [self.teacher_model(kind)] + [f.teacher_model(kind) for f in self.fold_runs()]
        missing = [p for p in paths if not p.exists()]
        if missing:
            raise RunFolderError(f"teacher run {self.path} has no {missing[0]} (run `cpfd fit-teacher` first)")
        return paths


class CompareFolder:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def results_file(self) -> Path:
        return self.path / "results.json"

    @property
    def report_file(self) -> Path:
        return self.path / "report.md"

    def plot(self, name: str) -> Path:
        return self.path / f"{name}.png"

    def seed_dir(self, seed: int) -> Path:
        return self.path / f"seed_{seed}"

    def seeds(self) -> list[int]:
        return sorted(int(p.name.split("_", 1)[1]) for p in self.path.glob("seed_*") if p.name[5:].isdigit())

    def teacher(self, seed: int, kind: str) -> RunFolder:
        return RunFolder(self.seed_dir(seed) / f"teacher_{kind}")

    def arm(self, seed: int, name: str) -> RunFolder:
        return RunFolder(self.seed_dir(seed) / name)

    def runs(self, seed: int) -> list[RunFolder]:
        return [RunFolder(p) for p in sorted(self.seed_dir(seed).iterdir()) if (p / "run.json").exists()]

    def results(self) -> dict:
        return _read_json(self.results_file, "run `cpfd compare` or `cpfd report` first")

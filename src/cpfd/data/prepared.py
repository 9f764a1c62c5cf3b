"""Validate a dataset against the contract and turn it into tensors the models and losses read.

Everything here runs before any compute; every failure is collected and raised as one :class:`DatasetError`
that names file, row(s) and column. What the student may see (``student_inputs``) and what only the teacher may
see (``privileged``) are kept in separate fields from here on. Raw inputs become student inputs through
:mod:`cpfd.data.preprocess`, the path serving uses too.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cpfd.config import ExtractConfig
from cpfd.data.contract import SPLITS, DatasetError, DatasetSpec, Problem, load_spec
from cpfd.data.embeddings import MediaRow, check_decodable, decode_frames, default_cache, extract_frames, extract_ocr, extract_text
from cpfd.data.preprocess import (
    Issue,
    Preprocessor,
    SkippedRow,
    apply_media_policy,
    feature_block,
    media_problem,
    numeric_block,
    text_value,
    with_ocr,
    TEXT_SEPARATOR,
)
from cpfd.data.table import SOURCE_FILE, SOURCE_ROW, expand_columns, read_table, seeded_split
from cpfd.io import file_sha256
from cpfd.task_types import TaskType, class_name, is_missing, task_type

__all__ = ["PreparedData", "TaskInfo", "SkippedRow", "load_dataset"]


@dataclass
class TaskInfo:
    name: str
    type: str
    column: str
    classes: list[str]

    @property
    def kind(self) -> TaskType:
        return task_type(self.type)

    @property
    def n_outputs(self) -> int:
        return self.kind.n_outputs(self.classes)


@dataclass
class PreparedData:
    """A validated dataset as tensors; row order is the table's order."""

    name: str
    root: Path
    ids: np.ndarray
    id_column: str
    split: np.ndarray
    groups: np.ndarray | None
    tasks: list[TaskInfo]
    student_inputs: dict[str, torch.Tensor]
    feature_names: list[str]
    privileged: torch.Tensor
    privileged_names: list[str]
    labels: dict[str, torch.Tensor]
    label_mask: dict[str, torch.Tensor]
    fingerprint: str
    source: pd.DataFrame = field(repr=False)
    skipped: list[SkippedRow] = field(default_factory=list)
    extraction: dict = field(default_factory=dict)  # what extraction did, e.g. how many texts were truncated
    inputs_spec: dict = field(default_factory=dict)  # the dataset's student-input declaration (for serving)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def labelled_any(self) -> np.ndarray:
        mask = np.zeros(len(self), dtype=bool)
        for m in self.label_mask.values():
            mask |= m.numpy()
        return mask

    def indices(self, split: str, labelled_only: bool = False) -> np.ndarray:
        keep = self.split == split
        if labelled_only:
            keep &= self.labelled_any
        return np.flatnonzero(keep)

    def subset(self, keep: np.ndarray) -> "PreparedData":
        """The rows where ``keep`` is true, in order (used to drop rows skipped under the bad-media policy)."""
        idx = torch.from_numpy(np.flatnonzero(keep))
        return PreparedData(
            name=self.name, root=self.root, ids=self.ids[keep], id_column=self.id_column, split=self.split[keep],
            groups=self.groups[keep] if self.groups is not None else None, tasks=self.tasks,
            student_inputs={k: v[idx] for k, v in self.student_inputs.items()}, feature_names=self.feature_names,
            privileged=self.privileged[idx], privileged_names=self.privileged_names,
            labels={k: v[idx] for k, v in self.labels.items()}, label_mask={k: v[idx] for k, v in self.label_mask.items()},
            fingerprint=self.fingerprint, source=self.source.iloc[np.flatnonzero(keep)].reset_index(drop=True),
            skipped=list(self.skipped), extraction=dict(self.extraction), inputs_spec=self.inputs_spec)

    def task(self, name: str) -> TaskInfo:
        return next(t for t in self.tasks if t.name == name)

    def id_fraction(self) -> np.ndarray:
        """A number in [0, 1) per row from its id alone: stable under row order, sharding and other rows."""
        return np.array([int(hashlib.sha1(str(i).encode()).hexdigest()[:8], 16) / 2**32 for i in self.ids])

    def calibration_rows(self, share: float) -> np.ndarray:
        """The validation rows held out from teacher selection to fit its temperature (``share`` of them; all of
        validation when ``share`` is 0)."""
        val = self.split == "val"
        return val & (self.id_fraction() < share) if share > 0 else val


class _Collector:
    def __init__(self, df: pd.DataFrame, id_column: str | None):
        self.df = df
        self.id_column = id_column
        self.problems: list[Problem] = []

    def rows(self, mask: np.ndarray, column: str | None, message: str) -> None:
        """Record a problem for the rows in ``mask``, one entry per source file."""
        idx = np.flatnonzero(mask)
        if not len(idx):
            return
        sub = self.df.iloc[idx]
        for file, part in sub.groupby(SOURCE_FILE, sort=False):
            ids = [str(v) for v in part[self.id_column]] if self.id_column in part else []
            self.problems.append(Problem(str(file), message, column, part[SOURCE_ROW].astype(int).tolist(), ids))

    def issues(self, issues: list[Issue]) -> None:
        for issue in issues:
            self.rows(issue.mask, issue.column, issue.message)

    def file(self, file: str, message: str, column: str | None = None) -> None:
        self.problems.append(Problem(file, message, column))

    def locate(self, index: int) -> tuple[str, int, str]:
        """(file, 1-based row, id) of table row ``index``."""
        row_id = str(self.df[self.id_column].iat[index]) if self.id_column in self.df else ""
        return str(self.df[SOURCE_FILE].iat[index]), int(self.df[SOURCE_ROW].iat[index]), row_id


def _fingerprint(spec_path: Path, df: pd.DataFrame, split: np.ndarray) -> str:
    h = hashlib.sha256(spec_path.read_bytes())
    for file in sorted(df[SOURCE_FILE].unique()):
        h.update(file_sha256(file).encode())
    h.update("\n".join(split.tolist()).encode())
    return h.hexdigest()


def _text_values(df: pd.DataFrame, columns: list[str], out: _Collector) -> list[str]:
    """Join the text columns per row (:func:`cpfd.data.preprocess.text_value`); non-UTF-8 bytes are an error."""
    fields = []
    for col in columns:
        values = [text_value(v) for v in df[col].tolist()]
        out.rows(np.array([v is None for v in values], dtype=bool), col, "text is not valid UTF-8")
        fields.append(["" if v is None else v for v in values])
    return [TEXT_SEPARATOR.join(p for p in parts if p) for parts in zip(*fields)]


def load_dataset(folder: str | Path, seed: int = 0, on_bad_video: str = "fail", extract: ExtractConfig | None = None,
                 log=print, decode_check: ExtractConfig | None = None) -> PreparedData:
    """Validate ``folder`` against the contract and return its tensors (raises :class:`DatasetError`).

    Video, frames and text inputs become embeddings through ``extract`` (frozen encoders + cache); without it
    (``cpfd validate``) only the cheap checks run and those inputs are left out of ``student_inputs``, unless
    ``decode_check`` asks for every clip to be decoded once (``cpfd validate --decode``).
    """
    spec, root = load_spec(folder)
    spec_path = root / "dataset.yaml"
    df = read_table(root, spec.table, spec.allow_outside)
    yaml_file = str(spec_path)
    if not len(df):
        raise DatasetError([Problem(yaml_file, f"the table {spec.table!r} has no rows")])
    out = _Collector(df, spec.id if spec.id in df.columns else None)
    columns = list(df.columns)

    def require(column: str | None, role: str) -> None:
        if column is not None and column not in columns:
            out.file(yaml_file, f"{role} column {column!r} is not in the table", column)

    require(spec.id, "id")
    require(spec.split, "split")
    require(spec.group, "group")
    require(spec.inputs.video, "inputs.video")
    require(spec.inputs.frames, "inputs.frames")
    for col in spec.inputs.text or []:
        require(col, "inputs.text")
    for task in spec.tasks:
        require(task.column, f"task {task.name!r} label")
    feature_cols, unmatched = expand_columns(spec.inputs.features or [], columns)
    for pattern in unmatched:
        out.file(yaml_file, f"inputs.features glob {pattern!r} matches no column", pattern)
    privileged_cols, unmatched = expand_columns(spec.privileged, columns)
    for pattern in unmatched:
        out.file(yaml_file, f"privileged glob {pattern!r} matches no column", pattern)
    if out.problems:
        raise DatasetError(out.problems)

    student_cols = set(feature_cols) | set(spec.inputs.text or []) | {spec.inputs.video, spec.inputs.frames} - {None}
    for col in sorted(student_cols & set(privileged_cols)):
        out.file(yaml_file, "leakage: column is both a student input and privileged", col)
    for task in spec.tasks:
        if task.column in student_cols:
            out.file(yaml_file, f"leakage: label of task {task.name!r} is used as a student input", task.column)
        if task.column in privileged_cols:
            out.file(yaml_file, f"leakage: label of task {task.name!r} is used as a privileged feature", task.column)
        if task.column == spec.id:
            out.file(yaml_file, f"task {task.name!r} uses the id column as its label", task.column)
    if out.problems:
        raise DatasetError(out.problems)

    skipped: list[SkippedRow] = []
    for column, kind in ((spec.inputs.video, "video"), (spec.inputs.frames, "frames")):
        if column is None:
            continue
        bad = {i: reason for i, value in enumerate(df[column].tolist())
               if (reason := media_problem(root, value, kind, spec.allow_outside)) is not None}
        skipped += apply_media_policy(bad, on_bad_video, column, out.locate, log=log)
        if bad:
            df = df.drop(index=df.index[sorted(bad)]).reset_index(drop=True)
            out.df = df

    if skipped and not len(df):
        raise DatasetError([Problem(yaml_file, f"every row was skipped ({len(skipped)} rows with bad media); "
                                               "nothing is left to train on")])
    ids_raw = df[spec.id]
    empty_id = ids_raw.map(is_missing).to_numpy(dtype=bool)
    out.rows(empty_id, spec.id, "empty id")
    ids = ids_raw.map(lambda v: "" if is_missing(v) else class_name(v)).to_numpy(dtype=object)
    dup = pd.Series(ids).duplicated(keep=False).to_numpy() & ~empty_id
    out.rows(dup, spec.id, "duplicate id")

    student_inputs: dict[str, torch.Tensor] = {}
    feature_names: list[str] = []
    if feature_cols:
        block, feature_names, issues = feature_block(df, feature_cols)
        out.issues(issues)
        if block is not None:
            student_inputs["features"] = torch.from_numpy(block)
    privileged, issues = numeric_block(df, privileged_cols, allow_nan=True, what="a privileged feature")
    out.issues(issues)
    texts = _text_values(df, spec.inputs.text, out) if spec.inputs.text else None

    tasks: list[TaskInfo] = []
    labels: dict[str, torch.Tensor] = {}
    label_mask: dict[str, torch.Tensor] = {}
    for spec_task in spec.tasks:
        kind = task_type(spec_task.type)
        y, mask, classes, bad = kind.parse_labels(df[spec_task.column].tolist(), spec_task.classes)
        out.rows(bad, spec_task.column, f"task {spec_task.name!r}: {kind.invalid_label_message(classes)}")
        tasks.append(TaskInfo(spec_task.name, spec_task.type, spec_task.column, classes))
        labels[spec_task.name] = torch.from_numpy(y)
        label_mask[spec_task.name] = torch.from_numpy(mask)
    labelled = np.zeros(len(df), dtype=bool)
    for m in label_mask.values():
        labelled |= m.numpy()

    if spec.split:
        split_raw = df[spec.split].map(lambda v: "" if is_missing(v) else str(v).strip().lower()).to_numpy(dtype=object)
        out.rows(~np.isin(split_raw, SPLITS), spec.split, "split value must be train, val or test")
        split = split_raw
    else:
        split = seeded_split(len(df), labelled, seed)

    no_priv = np.all(np.isnan(privileged), axis=1) if privileged_cols else np.ones(len(df), dtype=bool)
    out.rows(~labelled & (split != "train"), spec.split, "a row with no label must be in the train split")
    out.rows(~labelled & no_priv, None, "a row with no label must have privileged features (it is only distilled)")

    for name in SPLITS:
        if not np.any((split == name) & labelled):
            out.file(yaml_file, f"split {name!r} has no labelled rows", spec.split)
    for task in tasks:
        train_y = labels[task.name][torch.from_numpy((split == "train") & label_mask[task.name].numpy())]
        if not task.kind.varies(train_y):
            out.file(yaml_file, f"task {task.name!r}{task.kind.single_class_message}", task.column)

    if out.problems:
        raise DatasetError(out.problems)

    groups = df[spec.group].map(lambda v: "(none)" if is_missing(v) else str(v)).to_numpy(dtype=object) if spec.group else None
    data = PreparedData(
        name=spec.name,
        root=root,
        ids=ids,
        id_column=spec.id,
        split=split.astype(object),
        groups=groups,
        tasks=tasks,
        student_inputs=student_inputs,
        feature_names=feature_names,
        privileged=torch.from_numpy(privileged),
        privileged_names=privileged_cols,
        labels=labels,
        label_mask=label_mask,
        fingerprint=_fingerprint(spec_path, df, split),
        source=df,
        skipped=skipped,
        inputs_spec={**spec.inputs.model_dump(), "features": feature_cols},
    )
    if extract is not None and (spec.inputs.video or spec.inputs.frames or spec.inputs.text):
        data = _attach_embeddings(data, spec, texts, extract, on_bad_video, log)
    elif decode_check is not None and (spec.inputs.video or spec.inputs.frames):
        column = spec.inputs.video or spec.inputs.frames
        kind = "video" if spec.inputs.video else "frames"
        rows = [MediaRow(i, data.ids[i], root / str(v), kind) for i, v in enumerate(df[column].tolist())]
        bad = check_decodable(rows, decode_check)
        data.skipped += apply_media_policy(bad, on_bad_video, column, _Collector(df, spec.id).locate, log)
        if bad:
            keep = np.ones(len(data), dtype=bool)
            keep[list(bad)] = False
            data = data.subset(keep)
    return data


def _attach_embeddings(data: PreparedData, spec: DatasetSpec, texts: list[str] | None, cfg: ExtractConfig,
                       on_bad_video: str, log) -> PreparedData:
    """Decode, read on-screen text and encode through the cache; undecodable media follow the bad-media policy."""
    df = data.source
    cache = default_cache(data.root, cfg)
    pre = Preprocessor(cfg)
    column = spec.inputs.video or spec.inputs.frames
    if column:
        kind = "video" if spec.inputs.video else "frames"
        rows = [MediaRow(i, data.ids[i], data.root / str(v), kind) for i, v in enumerate(df[column].tolist())]
        if cfg.ocr:
            read = extract_ocr(rows, pre, cache, log)
            texts = [with_ocr(texts[i] if texts else "", read[i]) for i in range(len(rows))]
        if cfg.end_to_end:
            vectors, report = decode_frames(rows, cfg, log)
        else:
            vectors, report = extract_frames(rows, pre, cache, log)
        locate = _Collector(df, spec.id).locate
        data.skipped += apply_media_policy(report.bad, on_bad_video, column, locate, log)
        if report.bad:
            keep = np.ones(len(data), dtype=bool)
            keep[list(report.bad)] = False
            data = data.subset(keep)
            texts = [t for t, k in zip(texts, keep) if k] if texts is not None else None
            vectors = {new: vectors[old] for new, old in enumerate(np.flatnonzero(keep))}
        frames = np.stack([vectors[i] for i in range(len(data))])
        data.student_inputs["pixels" if cfg.end_to_end else "frames"] = torch.from_numpy(frames)
        data.student_inputs["frames_mask"] = torch.ones(frames.shape[:2], dtype=torch.bool)
    if texts is not None:
        counts = pre.text_encoder.token_counts(texts)
        cut = sum(c > cfg.max_tokens for c in counts)
        data.extraction["text"] = {"texts": len(texts), "truncated": cut, "max_tokens": cfg.max_tokens,
                                   "truncation": cfg.text_truncation,
                                   "median_tokens": float(np.median(counts)) if counts else 0.0}
        if cut:
            log(f"extract: {cut} of {len(texts)} texts are longer than max_tokens={cfg.max_tokens} tokens (median "
                f"{np.median(counts):.0f}) and were cut ({cfg.text_truncation}); raise extract.max_tokens to keep more")
        if cfg.end_to_end:
            ids, mask = pre.text_encoder.tokenize(texts)
            data.student_inputs["text_ids"], data.student_inputs["text_mask"] = ids, mask
            return data
        tokens, mask = extract_text(texts, pre, cache)
        data.student_inputs["text"] = torch.from_numpy(tokens)
        data.student_inputs["text_mask"] = torch.from_numpy(mask)
    return data

"""Validate a dataset against the contract and turn it into tensors the models and losses read.

Everything here runs before any compute; every failure is collected and raised as one :class:`DatasetError`
that names file, row(s) and column. What the student may see (``student_inputs``) and what only the teacher may
see (``privileged``) are kept in separate fields from here on.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cpfd.data.embeddings import (
    MAX_TEXT_CHARS,
    TEXT_SEPARATOR,
    ExtractConfig,
    MediaRow,
    decode_frames,
    default_cache,
    extract_frames,
    extract_text,
)
from cpfd.data.media import find_bad_media
from cpfd.data.contract import SPLITS, DatasetError, DatasetSpec, Problem, TaskSpec, load_spec
from cpfd.data.table import SOURCE_FILE, SOURCE_ROW, expand_columns, read_table, seeded_split
from cpfd.io import file_sha256

TRUE_VALUES = {"1", "true", "yes"}
FALSE_VALUES = {"0", "false", "no"}


@dataclass
class TaskInfo:
    name: str
    type: str
    column: str
    classes: list[str]

    @property
    def n_outputs(self) -> int:
        return 1 if self.type == "binary" else len(self.classes)


@dataclass
class SkippedRow:
    file: str
    row: int
    id: str
    column: str
    reason: str


@dataclass
class PreparedData:
    """A validated dataset as tensors; row order is the table's order."""

    name: str
    root: Path
    ids: np.ndarray
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
            name=self.name, root=self.root, ids=self.ids[keep], split=self.split[keep],
            groups=self.groups[keep] if self.groups is not None else None, tasks=self.tasks,
            student_inputs={k: v[idx] for k, v in self.student_inputs.items()}, feature_names=self.feature_names,
            privileged=self.privileged[idx], privileged_names=self.privileged_names,
            labels={k: v[idx] for k, v in self.labels.items()}, label_mask={k: v[idx] for k, v in self.label_mask.items()},
            fingerprint=self.fingerprint, source=self.source.iloc[np.flatnonzero(keep)].reset_index(drop=True),
            skipped=list(self.skipped), inputs_spec=self.inputs_spec)

    def task(self, name: str) -> TaskInfo:
        return next(t for t in self.tasks if t.name == name)


def _is_missing(value) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip() == ""


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

    def file(self, file: str, message: str, column: str | None = None) -> None:
        self.problems.append(Problem(file, message, column))


def _numeric_block(df: pd.DataFrame, columns: list[str], out: _Collector, allow_nan: bool, what: str) -> np.ndarray:
    block = np.zeros((len(df), len(columns)), dtype=np.float32)
    for j, col in enumerate(columns):
        raw = df[col]
        values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64)
        bad_type = np.isnan(values) & ~raw.isna().to_numpy()
        out.rows(bad_type, col, f"non-numeric value in {what}")
        if not allow_nan:
            out.rows(raw.isna().to_numpy(), col, f"NaN/missing value in {what} (student inputs must be complete)")
        out.rows(np.isinf(values), col, f"infinite value in {what}")
        block[:, j] = values
    return block


def _list_block(df: pd.DataFrame, column: str, out: _Collector) -> np.ndarray | None:
    vectors = df[column].tolist()
    lengths = np.array([len(v) if isinstance(v, (list, tuple, np.ndarray)) else -1 for v in vectors])
    out.rows(lengths < 0, column, "not a list of numbers")
    valid = lengths[lengths >= 0]
    if not len(valid):
        return None
    expected = int(np.bincount(valid).argmax())
    out.rows((lengths >= 0) & (lengths != expected), column, f"inconsistent vector length (most rows have {expected})")
    block = np.zeros((len(df), expected), dtype=np.float32)
    bad = np.zeros(len(df), dtype=bool)
    for i, v in enumerate(vectors):
        if lengths[i] == expected:
            try:
                arr = np.asarray(v, dtype=np.float64)
            except (TypeError, ValueError):
                bad[i] = True
                continue
            if not np.all(np.isfinite(arr)):
                bad[i] = True
            block[i] = arr
    out.rows(bad, column, "NaN, inf or non-numeric entry in a student feature vector")
    return block


def _parse_labels(df: pd.DataFrame, task: TaskSpec, out: _Collector) -> tuple[np.ndarray, np.ndarray, list[str]]:
    raw = df[task.column].tolist()
    missing = np.array([_is_missing(v) if not isinstance(v, (list, tuple, np.ndarray)) else False for v in raw])
    if task.type == "multilabel":
        # An empty string or list is a labelled row with no tag; only null / NaN means "no label".
        missing = np.array([v is None or (isinstance(v, float) and math.isnan(v)) for v in raw])
    n = len(raw)
    if task.type == "binary":
        y = np.zeros(n, dtype=np.float32)
        bad = np.zeros(n, dtype=bool)
        for i, v in enumerate(raw):
            if missing[i]:
                continue
            key = str(v).strip().lower()
            if isinstance(v, (int, float, np.number)) and not isinstance(v, bool) and float(v) in (0.0, 1.0):
                y[i] = float(v)
            elif key in TRUE_VALUES or key in FALSE_VALUES:
                y[i] = 1.0 if key in TRUE_VALUES else 0.0
            else:
                bad[i] = True
        out.rows(bad, task.column, f"task {task.name!r}: binary label must be 0/1 or true/false")
        return y, ~missing & ~bad, ["0", "1"]

    if task.type == "multiclass":
        values = [None if missing[i] else _class_name(v) for i, v in enumerate(raw)]
        classes = list(task.classes) if task.classes else sorted({v for v in values if v is not None}, key=_natural)
        index = {c: k for k, c in enumerate(classes)}
        bad = np.array([v is not None and v not in index for v in values])
        out.rows(bad, task.column, f"task {task.name!r}: label outside the declared classes {classes}")
        y = np.array([index.get(v, -1) if v is not None else -1 for v in values], dtype=np.int64)
        return y, (y >= 0), classes

    sets: list[list[str] | None] = []
    for i, v in enumerate(raw):
        if missing[i]:
            sets.append(None)
        elif isinstance(v, (list, tuple, np.ndarray)):
            sets.append([_class_name(x) for x in v])
        else:
            sets.append([s.strip() for s in str(v).split("|") if s.strip()])
    classes = list(task.classes) if task.classes else sorted({c for s in sets if s for c in s}, key=_natural)
    index = {c: k for k, c in enumerate(classes)}
    bad = np.array([s is not None and any(c not in index for c in s) for s in sets])
    out.rows(bad, task.column, f"task {task.name!r}: label outside the declared classes {classes}")
    y = np.zeros((n, len(classes)), dtype=np.float32)
    for i, s in enumerate(sets):
        for c in s or []:
            if c in index:
                y[i, index[c]] = 1.0
    return y, ~missing & ~bad, classes


def _class_name(v) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v).strip()


def _natural(s: str):
    return (0, int(s), s) if s.lstrip("-").isdigit() else (1, 0, s)


def _fingerprint(spec_path: Path, df: pd.DataFrame, split: np.ndarray) -> str:
    h = hashlib.sha256(spec_path.read_bytes())
    for file in sorted(df[SOURCE_FILE].unique()):
        h.update(file_sha256(file).encode())
    h.update("\n".join(split.tolist()).encode())
    return h.hexdigest()


def _text_values(df: pd.DataFrame, columns: list[str], out: _Collector) -> list[str]:
    """Join the text columns per row; a missing or empty value is an empty string, non-UTF-8 bytes an error."""
    parts: list[list[str]] = [[] for _ in range(len(df))]
    for col in columns:
        bad = np.zeros(len(df), dtype=bool)
        for i, v in enumerate(df[col].tolist()):
            if isinstance(v, (bytes, bytearray)):
                try:
                    v = bytes(v).decode("utf-8")
                except UnicodeDecodeError:
                    bad[i] = True
                    continue
            if _is_missing(v):
                continue
            text = str(v).strip()
            if text:
                parts[i].append(text[:MAX_TEXT_CHARS])
        out.rows(bad, col, "text is not valid UTF-8")
    return [TEXT_SEPARATOR.join(p) for p in parts]


def load_dataset(folder: str | Path, seed: int = 0, on_bad_video: str = "fail", extract: ExtractConfig | None = None,
                 log=print) -> PreparedData:
    """Validate ``folder`` against the contract and return its tensors (raises :class:`DatasetError`).

    Video, frames and text inputs become embeddings through ``extract`` (frozen encoders + cache); without it
    (``cpfd validate``) only the cheap checks run and those inputs are left out of ``student_inputs``.
    """
    spec, root = load_spec(folder)
    spec_path = root / "dataset.yaml"
    df = read_table(root, spec.table)
    yaml_file = str(spec_path)
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
        bad = find_bad_media(df, root, column, kind)
        if bad.empty:
            continue
        if on_bad_video == "fail":
            for reason, part in bad.groupby("reason", sort=False):
                out.rows(np.isin(np.arange(len(df)), part["index"]), column, reason)
            raise DatasetError(out.problems)
        id_of = df[spec.id].astype(str).tolist()
        skipped += [SkippedRow(r.file, r.row, id_of[r.index], r.column, r.reason) for r in bad.itertuples()]
        df = df.drop(index=df.index[bad["index"].to_numpy()]).reset_index(drop=True)
        out.df = df

    ids_raw = df[spec.id]
    empty_id = ids_raw.map(_is_missing).to_numpy(dtype=bool)
    out.rows(empty_id, spec.id, "empty id")
    ids = ids_raw.map(lambda v: "" if _is_missing(v) else _class_name(v)).to_numpy(dtype=object)
    dup = pd.Series(ids).duplicated(keep=False).to_numpy() & ~empty_id
    out.rows(dup, spec.id, "duplicate id")

    student_inputs: dict[str, torch.Tensor] = {}
    feature_names = feature_cols
    if feature_cols:
        if len(feature_cols) == 1 and df[feature_cols[0]].map(lambda v: isinstance(v, (list, tuple, np.ndarray))).any():
            block = _list_block(df, feature_cols[0], out)
            feature_names = [f"{feature_cols[0]}[{k}]" for k in range(0 if block is None else block.shape[1])]
        else:
            block = _numeric_block(df, feature_cols, out, allow_nan=False, what="a student feature")
        if block is not None:
            student_inputs["features"] = torch.from_numpy(block)
    privileged = _numeric_block(df, privileged_cols, out, allow_nan=True, what="a privileged feature")
    texts = _text_values(df, spec.inputs.text, out) if spec.inputs.text else None

    tasks: list[TaskInfo] = []
    labels: dict[str, torch.Tensor] = {}
    label_mask: dict[str, torch.Tensor] = {}
    for task in spec.tasks:
        y, mask, classes = _parse_labels(df, task, out)
        tasks.append(TaskInfo(task.name, task.type, task.column, classes))
        labels[task.name] = torch.from_numpy(y)
        label_mask[task.name] = torch.from_numpy(mask)
    labelled = np.zeros(len(df), dtype=bool)
    for m in label_mask.values():
        labelled |= m.numpy()

    if spec.split:
        split_raw = df[spec.split].map(lambda v: "" if _is_missing(v) else str(v).strip().lower()).to_numpy(dtype=object)
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
        if task.type == "multilabel":
            varying = (train_y.min(0).values != train_y.max(0).values) if len(train_y) else torch.zeros(1, dtype=bool)
            if not bool(varying.any()):
                out.file(yaml_file, f"task {task.name!r}: no label varies in train (single class)", task.column)
        elif train_y.unique().numel() < 2:
            out.file(yaml_file, f"task {task.name!r} has a single class in train", task.column)

    if out.problems:
        raise DatasetError(out.problems)

    groups = df[spec.group].map(lambda v: "(none)" if _is_missing(v) else str(v)).to_numpy(dtype=object) if spec.group else None
    data = PreparedData(
        name=spec.name,
        root=root,
        ids=ids,
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
    return data


def _attach_embeddings(data: PreparedData, spec: DatasetSpec, texts: list[str] | None, cfg: ExtractConfig,
                       on_bad_video: str, log) -> PreparedData:
    """Run the frozen encoders (through the cache); undecodable media follow the fail/skip policy."""
    from cpfd.encoders import create_encoder

    df = data.source
    cache = default_cache(data.root, cfg)
    column = spec.inputs.video or spec.inputs.frames
    if column:
        kind = "video" if spec.inputs.video else "frames"
        rows = [MediaRow(i, data.ids[i], data.root / str(v), kind) for i, v in enumerate(df[column].tolist())]
        if cfg.ocr:
            from cpfd.encoders.ocr import ocr_texts

            read = ocr_texts(rows, cfg, cache, log)
            texts = [TEXT_SEPARATOR.join(p for p in ((texts[i] if texts else ""), read[i]) if p) for i in range(len(rows))]
        if cfg.end_to_end:
            vectors, report = decode_frames(rows, cfg, log)
        else:
            encoder = create_encoder(cfg.frames_encoder, **cfg.frames_encoder_args)
            vectors, report = extract_frames(rows, encoder, cfg, cache, log)
        if report.bad:
            bad = np.zeros(len(data), dtype=bool)
            bad[list(report.bad)] = True
            if on_bad_video == "fail":
                out = _Collector(df, spec.id)
                for i, reason in sorted(report.bad.items()):
                    out.rows(np.arange(len(data)) == i, column, reason)
                raise DatasetError(out.problems)
            for i, reason in sorted(report.bad.items()):
                data.skipped.append(SkippedRow(str(df[SOURCE_FILE].iat[i]), int(df[SOURCE_ROW].iat[i]), data.ids[i],
                                               column, reason))
                log(f"skipped {df[SOURCE_FILE].iat[i]} row {df[SOURCE_ROW].iat[i]} [{data.ids[i]}]: {reason}")
            keep = ~bad
            data = data.subset(keep)
            texts = [t for t, k in zip(texts, keep) if k] if texts is not None else None
            vectors = {new: vectors[old] for new, old in enumerate(np.flatnonzero(keep))}
        frames = np.stack([vectors[i] for i in range(len(data))])
        data.student_inputs["pixels" if cfg.end_to_end else "frames"] = torch.from_numpy(frames)
        data.student_inputs["frames_mask"] = torch.ones(frames.shape[:2], dtype=torch.bool)
    if texts is not None:
        encoder = create_encoder(cfg.text_encoder, max_tokens=cfg.max_tokens, **cfg.text_encoder_args)
        if cfg.end_to_end:
            ids, mask = encoder.tokenize(texts)
            data.student_inputs["text_ids"], data.student_inputs["text_mask"] = ids, mask
            return data
        tokens, mask = extract_text(texts, encoder, cfg, cache)
        data.student_inputs["text"] = torch.from_numpy(tokens)
        data.student_inputs["text_mask"] = torch.from_numpy(mask)
    return data

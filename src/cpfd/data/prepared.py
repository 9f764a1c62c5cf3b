"""Validate a dataset against the contract and turn it into tensors the models and losses read.

Everything here runs before any compute; every failure is collected and raised as one :class:`DatasetError`
that names file, row(s) and column. What the student may see (``student_inputs``) and what only the teacher may
see (``privileged``) are kept in separate fields from here on. Raw inputs become student inputs through
:mod:`cpfd.data.preprocess`, the path serving uses too.

The table is streamed a chunk at a time (:func:`cpfd.data.table.iter_table`) and every validated array is written
to the on-disk store (:mod:`cpfd.data.store`); the returned :class:`PreparedData` memory-maps it. Memory therefore
follows the chunk size, not the table: what stays in RAM per row is a few bytes (split code, id hash, source row)
plus, for video and text datasets, the paths and texts handed to the encoders.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cpfd.config import ExtractConfig
from cpfd.data import store
from cpfd.data.contract import SPLITS, DatasetError, DatasetSpec, Problem, load_spec
from cpfd.data.embeddings import (ExtractReport, MediaRow, ShardStore, cache_texts, check_decodable, decode_frames,
                                  default_cache, extract_frames, extract_ocr, log_frames_summary)
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
from cpfd.data.table import SOURCE_FILE, SOURCE_ROW, expand_columns, iter_table, seeded_split, table_columns, table_files
from cpfd.io import file_sha256
from cpfd.task_types import TaskType, class_name, is_missing, natural_order, task_type

__all__ = ["PreparedData", "TaskInfo", "SkippedRow", "encode_share", "load_dataset"]

SPLIT_CODES = {name: k for k, name in enumerate(SPLITS)}
EMBEDDING_BLOCK = 1024  # rows of frame/text embeddings read from the cache and written to the store at a time


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
    """A validated dataset as tensors; row order is the table's order.

    Loaded through :func:`load_dataset`, every array is a memory-mapped view of the on-disk store (``store``):
    indexing a batch of rows reads only those rows."""

    name: str
    root: Path
    ids: np.ndarray
    id_column: str
    split: np.ndarray | pd.Categorical  # compares and indexes like an array of "train" / "val" / "test"
    groups: np.ndarray | None
    tasks: list[TaskInfo]
    student_inputs: dict[str, torch.Tensor]
    feature_names: list[str]
    privileged: torch.Tensor
    privileged_names: list[str]
    labels: dict[str, torch.Tensor]
    label_mask: dict[str, torch.Tensor]
    fingerprint: str
    skipped: list[SkippedRow] = field(default_factory=list)
    extraction: dict = field(default_factory=dict)  # what extraction did, e.g. how many texts were truncated
    inputs_spec: dict = field(default_factory=dict)  # the dataset's student-input declaration (for serving)
    store: Path | None = None
    mapped: list[np.ndarray] = field(default_factory=list, repr=False)  # the memory maps behind the tensors
    readers: dict[str, store.RowReader] = field(default_factory=dict, repr=False)  # reads of the wide arrays

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

    def task(self, name: str) -> TaskInfo:
        return next(t for t in self.tasks if t.name == name)

    def id_fraction(self, rows: np.ndarray) -> np.ndarray:
        """A number in [0, 1) per row of ``rows`` from its id alone: stable under row order, sharding and other
        rows. Callers ask for the rows they need (validation rows): the ids are read with positioned reads, so the
        id pages of the whole table never enter the process."""
        ids = store.RowReader(self.ids)(np.asarray(rows, dtype=np.int64))
        return np.fromiter((int(hashlib.sha1(str(i).encode()).hexdigest()[:8], 16) / 2**32 for i in ids),
                           dtype=np.float64, count=len(ids))

    def calibration_rows(self, share: float) -> np.ndarray:
        """The validation rows held out from teacher selection to fit its temperature (``share`` of them; all of
        validation when ``share`` is 0)."""
        val = np.asarray(self.split == "val")
        if share <= 0:
            return val
        rows = np.flatnonzero(val)
        calib = np.zeros(len(self), dtype=bool)
        calib[rows[self.id_fraction(rows) < share]] = True
        return calib

    def student_rows(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """The student inputs of ``rows``, read from the store without mapping its pages (:class:`store.RowReader`)."""
        return {name: self.rows_of(value, rows) for name, value in self.student_inputs.items()}

    def privileged_rows(self, rows: torch.Tensor) -> torch.Tensor:
        return self.rows_of(self.privileged, rows)

    def rows_of(self, value: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """``value[rows]`` for one of this dataset's arrays; the wide stored ones (student inputs, privileged
        features) are read with positioned reads, so neither their pages nor a hand-back that evicts them from the
        page cache are needed."""
        reader = next((r for r in self.readers.values() if r.address == value.data_ptr()), None)
        return value[rows] if reader is None else torch.from_numpy(reader(rows.numpy()))

    def release_memory(self) -> None:
        """Let the kernel drop the store pages read so far and the heap memory a pass freed (a long pass over a big
        table stays small in RAM)."""
        store.release_pages(self.mapped)
        store.trim_heap()


class _Collector:
    """Problems of one chunk of the table, located by the chunk's file and row columns."""

    def __init__(self, df: pd.DataFrame, id_column: str | None, problems: "_Problems"):
        self.df = df
        self.id_column = id_column
        self.problems = problems

    def rows(self, mask: np.ndarray, column: str | None, message: str) -> None:
        """Record a problem for the rows in ``mask``, one entry per source file."""
        idx = np.flatnonzero(mask)
        if not len(idx):
            return
        sub = self.df.iloc[idx]
        for file, part in sub.groupby(SOURCE_FILE, sort=False):
            ids = [str(v) for v in part[self.id_column]] if self.id_column in part else []
            self.problems.add(Problem(str(file), message, column, part[SOURCE_ROW].astype(int).tolist(), ids))

    def issues(self, issues: list[Issue]) -> None:
        for issue in issues:
            self.rows(issue.mask, issue.column, issue.message)

    def locate(self, index: int) -> tuple[str, int, str]:
        """(file, 1-based row, id) of chunk row ``index``."""
        row_id = str(self.df[self.id_column].iat[index]) if self.id_column in self.df else ""
        return str(self.df[SOURCE_FILE].iat[index]), int(self.df[SOURCE_ROW].iat[index]), row_id


class _Problems:
    """Every problem found while streaming; one entry per (file, message, column), rows merged across chunks."""

    def __init__(self):
        self.found: dict[tuple, Problem] = {}

    def add(self, problem: Problem) -> None:
        key = (problem.file, problem.message, problem.column)
        if key in self.found and problem.rows:
            self.found[key].rows += problem.rows
            self.found[key].ids += problem.ids
        else:
            self.found.setdefault(key, problem)

    def file(self, file: str, message: str, column: str | None = None) -> None:
        self.add(Problem(file, message, column))

    def raise_any(self) -> None:
        if self.found:
            raise DatasetError(list(self.found.values()))


def _text_values(df: pd.DataFrame, columns: list[str], out: _Collector) -> list[str]:
    """Join the text columns per row (:func:`cpfd.data.preprocess.text_value`); non-UTF-8 bytes are an error."""
    fields = []
    for col in columns:
        values = [text_value(v) for v in df[col].tolist()]
        out.rows(np.array([v is None for v in values], dtype=bool), col, "text is not valid UTF-8")
        fields.append(["" if v is None else v for v in values])
    return [TEXT_SEPARATOR.join(p for p in parts if p) for parts in zip(*fields)]


# Extraction settings that change how the work is done, not what it produces: they do not make a new store.
NOT_IN_STORE_KEY = {"workers", "batch_size", "shard_size", "device", "cache_dir"}


def _semantic(cfg: ExtractConfig | None) -> str:
    return cfg.model_dump_json(exclude=NOT_IN_STORE_KEY) if cfg is not None else "-"


def _store_key(spec_path: Path, file_hashes: dict[str, str], spec: DatasetSpec, seed: int, on_bad_video: str,
               extract: ExtractConfig | None, decode_check: ExtractConfig | None) -> str:
    h = hashlib.sha256(f"store v{store.STORE_VERSION}\n".encode())
    h.update(spec_path.read_bytes())
    for file, digest in file_hashes.items():  # the same table reached by a relative or absolute path is one store
        h.update(f"{Path(file).resolve()}\0{digest}\n".encode())
    h.update(f"seed={seed if spec.split is None else '-'} media={on_bad_video}\n".encode())
    h.update(f"extract={_semantic(extract)}\ndecode={_semantic(decode_check)}\n".encode())
    return h.hexdigest()[:32]


def load_dataset(folder: str | Path, seed: int = 0, on_bad_video: str = "fail", extract: ExtractConfig | None = None,
                 log=print, decode_check: ExtractConfig | None = None) -> PreparedData:
    """Validate ``folder`` against the contract and return its tensors (raises :class:`DatasetError`).

    Video, frames and text inputs become embeddings through ``extract`` (frozen encoders + cache); without it
    (``cpfd validate``) only the cheap checks run and those inputs are left out of ``student_inputs``, unless
    ``decode_check`` asks for every clip to be decoded once (``cpfd validate --decode``). The result is stored on
    disk under the extraction cache; a later call on unchanged data and settings opens it without re-validating.
    """
    spec, root = load_spec(folder)
    spec_path = root / "dataset.yaml"
    paths = table_files(root, spec.table, spec.allow_outside)
    encodes = extract is not None and bool(spec.inputs.video or spec.inputs.frames or spec.inputs.text)
    checks_media = decode_check is not None and not encodes and bool(spec.inputs.video or spec.inputs.frames)
    file_hashes = {str(p): file_sha256(p) for p in paths}
    key = _store_key(spec_path, file_hashes, spec, seed, on_bad_video, extract if encodes else None,
                     decode_check if checks_media else None)
    cache = default_cache(root, extract or decode_check or ExtractConfig())
    found = store.find(cache, key)
    if found is not None:
        data = _open(*found)
        for row in data.skipped:
            log(f"skipped {row.file} row {row.row} [{row.id}] column {row.column!r}: {row.reason}")
        return data
    building = store.begin(cache)
    try:
        meta, media, texts = _build(spec, root, paths, building, seed, on_bad_video, log)
        meta["fingerprint"] = _fingerprint(spec_path, file_hashes, building)
        data = _open(building, meta)
        if encodes:
            meta = _attach_embeddings(data, meta, spec, media, texts, extract, on_bad_video, log)
        elif checks_media:
            rows = [MediaRow(i, data.ids[i], root / v, meta["media_kind"]) for i, v in enumerate(media)]
            bad = check_decodable(rows, decode_check)
            meta = _drop_bad_media(data, meta, bad, on_bad_video, log)
        del data
        final = store.commit(building, key, meta)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return _open(final, store.find(cache, key)[1])


def encode_share(folder: str | Path, extract: ExtractConfig, rank: int, world: int, seed: int = 0,
                 on_bad_video: str = "fail", log=print) -> int:
    """Encode one rank's share of the dataset (rows ``rank``, ``rank + world``, ...) into the embedding cache.

    Ranks on one or many machines that share the cache folder each run this (``cpfd extract --devices N``, under
    torchrun, or ``--shard K/N`` as separate jobs); every rank's clips land in its own cache shards, and an
    interrupted rank resumes where it stopped. The store is then built from the cache without encoding anything.
    With OCR, each rank also reads the on-screen text of its clips (cached in shards like the frames); the texts,
    which include that text, are encoded at the final build. Returns the number of rows in this share."""
    spec, root = load_spec(folder)
    paths = table_files(root, spec.table, spec.allow_outside)
    cache = default_cache(root, extract)
    scratch = store.begin(cache)
    try:
        meta, media, texts = _build(spec, root, paths, scratch, seed, on_bad_video, log)
        share = np.arange(rank, len(media if media is not None else texts or []), world)
        ids = store.open_array(scratch, "ids")[share].tolist()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if extract.end_to_end:
        return 0  # nothing is cached in end-to-end mode
    pre = Preprocessor(extract)
    if media is not None:
        rows = [MediaRow(int(i), row_id, root / media[i], meta["media_kind"]) for i, row_id in zip(share, ids)]
        extract_frames(rows, pre, cache, log)
        if extract.ocr:
            extract_ocr(rows, pre, cache, log)
    if texts is not None and not extract.ocr:
        cache_texts([texts[i] for i in share], pre, cache)
    return len(share)


def _fingerprint(spec_path: Path, file_hashes: dict[str, str], folder: Path) -> str:
    h = hashlib.sha256(spec_path.read_bytes())
    for file in sorted(file_hashes):
        h.update(file_hashes[file].encode())
    split = store.open_array(folder, "split")
    for start in range(0, len(split), store.COPY_ROWS):
        block = "\n".join(split[start : start + store.COPY_ROWS].tolist())
        h.update((block if start == 0 else "\n" + block).encode())
    return h.hexdigest()


def _infer_classes(spec: DatasetSpec, paths: list[Path]) -> dict[str, list[str]]:
    """Classes of the tasks that do not declare them: the union over the whole table, in natural order."""
    todo = [t for t in spec.tasks if not t.classes]
    if not todo:
        return {}
    found: dict[str, set[str]] = {t.name: set() for t in todo}
    for df in iter_table(paths, columns=sorted({t.column for t in todo})):
        for t in todo:
            if t.column in df:
                found[t.name].update(task_type(t.type).parse_labels(df[t.column].tolist(), None)[2])
    return {name: sorted(values, key=natural_order) for name, values in found.items()}


def _build(spec: DatasetSpec, root: Path, paths: list[Path], folder: Path, seed: int, on_bad_video: str, log
           ) -> tuple[dict, list[str] | None, list[str] | None]:
    """Stream and check the table, writing every array into ``folder``; returns (meta, media values, texts)."""
    yaml_file = str(root / "dataset.yaml")
    problems = _Problems()
    columns = table_columns(paths)

    def require(column: str | None, role: str) -> None:
        if column is not None and column not in columns:
            problems.file(yaml_file, f"{role} column {column!r} is not in the table", column)

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
        problems.file(yaml_file, f"inputs.features glob {pattern!r} matches no column", pattern)
    privileged_cols, unmatched = expand_columns(spec.privileged, columns)
    for pattern in unmatched:
        problems.file(yaml_file, f"privileged glob {pattern!r} matches no column", pattern)
    problems.raise_any()

    student_cols = set(feature_cols) | set(spec.inputs.text or []) | {spec.inputs.video, spec.inputs.frames} - {None}
    for col in sorted(student_cols & set(privileged_cols)):
        problems.file(yaml_file, "leakage: column is both a student input and privileged", col)
    for task in spec.tasks:
        if task.column in student_cols:
            problems.file(yaml_file, f"leakage: label of task {task.name!r} is used as a student input", task.column)
        if task.column in privileged_cols:
            problems.file(yaml_file, f"leakage: label of task {task.name!r} is used as a privileged feature", task.column)
        if task.column == spec.id:
            problems.file(yaml_file, f"task {task.name!r} uses the id column as its label", task.column)
    problems.raise_any()

    classes = {t.name: list(t.classes) if t.classes else None for t in spec.tasks} | _infer_classes(spec, paths)
    media_column = spec.inputs.video or spec.inputs.frames
    media_kind = "video" if spec.inputs.video else "frames"
    writers: dict[str, store.ArrayWriter] = {}

    def write(name: str, values: np.ndarray) -> None:
        writers.setdefault(name, store.ArrayWriter(folder, name)).append(values)

    files: dict[str, int] = {}
    id_hash, split_codes, labelled_parts, train_values = [], [], [], {t.name: [] for t in spec.tasks}
    media: list[str] | None = [] if media_column else None
    texts: list[str] | None = [] if spec.inputs.text else None
    feature_names: list[str] = []
    feature_length: int | None = None
    skipped: list[SkippedRow] = []
    n_table = 0
    for df in iter_table(paths):
        n_table += len(df)
        out = _Collector(df, spec.id, problems)
        if media_column:
            bad = {i: reason for i, value in enumerate(df[media_column].tolist())
                   if (reason := media_problem(root, value, media_kind, spec.allow_outside)) is not None}
            skipped += apply_media_policy(bad, on_bad_video, media_column, out.locate, log=log)
            if bad:
                df = df.drop(index=df.index[sorted(bad)]).reset_index(drop=True)
                out = _Collector(df, spec.id, problems)
            media += [str(v) for v in df[media_column].tolist()]
        if not len(df):
            continue
        file_codes = df[SOURCE_FILE].map(lambda f: files.setdefault(f, len(files))).to_numpy(dtype=np.int32)
        write("source_file", file_codes)
        write("source_row", df[SOURCE_ROW].to_numpy(dtype=np.int64))

        ids_raw = df[spec.id]
        empty_id = ids_raw.map(is_missing).to_numpy(dtype=bool)
        out.rows(empty_id, spec.id, "empty id")
        ids = ids_raw.map(lambda v: "" if is_missing(v) else class_name(v)).to_numpy(dtype=object)
        write("ids", ids)
        id_hash.append(np.where(empty_id, 0, pd.util.hash_array(ids)).astype(np.uint64))

        if feature_cols:
            block, names, issues = feature_block(df, feature_cols, feature_length)
            out.issues(issues)
            if block is not None:
                feature_names = feature_names or names
                feature_length = feature_length or (block.shape[1] if len(feature_cols) == 1 and names != feature_cols else None)
                write("student.features", block)
        privileged, issues = numeric_block(df, privileged_cols, allow_nan=True, what="a privileged feature")
        out.issues(issues)
        write("privileged", privileged)
        if texts is not None:
            texts += _text_values(df, spec.inputs.text, out)

        labelled = np.zeros(len(df), dtype=bool)
        masks = {}
        for spec_task in spec.tasks:
            kind = task_type(spec_task.type)
            y, mask, task_classes, bad = kind.parse_labels(df[spec_task.column].tolist(), classes[spec_task.name])
            out.rows(bad, spec_task.column, f"task {spec_task.name!r}: {kind.invalid_label_message(task_classes)}")
            classes[spec_task.name] = task_classes
            write(f"label.{spec_task.name}", y)
            write(f"mask.{spec_task.name}", mask)
            masks[spec_task.name] = (y, mask)
            labelled |= mask
        labelled_parts.append(labelled)

        if spec.split:
            split_raw = df[spec.split].map(lambda v: "" if is_missing(v) else str(v).strip().lower()).to_numpy(dtype=object)
            out.rows(~np.isin(split_raw, SPLITS), spec.split, "split value must be train, val or test")
            codes = np.array([SPLIT_CODES.get(v, 255) for v in split_raw], dtype=np.uint8)
            split_codes.append(codes)
            out.rows(~labelled & (split_raw != "train"), spec.split, "a row with no label must be in the train split")
            for name, (y, mask) in masks.items():
                _remember_values(train_values[name], y[mask & (codes == SPLIT_CODES["train"])])
        no_priv = np.all(np.isnan(privileged), axis=1) if privileged_cols else np.ones(len(df), dtype=bool)
        out.rows(~labelled & no_priv, None, "a row with no label must have privileged features (it is only distilled)")
        if spec.group:
            write("groups", df[spec.group].map(lambda v: "(none)" if is_missing(v) else str(v)).to_numpy(dtype=object))

    if not n_table:
        raise DatasetError([Problem(yaml_file, f"the table {spec.table!r} has no rows")])
    if skipped and not writers:
        raise DatasetError([Problem(yaml_file, f"every row was skipped ({len(skipped)} rows with bad media); "
                                               "nothing is left to train on")])
    for name in ("source_file", "source_row", "ids"):
        writers.pop(name).finish()
    _check_duplicate_ids(np.concatenate(id_hash), folder, files, spec.id, problems)

    labelled = np.concatenate(labelled_parts)
    if spec.split:
        codes = np.minimum(np.concatenate(split_codes), len(SPLITS) - 1)
    else:
        seeded = seeded_split(len(labelled), labelled, seed)
        codes = np.zeros(len(seeded), dtype=np.uint8)
        for name, code in SPLIT_CODES.items():
            codes[seeded == name] = code
        del seeded
        for spec_task in spec.tasks:
            _train_values_from_parts(writers, spec_task.name, codes, train_values[spec_task.name])
    for name, code in SPLIT_CODES.items():
        if not np.any((codes == code) & labelled):
            problems.file(yaml_file, f"split {name!r} has no labelled rows", spec.split)
    for spec_task in spec.tasks:
        kind = task_type(spec_task.type)
        values = train_values[spec_task.name]
        train_y = torch.from_numpy(np.concatenate(values)) if values else torch.zeros(0)
        if not kind.varies(train_y):
            problems.file(yaml_file, f"task {spec_task.name!r}{kind.single_class_message}", spec_task.column)
    problems.raise_any()

    store.write_codes(folder, "split", codes, SPLITS)
    for writer in writers.values():
        writer.finish()
    meta = {
        "name": spec.name, "root": str(root.resolve()), "id_column": spec.id, "files": list(files),
        "tasks": [{"name": t.name, "type": t.type, "column": t.column, "classes": classes[t.name]} for t in spec.tasks],
        "student_inputs": ["features"] if "student.features" in {w.name for w in writers.values()} else [],
        "feature_names": feature_names, "privileged_names": privileged_cols, "has_groups": bool(spec.group),
        "skipped": [vars(s) for s in skipped], "extraction": {}, "media_kind": media_kind,
        "inputs_spec": {**spec.inputs.model_dump(), "features": feature_cols},
    }
    return meta, media, texts


def _remember_values(seen: list[np.ndarray], values: np.ndarray) -> None:
    """Keep the distinct train label values (rows), enough to tell whether a task has two classes."""
    if len(values) and sum(len(s) for s in seen) < 4096:
        seen.append(np.unique(values, axis=0)[:4096])


def _train_values_from_parts(writers: dict[str, store.ArrayWriter], task: str, split: np.ndarray,  # codes
                             seen: list[np.ndarray]) -> None:
    """Train label values when the split is drawn after the pass (seeded): read back from the written parts."""
    start = 0
    for y_part, m_part in zip(writers[f"label.{task}"].parts, writers[f"mask.{task}"].parts):
        y, m = np.load(y_part), np.load(m_part)
        train = m & (split[start : start + len(y)] == SPLIT_CODES["train"])
        _remember_values(seen, y[train])
        start += len(y)


def _check_duplicate_ids(hashes: np.ndarray, folder: Path, files: dict[str, int], id_column: str,
                         problems: _Problems) -> None:
    """Duplicate ids through their 64-bit hashes; candidates are confirmed on the ids themselves."""
    sorted_h = np.sort(hashes)
    repeated = np.unique(sorted_h[1:][(sorted_h[1:] == sorted_h[:-1]) & (sorted_h[1:] != 0)])
    del sorted_h
    if not len(repeated):
        return
    candidates = np.flatnonzero(np.isin(hashes, repeated))
    ids = store.open_array(folder, "ids")
    values = pd.Series(ids[candidates].tolist())
    dup = candidates[values.duplicated(keep=False).to_numpy()]
    if not len(dup):
        return
    file_codes, rows = store.open_array(folder, "source_file"), store.open_array(folder, "source_row")
    names = list(files)
    for code in dict.fromkeys(file_codes[dup].tolist()):
        part = dup[file_codes[dup] == code]
        problems.add(Problem(names[code], "duplicate id", id_column, rows[part].astype(int).tolist(),
                             [str(i) for i in ids[part]]))


def _open(folder: Path, meta: dict) -> PreparedData:
    """The store at ``folder`` as :class:`PreparedData` (memory-mapped arrays)."""
    mapped: list[np.ndarray] = []

    def array(name: str) -> np.ndarray:
        mapped.append(store.open_array(folder, name))
        return mapped[-1]

    def tensor(name: str) -> torch.Tensor:
        return torch.from_numpy(array(name))

    tasks = [TaskInfo(**t) for t in meta["tasks"]]
    data = PreparedData(
        name=meta["name"], root=Path(meta["root"]), ids=array("ids"), id_column=meta["id_column"],
        split=_split_column(store.open_array(folder, "split")),
        groups=array("groups") if meta["has_groups"] else None, tasks=tasks,
        student_inputs={name: tensor(f"student.{name}") for name in meta["student_inputs"]},
        feature_names=meta["feature_names"], privileged=tensor("privileged"),
        privileged_names=meta["privileged_names"],
        labels={t.name: tensor(f"label.{t.name}") for t in tasks},
        label_mask={t.name: tensor(f"mask.{t.name}") for t in tasks},
        fingerprint=meta.get("fingerprint", ""), skipped=[SkippedRow(**s) for s in meta["skipped"]],
        extraction=meta["extraction"], inputs_spec=meta["inputs_spec"], store=folder, mapped=mapped)
    wide = {f"student.{name}" for name in meta["student_inputs"]} | {"privileged"}
    data.readers = {Path(m.filename).stem: store.RowReader(m) for m in mapped
                    if isinstance(m, np.memmap) and Path(m.filename).stem in wide}
    return data


def _split_column(mapped: np.ndarray) -> pd.Categorical:
    """The split as one byte a row in memory. Kept as the stored strings (20 bytes a row), every ``split == "val"``
    scan would map the whole array into the process again; the strings are read a block at a time with positioned
    reads for the same reason."""
    codes = np.empty(len(mapped), dtype=np.int8)
    read = store.RowReader(mapped)
    for start in range(0, len(mapped), store.COPY_ROWS):
        block = read(np.arange(start, min(start + store.COPY_ROWS, len(mapped))))
        codes[start : start + len(block)] = np.select([block == name for name in SPLITS], range(len(SPLITS)), -1)
    return pd.Categorical.from_codes(codes, categories=list(SPLITS))


def _locate(folder: Path, meta: dict):
    """(file, row, id) of store row ``index``, for the bad-media policy after extraction."""
    files, rows, ids = (store.open_array(folder, n) for n in ("source_file", "source_row", "ids"))
    return lambda index: (meta["files"][int(files[index])], int(rows[index]), str(ids[index]))


def _array_names(folder: Path) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.npy"))


def _drop_bad_media(data: PreparedData, meta: dict, bad: dict[int, str], on_bad_video: str, log) -> dict:
    """Apply the bad-media policy to rows found undecodable after the table pass; drops them from every array."""
    column = data.inputs_spec.get("video") or data.inputs_spec.get("frames")
    skipped = apply_media_policy(bad, on_bad_video, column, _locate(data.store, meta), log)
    if not skipped:
        return meta
    keep = np.ones(len(data), dtype=bool)
    keep[list(bad)] = False
    if not keep.any():
        raise DatasetError([Problem(str(data.root / "dataset.yaml"), f"every row was skipped ({len(data)} rows with "
                                                                     "bad media); nothing is left to train on")])
    data.mapped.clear()
    store.subset_arrays(data.store, _array_names(data.store), keep)
    meta["skipped"] = meta["skipped"] + [vars(s) for s in skipped]
    return meta


def _attach_embeddings(data: PreparedData, meta: dict, spec: DatasetSpec, media: list[str] | None,
                       texts: list[str] | None, cfg: ExtractConfig, on_bad_video: str, log) -> dict:
    """Decode, read on-screen text and encode through the cache into the store; undecodable media follow the
    bad-media policy."""
    folder = data.store
    cache = default_cache(data.root, cfg)
    pre = Preprocessor(cfg)
    bad: dict[int, str] = {}
    if media is not None:
        kind, n = meta["media_kind"], len(media)

        def media_rows(start: int = 0, stop: int | None = None) -> list[MediaRow]:
            return [MediaRow(i, str(data.ids[i]), data.root / media[i], kind) for i in range(start, min(stop or n, n))]

        if cfg.ocr:
            read = extract_ocr(media_rows(), pre, cache, log)
            texts = [with_ocr(texts[i] if texts else "", read[i]) for i in range(n)]
        name = "pixels" if cfg.end_to_end else "frames"
        frames = store.ArrayWriter(folder, f"student.{name}", np.float16 if cfg.store_float16 and not cfg.end_to_end else None)
        if cfg.end_to_end:  # decoded frames for a GPU run on a small dataset, kept whole
            vectors, report = decode_frames(media_rows(), cfg, log)
            size = cfg.sampling.size
            empty = np.zeros((cfg.sampling.num_frames, size, size, 3), dtype=np.uint8)
            frames.append(np.stack([vectors.get(i, empty) for i in range(n)]))
        else:
            # A block of rows at a time: rows, cache keys and vectors never exist for the whole dataset at once;
            # one opened cache serves every block.
            cached = ShardStore(cache / f"frames-{pre.frame_encoder.fingerprint()}", log)
            report = ExtractReport()
            empty = np.zeros((cfg.sampling.num_frames, pre.frame_encoder.dim), dtype=np.float32)
            for start in range(0, n, EMBEDDING_BLOCK):
                block = media_rows(start, start + EMBEDDING_BLOCK)
                vectors, _ = extract_frames(block, pre, cache, log, store=cached, report=report)
                frames.append(np.stack([vectors.get(r.index, empty) for r in block]))
            log_frames_summary(report, cached, cfg.sampling.num_frames, log)
        bad = dict(report.bad)
        frames.finish()
        store.write_array(folder, "student.frames_mask", np.ones((n, cfg.sampling.num_frames), dtype=bool))
        meta["student_inputs"] += [name, "frames_mask"]
    if texts is not None:
        # Tokenised a block at a time: the tokenizer's output for every text at once is about 1 KB a row.
        counts = np.concatenate([np.asarray(pre.text_encoder.token_counts(texts[start : start + EMBEDDING_BLOCK]),
                                            dtype=np.int64) for start in range(0, len(texts), EMBEDDING_BLOCK)]
                                + [np.zeros(0, dtype=np.int64)])
        cut = int((counts > cfg.max_tokens).sum())
        meta["extraction"]["text"] = {"texts": len(texts), "truncated": cut, "max_tokens": cfg.max_tokens,
                                      "truncation": cfg.text_truncation,
                                      "median_tokens": float(np.median(counts)) if len(counts) else 0.0}
        if cut:
            log(f"extract: {cut} of {len(texts)} texts are longer than max_tokens={cfg.max_tokens} tokens (median "
                f"{np.median(counts):.0f}) and were cut ({cfg.text_truncation}); raise extract.max_tokens to keep more")
        if cfg.end_to_end:
            ids, mask = pre.text_encoder.tokenize(texts)
            store.write_array(folder, "student.text_ids", ids.numpy())
            store.write_array(folder, "student.text_mask", np.asarray(mask))
        else:
            cached = cache_texts(texts, pre, cache)
            tokens_out = store.ArrayWriter(folder, "student.text", np.float16 if cfg.store_float16 else None)
            masks_out = store.ArrayWriter(folder, "student.text_mask")
            for start in range(0, len(texts), EMBEDDING_BLOCK):
                tokens, mask = cached.stack(texts[start : start + EMBEDDING_BLOCK])
                tokens_out.append(tokens)
                masks_out.append(mask)
            tokens_out.finish()
            masks_out.finish()
            meta["student_inputs"].append("text")
        meta["student_inputs"] += (["text_ids"] if cfg.end_to_end else []) + ["text_mask"]
    return _drop_bad_media(data, meta, bad, on_bad_video, log) if bad else meta

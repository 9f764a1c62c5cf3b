"""Teachers that are not the neural DF-X-VLM teacher (``teacher.kind``), producing the same cached logits.

- ``lightgbm``: gradient-boosted trees (LightGBM) on the student's precomputed vectors (pooled frame and text
  embeddings, numeric features) plus the privileged columns, missing values left to LightGBM. One model per task
  (per label for multilabel), early-stopped on the teacher's validation selection rows. For users whose
  privileged features are tabular, this is often the strongest teacher there is.
- ``logreg``: logistic regression on the same inputs (privileged missing values as the train mean plus a
  missing-indicator column), standardised, C chosen from a grid on the selection rows' log-loss: the
  ``logreg_privileged`` reference row as a teacher.
- ``auto`` (the default): the neural teacher and the ``logreg`` one are both fitted; the one with the lower log-loss
  on the calibration slice (validation rows neither was selected on) is kept, and its fold teachers are fitted: a
  network that has not learnt what a linear model gets from the same inputs does not stay the teacher, as far as
  those rows can tell (on a few dozen rows the choice is noisy). End-to-end inputs have no vectors for the
  regression: there the network is the teacher.
- ``file``: bring your own teacher outputs: a parquet of per-row logits keyed by the dataset's id column, one
  column ``logits_<task>`` per task (a number for binary, a list of C or L numbers otherwise). It is validated
  against the dataset (ids, shapes, tasks, finite values) and then cached and calibrated like any teacher.

None of them has a fused embedding for feature distillation; their "embedding" is the concatenated logits.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.preprocessing import StandardScaler

from cpfd.config import RunConfig
from cpfd.data.contract import DatasetError, Problem
from cpfd.data.prepared import PreparedData
from cpfd.errors import UsageError
from cpfd.evaluate.references import (
    CHUNK_ROWS,
    best_binary,
    best_multiclass,
    privileged_fill,
    privileged_matrix,
    student_matrix,
)
from cpfd.io import atomic_write_text

GBDT_PARAMS = {"n_estimators": 2000, "learning_rate": 0.05, "num_leaves": 15, "min_child_samples": 10,
               "subsample": 0.8, "subsample_freq": 1, "colsample_bytree": 0.8, "reg_lambda": 1.0,
               "deterministic": True, "force_row_wise": True, "verbose": -1}
EARLY_STOPPING_ROUNDS = 50
MISSING_CLASS_LOGIT = -30.0


def gbdt_matrix(data: PreparedData, use_privileged: bool = True) -> np.ndarray:
    student = student_matrix(data)
    if student is None:
        raise UsageError("teacher.kind=lightgbm needs precomputed student vectors (not extract.end_to_end)")
    if not use_privileged:
        return student
    return np.concatenate([student, data.privileged.numpy().astype(np.float64)], axis=1)


def _task_rows(data: PreparedData, train_rows: np.ndarray, select_within: np.ndarray | None):
    """Per task: (task, its labelled rows among ``train_rows``, its labelled selection rows of validation)."""
    val_mask = (data.split == "val") & (select_within if select_within is not None else True)
    for task in data.tasks:
        labelled = data.label_mask[task.name].numpy()
        yield task, np.intersect1d(train_rows, np.flatnonzero(labelled)), np.flatnonzero(val_mask & labelled)


def _fit_one(x: np.ndarray, y: np.ndarray, train: np.ndarray, val: np.ndarray, seed: int, threads: int) -> dict:
    """One booster; returns {"model": text, "classes": [...]} (classes the booster predicts, in column order)."""
    classes = np.unique(y[train])
    if len(classes) < 2:
        return {"model": None, "classes": classes.tolist()}
    model = lgb.LGBMClassifier(**GBDT_PARAMS, random_state=seed, n_jobs=threads)
    fit_args = {}
    if len(val) and set(np.unique(y[val])) <= set(classes):
        fit_args = {"eval_X": (x[val],), "eval_y": (y[val],),
                    "callbacks": [lgb.early_stopping(EARLY_STOPPING_ROUNDS, verbose=False)]}
    model.fit(x[train], y[train], **fit_args)
    return {"model": model.booster_.model_to_string(), "classes": model.classes_.tolist()}


def fit_gbdt(data: PreparedData, cfg: RunConfig, model_file: Path, train_rows: np.ndarray,
             select_within: np.ndarray | None) -> None:
    """Fit the LightGBM teacher on ``train_rows`` and write its boosters to ``model_file``."""
    x = gbdt_matrix(data, cfg.teacher.use_privileged)
    # One thread below ~10k rows: OpenMP spin-waiting costs more than it gains there, and far more on a busy machine.
    threads = max(1, torch.get_num_threads()) if len(x) > 10_000 else 1
    boosters = {}
    for task, train, val in _task_rows(data, train_rows, select_within):
        y = data.labels[task.name].numpy()
        columns = [y[:, k] for k in range(y.shape[1])] if task.kind.per_label else [y]
        boosters[task.name] = [_fit_one(x, col.astype(int), train, val, cfg.train.seed, threads) for col in columns]
    atomic_write_text(model_file, json.dumps({"use_privileged": cfg.teacher.use_privileged, "tasks": boosters}))


def gbdt_outputs(model_file: Path, data: PreparedData) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Raw scores (logits) of the saved boosters for every row."""
    saved = json.loads(model_file.read_text())
    x = gbdt_matrix(data, saved["use_privileged"])
    boosters = saved["tasks"]
    logits = {}
    for task in data.tasks:
        parts = []
        for entry in boosters[task.name]:
            if entry["model"] is None:  # one class in train: a constant, very sure logit
                parts.append(np.full((len(x), 1), 30.0 if entry["classes"] and entry["classes"][0] == 1 else -30.0))
                continue
            raw = lgb.Booster(model_str=entry["model"]).predict(x, raw_score=True)
            parts.append(raw.reshape(len(x), -1))
        if task.kind.per_label or task.n_outputs == 1:
            z = np.concatenate(parts, axis=1)
        else:
            z = np.full((len(x), task.n_outputs), MISSING_CLASS_LOGIT)
            z[:, boosters[task.name][0]["classes"]] = parts[0]
        logits[task.name] = torch.from_numpy(z.astype(np.float32))
    return logits, torch.cat(list(logits.values()), dim=1)


def _linear_inputs(data: PreparedData, saved: dict, rows: np.ndarray | None = None) -> np.ndarray:
    """Student vectors + privileged columns (filled as at fit time) of ``rows`` (default: every row)."""
    x = student_matrix(data, rows)
    if x is None:
        raise UsageError("teacher.kind=logreg needs precomputed student vectors (not extract.end_to_end)")
    return np.concatenate([x, privileged_matrix(data, saved, rows)], axis=1) if saved["use_privileged"] else x


def fit_logreg(data: PreparedData, cfg: RunConfig, model_file: Path, train_rows: np.ndarray,
               select_within: np.ndarray | None) -> None:
    """Fit the logistic-regression teacher on the labelled rows of ``train_rows`` (C from the reference's grid by
    log-loss on the selection rows) and write its coefficients, scaler and fill values to ``model_file`` (JSON).
    Missing privileged values are filled from every train row (label-free), as in the ``logreg_privileged``
    reference, so with ``calibration_share = 0`` this teacher is that reference. Only the rows it fits and selects
    on are read into memory, so on a big table with few labels its memory follows the labels."""
    saved: dict = {"use_privileged": cfg.teacher.use_privileged}
    if cfg.teacher.use_privileged:
        saved |= privileged_fill(data, data.indices("train"))
    per_task = list(_task_rows(data, train_rows, select_within))
    needed = np.unique(np.concatenate([np.concatenate([train, val]) for _, train, val in per_task]))
    x = _linear_inputs(data, saved, needed)
    saved["tasks"] = {}
    for task, train, val in per_task:
        train, val = np.searchsorted(needed, train), np.searchsorted(needed, val)  # positions in ``x``
        scaler = StandardScaler().fit(x[train])
        z = scaler.transform(x)
        y = data.labels[task.name].numpy()[needed]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            if task.kind.per_label or task.n_outputs == 1:
                columns = [y[:, k] for k in range(y.shape[1])] if task.kind.per_label else [y]
                models = [best_binary(z, col.astype(int), train, val) for col in columns]
                entries = [{"constant": m} if isinstance(m, float) else
                           {"coef": m.coef_[0].tolist(), "intercept": float(m.intercept_[0])} for m in models]
            else:
                m = best_multiclass(z, y.astype(int), train, val)
                entries = [{"coef": m.coef_.tolist(), "intercept": m.intercept_.tolist(),
                            "classes": m.classes_.tolist()}]
        saved["tasks"][task.name] = {"mean": scaler.mean_.tolist(), "scale": scaler.scale_.tolist(),
                                     "models": entries}
    atomic_write_text(model_file, json.dumps(saved))


def logreg_outputs(model_file: Path, data: PreparedData) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Logits of the saved logistic regressions for every row (binary: the decision value; multiclass: the
    log-probabilities of the classes seen in train, ``MISSING_CLASS_LOGIT`` for the others), computed
    ``CHUNK_ROWS`` rows at a time."""
    saved = json.loads(model_file.read_text())
    logits = {t.name: np.empty((len(data), t.n_outputs), dtype=np.float32) for t in data.tasks}
    for start in range(0, len(data), CHUNK_ROWS):
        rows = np.arange(start, min(start + CHUNK_ROWS, len(data)))
        x = _linear_inputs(data, saved, rows)
        for task in data.tasks:
            fitted = saved["tasks"][task.name]
            z = (x - np.asarray(fitted["mean"])) / np.asarray(fitted["scale"])
            entries = fitted["models"]
            if task.kind.per_label or task.n_outputs == 1:
                out = np.stack([np.full(len(z), e["constant"]) if "constant" in e else z @ np.asarray(e["coef"])
                                + e["intercept"] for e in entries], axis=1)
            else:
                e = entries[0]
                scores = z @ np.asarray(e["coef"]).T + np.asarray(e["intercept"])
                if scores.shape[1] == 1:  # two classes seen in train: sklearn keeps one binary column
                    scores = np.concatenate([-scores / 2, scores / 2], axis=1)
                out = np.full((len(z), task.n_outputs), MISSING_CLASS_LOGIT)
                out[:, e["classes"]] = scores - np.logaddexp.reduce(scores, axis=1, keepdims=True)
            logits[task.name][rows] = out
    tensors = {name: torch.from_numpy(v) for name, v in logits.items()}
    return tensors, torch.cat(list(tensors.values()), dim=1)


def import_outputs(path: str | Path, data: PreparedData, target: Path, id_column: str) -> None:
    """Validate a teacher-outputs parquet against ``data`` and keep a copy in the teacher's run folder."""
    read_outputs(Path(path), data, id_column)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, target)


def read_outputs(path: Path, data: PreparedData, id_column: str) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Per-task logits for every dataset row from a teacher-outputs parquet; every mismatch is a DatasetError
    naming the file, row(s) and column."""
    try:
        table = pq.read_table(path).to_pandas()
    except (OSError, ValueError) as err:
        raise DatasetError([Problem(str(path), f"teacher outputs cannot be read: {err}")]) from None
    problems = []
    if id_column not in table.columns:
        raise DatasetError([Problem(str(path), f"no id column {id_column!r} (the dataset's id column)", id_column)])
    ids = table[id_column].astype(str)
    dup = np.flatnonzero(ids.duplicated(keep=False).to_numpy())
    if len(dup):
        problems.append(Problem(str(path), "duplicate id", id_column, (dup + 1).tolist(), ids.iloc[dup].tolist()))
    position = {v: k for k, v in enumerate(ids)}
    missing = [i for i in data.ids if i not in position]
    if missing:
        problems.append(Problem(str(path), f"{len(missing)} dataset row(s) have no teacher outputs", id_column,
                                ids=list(missing)))
    logits = {}
    for task in data.tasks:
        col = f"logits_{task.name}"
        if col not in table.columns:
            problems.append(Problem(str(path), f"no column for task {task.name!r}", col))
            continue
        width = task.n_outputs
        values = np.full((len(data), width), np.nan, dtype=np.float64)
        bad = []
        for row, row_id in enumerate(data.ids):
            k = position.get(row_id)
            if k is None:
                continue
            v = table[col].iat[k]
            try:
                arr = np.asarray(v, dtype=np.float64).reshape(-1)
            except (TypeError, ValueError):
                arr = np.array([])
            if arr.shape != (width,) or not np.all(np.isfinite(arr)) or np.any(np.abs(arr) > 3.4e38):
                bad.append(k)
                continue
            values[row] = arr
        if bad:
            problems.append(Problem(str(path), f"task {task.name!r}: expected {width} finite logit(s) per row", col,
                                    [k + 1 for k in sorted(bad)], [ids.iat[k] for k in sorted(bad)]))
        logits[task.name] = torch.from_numpy(values.astype(np.float32))
    if problems:
        raise DatasetError(problems)
    return logits, torch.cat(list(logits.values()), dim=1)


def outputs_frame(ids: list[str], logits: dict[str, np.ndarray], id_column: str) -> pd.DataFrame:
    """A teacher-outputs table in the format :func:`read_outputs` takes (for users writing one)."""
    frame = pd.DataFrame({id_column: ids})
    for task, z in logits.items():
        frame[f"logits_{task}"] = [float(r[0]) if len(r) == 1 else [float(x) for x in r] for r in np.asarray(z)]
    return frame

"""Hidden labels for the oracle-gate control (``cpfd compare --oracle-labels FILE``).

A benchmark knows the labels of the rows it hands out unlabelled. The oracle gate (``w_i = 1[teacher argmax = y_i]``
on every row) uses them to show the ceiling of any confidence weighting on that data. They are read into an
:class:`OracleLabels` object that lives beside :class:`~cpfd.data.prepared.PreparedData`, never inside it: no
training input, loss, model or non-oracle arm can see them. Only the ``oracle_gate`` confidence reads them
(through :class:`~cpfd.distill.context.TaskContext`), and the weight diagnostics use them to count the weight
mass a teacher spends on rows it gets wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch

from cpfd.data.contract import DatasetError, Problem
from cpfd.data.prepared import PreparedData


@dataclass(frozen=True)
class OracleLabels:
    """Labels (and which rows have one) per task, aligned with the dataset's rows, train split only."""

    path: str
    labels: dict[str, torch.Tensor]
    mask: dict[str, torch.Tensor]

    @property
    def rows(self) -> int:
        return int(np.any([m.numpy() for m in self.mask.values()], axis=0).sum()) if self.mask else 0


def _read(path: Path) -> pd.DataFrame:
    try:
        if path.suffix.lower() == ".parquet":
            return pq.read_table(path).to_pandas()
        if path.suffix.lower() == ".csv":
            return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except (OSError, ValueError) as err:
        raise DatasetError([Problem(str(path), f"oracle labels cannot be read: {err}")]) from None
    raise DatasetError([Problem(str(path), "oracle labels must be a .parquet or .csv file")])


def load_oracle_labels(path: str | Path, data: PreparedData) -> OracleLabels:
    """Read and check an oracle-labels table: the dataset's id column plus one column per task, named like the
    task's label column. Every id must be a train row of the dataset; a row the dataset already labels must carry
    the same label. Each mismatch is a :class:`DatasetError` naming the file, row and column."""
    path = Path(path)
    table = _read(path)
    problems: list[Problem] = []
    if data.id_column not in table.columns:
        raise DatasetError([Problem(str(path), f"no id column {data.id_column!r} (the dataset's id column)",
                                    data.id_column)])
    ids = table[data.id_column].astype(str).to_numpy()
    file_rows = np.arange(len(table)) + 2  # 1-based, after the header line
    dup = pd.Series(ids).duplicated(keep=False).to_numpy()
    if dup.any():
        problems.append(Problem(str(path), "duplicate id", data.id_column, file_rows[dup].tolist(), ids[dup].tolist()))
    position = {v: k for k, v in enumerate(data.ids)}
    where = np.array([position.get(i, -1) for i in ids], dtype=np.int64)
    unknown = where < 0
    if unknown.any():
        problems.append(Problem(str(path), "id not in the dataset", data.id_column, file_rows[unknown].tolist(),
                                ids[unknown].tolist()))
    not_train = ~unknown & (data.split[np.maximum(where, 0)] != "train")
    if not_train.any():
        problems.append(Problem(str(path), "oracle labels are for train rows only (val/test labels are the "
                                "dataset's own)", data.id_column, file_rows[not_train].tolist(), ids[not_train].tolist()))
    columns = [t for t in data.tasks if t.column in table.columns]
    if not columns:
        problems.append(Problem(str(path), "no label column of any task (expected one of "
                                f"{[t.column for t in data.tasks]})"))
    labels, mask = {}, {}
    ok = ~unknown & ~not_train & ~dup
    for task in columns:
        y, has, _, bad = task.kind.parse_labels(table[task.column].tolist(), task.classes)
        if bad.any():
            problems.append(Problem(str(path), f"task {task.name!r}: {task.kind.invalid_label_message(task.classes)}",
                                    task.column, file_rows[bad].tolist(), ids[bad].tolist()))
        rows = where[ok & has]
        own = data.label_mask[task.name].numpy()[rows]
        clash = own & ~np.all(np.asarray(data.labels[task.name].numpy()[rows]).reshape(len(rows), -1)
                              == np.asarray(y[ok & has]).reshape(len(rows), -1), axis=1)
        if clash.any():
            at = np.flatnonzero(ok & has)[clash]
            problems.append(Problem(str(path), f"task {task.name!r}: differs from the dataset's own label",
                                    task.column, file_rows[at].tolist(), ids[at].tolist()))
        full = torch.zeros_like(data.labels[task.name])
        full[torch.from_numpy(rows)] = torch.from_numpy(np.asarray(y[ok & has])).to(full.dtype)
        present = torch.zeros(len(data), dtype=torch.bool)
        present[torch.from_numpy(rows)] = True
        labels[task.name], mask[task.name] = full, present
    if problems:
        raise DatasetError(problems)
    return OracleLabels(str(path), labels, mask)

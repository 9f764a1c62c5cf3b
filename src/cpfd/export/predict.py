"""``cpfd predict``: stream a dataset through a bundle and write per-task probabilities and labels to Parquet.

Rows are read a chunk at a time (bounded memory) and go through the bundle's preprocessing (the training path's);
privileged columns are ignored (the log says which). A row whose inputs cannot be used (bad video, non-numeric
or out-of-range feature) is written with its file, row, column and reason in ``error`` and no prediction: nothing
is dropped, and one bad row never fails its neighbours.
"""

from __future__ import annotations

import glob
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from cpfd.data.contract import DatasetError, Problem, load_spec
from cpfd.data.preprocess import feature_block, media_problem
from cpfd.data.table import expand_columns, read_chunks, table_columns
from cpfd.data.video import MediaError
from cpfd.errors import UsageError
from cpfd.io import atomic_write
from cpfd.export.runtime import InputError, StudentBundle
from cpfd.task_types import is_missing, task_type


CHUNK_BYTES = 64 * 2**20  # default chunk: about this many bytes of decoded inputs
MAX_CHUNK_ROWS = 8_192  # larger chunks only add activation memory in the model, not speed


def chunk_rows(bundle: StudentBundle, n_feature_columns: int) -> int:
    """Rows per chunk so that a chunk's decoded inputs take about :data:`CHUNK_BYTES`: numeric features as float64
    while parsed, decoded frames as uint8 RGB, text as a few KB."""
    per_row = 8 * max(n_feature_columns, 1) + 64
    if "frames" in bundle.input_names or bundle.reads_ocr:
        sampling = bundle.pre.cfg.sampling
        per_row += sampling.num_frames * 3 * sampling.size**2
    if "text" in bundle.input_names:
        per_row += 4096
    return int(max(1, min(MAX_CHUNK_ROWS, CHUNK_BYTES // per_row)))


def predict_dataset(bundle: StudentBundle, folder: str | Path, out_path: str | Path, batch_rows: int | None = None,
                    log: Callable[[str], None] = print, progress: bool = True) -> int:
    """Score every row of the dataset into ``out_path``, ``batch_rows`` rows at a time (default: sized by bytes,
    :func:`chunk_rows`). The file is written under a temporary name and renamed only when every row is in it, so
    a crash leaves no half-written predictions."""
    spec, root = load_spec(folder)
    files = sorted(Path(p) for p in glob.glob(str(root / spec.table)))
    if not files:
        raise DatasetError([Problem(str(root / "dataset.yaml"), f"table {spec.table!r} matches no file")])
    out_path = Path(out_path)
    inputs_of_the_run = {p.resolve() for p in files} | {(root / "dataset.yaml").resolve(), bundle.folder.resolve()}
    if out_path.resolve() in inputs_of_the_run or out_path.resolve().parent == bundle.folder.resolve():
        raise UsageError(f"--out {out_path} is an input of this run (a table of the dataset, its dataset.yaml or "
                         "the bundle); write the predictions elsewhere")
    inputs = bundle.inputs_spec
    columns = table_columns(files[:1])
    feature_cols, unmatched = expand_columns(inputs.get("features") or [], columns)
    needed = [c for c in [spec.id, inputs.get("video"), inputs.get("frames"), *(inputs.get("text") or [])] if c]
    absent = [c for c in needed if c not in columns] + unmatched
    if absent:
        raise DatasetError([Problem(str(files[0]), "column the bundle needs is not in the table", c) for c in absent])
    read = list(dict.fromkeys(needed + feature_cols))
    batch_rows = batch_rows or chunk_rows(bundle, len(feature_cols))
    privileged, _ = expand_columns(spec.privileged, columns)
    if privileged:
        log(f"predict: ignoring {len(privileged)} privileged column(s) ({', '.join(privileged[:5])}"
            f"{' ...' if len(privileged) > 5 else ''}): the student does not take them")
    total = 0
    bar = tqdm(desc="predict", unit="row", disable=not progress)

    def write(tmp: str) -> None:
        nonlocal total
        with pq.ParquetWriter(tmp, output_schema(bundle)) as writer:
            for file in files:
                offset = 0
                for df in read_chunks(file, batch_rows, read):
                    writer.write_table(_score_chunk(bundle, df, root, spec.id, feature_cols, file, offset,
                                                    spec.allow_outside))
                    offset += len(df)
                    total += len(df)
                    bar.update(len(df))

    try:
        atomic_write(out_path, write)
    finally:
        bar.close()
    return total


def _score_chunk(bundle: StudentBundle, df: pd.DataFrame, root: Path, id_col: str, feature_cols: list[str],
                 file: Path, offset: int, allow_outside: bool = False) -> pa.Table:
    n = len(df)
    inputs = bundle.inputs_spec
    errors: list[str | None] = [None] * n

    def fail(i: int, column: str | None, reason: str) -> None:
        if errors[i] is None:
            errors[i] = f"{file}, row {offset + i + 1}{f', column {column!r}' if column else ''}: {reason}"

    features = None
    if "features" in bundle.input_names:
        features, _, issues = feature_block(df, feature_cols, length=len(bundle.meta["feature_names"]))
        for issue in issues:
            for i in np.flatnonzero(issue.mask):
                fail(i, issue.column, issue.message)
    clips = ocr = None
    media_col = inputs.get("video") or inputs.get("frames")
    kind = "video" if inputs.get("video") else "frames"
    if media_col and ("frames" in bundle.input_names or bundle.reads_ocr):
        clips, ocr = [None] * n, [None] * n
        for i, value in enumerate(df[media_col].tolist()):
            problem = media_problem(root, value, kind, allow_outside)
            if problem is None:
                try:
                    clips[i] = bundle.pre.decode(root / str(value), kind).frames
                    if bundle.reads_ocr:
                        ocr[i] = bundle.pre.ocr_text(root / str(value), kind)
                except MediaError as err:
                    problem = str(err)
            if problem:
                fail(i, media_col, problem)
    texts: list[str | None] = [None] * n
    if "text" in bundle.input_names:
        records = df[inputs.get("text") or []].to_dict("records")
        for i, record in enumerate(records):
            try:
                texts[i] = bundle.text({k: None if is_missing(v) else v for k, v in record.items()},
                                       ocr[i] if ocr is not None else None)
            except InputError as err:
                fail(i, None, str(err))
    ok = [i for i in range(n) if errors[i] is None]
    preds = {}
    if ok:
        try:
            batch = bundle.prepare(features=[features[i] for i in ok] if features is not None else None,
                                   clips=[clips[i] for i in ok] if clips is not None and "frames" in bundle.input_names
                                   else None,
                                   texts=[texts[i] for i in ok] if "text" in bundle.input_names else None)
            preds = bundle.predict(batch)
        except InputError as err:
            for i in ok:
                fail(i, None, str(err))
            ok = []
    out = {"id": df[id_col].astype(str).tolist(), "error": errors}
    for task in bundle.tasks:
        name = task["name"]
        probs: list = [None] * n
        labels: list = [None] * n
        for j, i in enumerate(ok):
            p = preds[name]["probs"][j]
            probs[i] = float(p) if np.ndim(p) == 0 else [float(x) for x in p]
            labels[i] = preds[name]["labels"][j]
        out[f"{name}_prob"] = probs
        out[f"{name}_label"] = labels
    return pa.table(out, schema=output_schema(bundle))


def output_schema(bundle: StudentBundle) -> pa.Schema:
    """Fixed column types, so every chunk (also one where all rows failed) writes the same schema."""
    fields = [pa.field("id", pa.string()), pa.field("error", pa.string())]
    for task in bundle.tasks:
        prob, label = task_type(task["type"]).prediction_types()
        fields += [pa.field(f"{task['name']}_prob", prob), pa.field(f"{task['name']}_label", label)]
    return pa.schema(fields)

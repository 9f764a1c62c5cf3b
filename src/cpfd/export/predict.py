"""``cpfd predict``: stream a dataset through a bundle and write per-task probabilities and labels to Parquet.

Rows are read a chunk at a time (bounded memory); privileged columns are ignored (the log says which). A row
whose inputs cannot be used (bad video, non-numeric feature) is written with its reason in ``error`` and no
prediction: nothing is dropped.
"""

from __future__ import annotations

import glob
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from cpfd.data.contract import load_spec
from cpfd.data.media import media_problem
from cpfd.data.table import expand_columns
from cpfd.data.video import MediaError
from cpfd.export.runtime import InputError, StudentBundle, decode_clip, join_text


def _chunks(path: Path, rows: int) -> Iterator[pd.DataFrame]:
    if path.suffix == ".parquet":
        for batch in pq.ParquetFile(path).iter_batches(batch_size=rows):
            yield batch.to_pandas()
    elif path.suffix == ".csv":
        yield from pd.read_csv(path, chunksize=rows)
    else:
        yield from pd.read_json(path, lines=True, chunksize=rows, dtype=False)


def predict_dataset(bundle: StudentBundle, folder: str | Path, out_path: str | Path, batch_rows: int = 256,
                    log: Callable[[str], None] = print, progress: bool = True) -> int:
    spec, root = load_spec(folder)
    files = sorted(Path(p) for p in glob.glob(str(root / spec.table)))
    if not files:
        raise FileNotFoundError(f"table {spec.table!r} matches no file in {root}")
    inputs = bundle.inputs_spec
    feature_cols = inputs.get("features") or []
    columns = pd.read_parquet(files[0]).columns if files[0].suffix == ".parquet" else next(_chunks(files[0], 1)).columns
    privileged, _ = expand_columns(spec.privileged, list(columns))
    if privileged:
        log(f"predict: ignoring {len(privileged)} privileged column(s) ({', '.join(privileged[:5])}"
            f"{' ...' if len(privileged) > 5 else ''}): the student does not take them")
    writer = None
    total = 0
    bar = tqdm(desc="predict", unit="row", disable=not progress)
    try:
        for file in files:
            offset = 0
            for df in _chunks(file, batch_rows):
                table = _score_chunk(bundle, df, root, spec.id, feature_cols, inputs, file, offset)
                writer = writer or pq.ParquetWriter(str(out_path), table.schema)
                writer.write_table(table)
                offset += len(df)
                total += len(df)
                bar.update(len(df))
    finally:
        bar.close()
        if writer:
            writer.close()
    return total


def _score_chunk(bundle: StudentBundle, df: pd.DataFrame, root: Path, id_col: str, feature_cols: list[str],
                 inputs: dict, file: Path, offset: int) -> pa.Table:
    n = len(df)
    errors: list[str | None] = [None] * n
    features = None
    if feature_cols:
        if len(feature_cols) == 1 and df[feature_cols[0]].map(lambda v: isinstance(v, (list, np.ndarray))).any():
            features = [np.asarray(v, dtype=np.float64) for v in df[feature_cols[0]]]
        else:
            block = df[feature_cols].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
            features = list(block)
        for i, v in enumerate(features):
            if v.shape != (len(bundle.meta["feature_names"]),) or not np.all(np.isfinite(v)):
                errors[i] = f"{file}, row {offset + i + 1}: features are missing, non-numeric or of the wrong length"
    clips = None
    media_col = inputs.get("video") or inputs.get("frames")
    if "frames" in bundle.input_names and media_col:
        clips = []
        for i, value in enumerate(df[media_col].tolist()):
            problem = media_problem(root, value, "video" if inputs.get("video") else "frames")
            clip = None
            if problem is None:
                try:
                    clip = decode_clip(root / str(value), bundle.sampling)
                except MediaError as err:
                    problem = str(err)
            if problem:
                errors[i] = errors[i] or f"{file}, row {offset + i + 1}, column {media_col!r}: {problem}"
            clips.append(clip)
    texts = None
    if "text" in bundle.input_names:
        records = df[inputs.get("text") or []].to_dict("records")
        texts = [join_text({k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in r.items()},
                           inputs.get("text") or []) for r in records]
    ok = [i for i in range(n) if errors[i] is None]
    out = {"id": df[id_col].astype(str).tolist(), "error": errors}
    preds = {}
    if ok:
        try:
            batch = bundle.prepare(features=[features[i] for i in ok] if features is not None else None,
                                   clips=[clips[i] for i in ok] if clips is not None else None,
                                   texts=[texts[i] for i in ok] if texts is not None else None)
            preds = bundle.predict(batch)
        except InputError as err:
            for i in ok:
                errors[i] = f"{file}, row {offset + i + 1}: {err}"
            ok = []
    for task in bundle.tasks:
        name = task["name"]
        probs: list = [None] * n
        labels: list = [None] * n
        for j, i in enumerate(ok):
            p = preds[name]["probs"][j]
            probs[i] = float(p) if task["type"] == "binary" else [float(x) for x in p]
            labels[i] = preds[name]["labels"][j]
        out[f"{name}_prob"] = probs
        out[f"{name}_label"] = [str(v) if task["type"] == "multiclass" and v is not None else v for v in labels]
    return pa.table(out, schema=output_schema(bundle))


def output_schema(bundle: StudentBundle) -> pa.Schema:
    """Fixed column types, so every chunk (also one where all rows failed) writes the same schema."""
    fields = [pa.field("id", pa.string()), pa.field("error", pa.string())]
    for task in bundle.tasks:
        if task["type"] == "binary":
            prob, label = pa.float64(), pa.int64()
        elif task["type"] == "multiclass":
            prob, label = pa.list_(pa.float64()), pa.string()
        else:
            prob, label = pa.list_(pa.float64()), pa.list_(pa.string())
        fields += [pa.field(f"{task['name']}_prob", prob), pa.field(f"{task['name']}_label", label)]
    return pa.schema(fields)

"""Read the dataset table (.parquet, .csv, .jsonl; a glob reads several shards) and assign splits."""

from __future__ import annotations

import fnmatch
import glob as globlib
from pathlib import Path

import numpy as np
import pandas as pd

from cpfd.data.contract import DatasetError, Problem, confined, printable

SOURCE_FILE = "__cpfd_file__"
SOURCE_ROW = "__cpfd_row__"
READERS = {
    ".parquet": pd.read_parquet,
    ".csv": lambda p: pd.read_csv(p, keep_default_na=True),
    ".jsonl": lambda p: pd.read_json(p, lines=True, dtype=False),
}


def read_table(root: Path, pattern: str, allow_outside: bool = False) -> pd.DataFrame:
    """Concatenate every file matching ``pattern`` (relative to ``root``), remembering each row's file and row."""
    paths = sorted(Path(p) for p in globlib.glob(str(root / pattern)))
    if not paths:
        raise DatasetError([Problem(str(root / "dataset.yaml"), f"table {pattern!r} matches no file")])
    for path in paths:
        try:
            confined(root, str(path.relative_to(root)) if path.is_relative_to(root) else str(path), allow_outside)
        except ValueError as err:
            raise DatasetError([Problem(str(root / "dataset.yaml"), f"table: {err}")]) from None
        if not path.is_file():
            raise DatasetError([Problem(str(root / "dataset.yaml"), f"table {printable(path)} is not a regular file")])
    frames = []
    for path in paths:
        reader = READERS.get(path.suffix.lower())
        if reader is None:
            raise DatasetError([Problem(str(path), f"unsupported table format {path.suffix!r} (use {', '.join(READERS)})")])
        if path.suffix.lower() == ".csv":
            _check_csv_header(path)
        try:
            df = reader(path)
        except UnicodeDecodeError:
            raise DatasetError([_utf8_problem(path)]) from None
        except Exception as err:  # noqa: BLE001 - any parser failure is reported against the file
            raise DatasetError([Problem(str(path), f"cannot be read: {type(err).__name__}: {err}")]) from None
        df = df.reset_index(drop=True)
        df[SOURCE_FILE] = str(path)
        df[SOURCE_ROW] = np.arange(1, len(df) + 1)
        frames.append(df)
    columns = [list(f.columns) for f in frames]
    if any(set(c) != set(columns[0]) for c in columns):
        raise DatasetError([Problem(str(paths[0]), "table shards do not share the same columns")])
    return pd.concat(frames, ignore_index=True)


def _check_csv_header(path: Path) -> None:
    """pandas renames a repeated column to ``name.1``, which can move a column into another role: refuse it."""
    import csv

    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        header = next(csv.reader(fh), [])
    seen: set[str] = set()
    dupes = [c for c in header if c in seen or seen.add(c)]
    if dupes:
        raise DatasetError([Problem(str(path), "duplicate column name in the header", c) for c in dict.fromkeys(dupes)])


def _utf8_problem(path: Path) -> Problem:
    """Locate the first invalid UTF-8 byte of a text table: its data row and, for CSV, its column."""
    raw = path.read_bytes()
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n")  # 0-based line; line 0 is the CSV header
        row = line if path.suffix.lower() == ".csv" else line + 1
        column = None
        if path.suffix.lower() == ".csv":
            import csv
            import io

            lines = raw.decode("utf-8", errors="replace").splitlines()
            header = next(csv.reader([lines[0]]))
            fields = next(csv.reader(io.StringIO(lines[line]))) if line < len(lines) else []
            column = next((h for h, f in zip(header, fields) if "\ufffd" in f), None)
        return Problem(str(path), f"text is not valid UTF-8 (byte {err.start})", column, [row])
    return Problem(str(path), "text is not valid UTF-8")


def expand_columns(patterns: list[str], columns: list[str]) -> tuple[list[str], list[str]]:
    """Expand column globs in table order; returns (matched columns, patterns that matched nothing)."""
    visible = [c for c in columns if c not in (SOURCE_FILE, SOURCE_ROW)]
    matched: list[str] = []
    unmatched: list[str] = []
    for pattern in patterns:
        hits = [c for c in visible if fnmatch.fnmatchcase(c, pattern)]
        if not hits:
            unmatched.append(pattern)
        matched += [c for c in hits if c not in matched]
    return matched, unmatched


def seeded_split(n_rows: int, labelled: np.ndarray, seed: int) -> np.ndarray:
    """80/10/10 over labelled rows from a seeded permutation; unlabelled rows always train."""
    split = np.full(n_rows, "train", dtype=object)
    idx = np.flatnonzero(labelled)
    perm = np.random.default_rng(seed).permutation(idx)
    n_val = max(1, int(round(0.1 * len(idx))))
    n_test = max(1, int(round(0.1 * len(idx))))
    split[perm[:n_val]] = "val"
    split[perm[n_val : n_val + n_test]] = "test"
    return split

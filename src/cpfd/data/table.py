"""Stream the dataset table (.parquet, .csv, .jsonl; a glob reads several shards) and assign splits."""

from __future__ import annotations

import ctypes
import fnmatch
import glob as globlib
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from cpfd.data.contract import DatasetError, Problem, confined, printable

SOURCE_FILE = "__cpfd_file__"
SOURCE_ROW = "__cpfd_row__"
CHUNK_ROWS = 16_384  # rows per chunk when streaming a table: bounds memory whatever the table's size
TABLE_SUFFIXES = (".parquet", ".csv", ".jsonl")
PARQUET_BUFFER = 1 << 20


def table_files(root: Path, pattern: str, allow_outside: bool = False) -> list[Path]:
    """The files matching ``pattern`` (relative to ``root``), checked to be tables inside ``root``."""
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
    for path in paths:
        if path.suffix.lower() not in TABLE_SUFFIXES:
            raise DatasetError([Problem(str(path), f"unsupported table format {path.suffix!r} "
                                                   f"(use {', '.join(TABLE_SUFFIXES)})")])
    return paths


def read_chunks(path: Path, chunk_rows: int, columns: list[str] | None = None) -> Iterator[pd.DataFrame]:
    """One table file ``chunk_rows`` rows at a time, reading only ``columns`` (all when None)."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        # pre_buffer=False with a read buffer streams inside a row group; the default keeps what it read
        # (RSS grew by the table's size at 1M rows).
        with pq.ParquetFile(path, pre_buffer=False, buffer_size=PARQUET_BUFFER) as pf:
            if pf.metadata.num_rows == 0:
                yield pf.schema_arrow.empty_table().to_pandas()
            for batch in pf.iter_batches(batch_size=chunk_rows, columns=columns):
                yield batch.to_pandas()
        return
    if suffix == ".csv":
        reader = pd.read_csv(path, keep_default_na=True, chunksize=chunk_rows, usecols=columns)
    else:
        reader = pd.read_json(path, lines=True, dtype=False, chunksize=chunk_rows)
    with reader:
        for df in reader:
            yield df if columns is None or suffix == ".csv" else df.reindex(columns=columns)


def _trim_heap() -> None:
    """Give the C heap's free pages back to the system between chunks (glibc keeps them otherwise, and the
    high-water mark then creeps up chunk after chunk)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _load_libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


_LIBC = _load_libc()


def iter_table(paths: list[Path], chunk_rows: int = CHUNK_ROWS, columns: list[str] | None = None
               ) -> Iterator[pd.DataFrame]:
    """Stream the table a chunk at a time; each chunk remembers every row's file and 1-based row.

    At most ``chunk_rows`` rows of the table are in memory at once. Every file must have the first file's columns
    (``columns`` reads only those). A parser failure is reported against its file."""
    expected: set[str] | None = None
    order: list[str] = []
    for path in paths:
        offset = 0
        try:
            if path.suffix.lower() == ".csv":
                _check_csv_header(path)
            for df in read_chunks(path, chunk_rows, columns):
                names = set(df.columns)
                if expected is not None and names < expected and path.suffix.lower() == ".jsonl":
                    df, names = df.reindex(columns=order), expected  # a key no line of this chunk uses is missing
                if expected is None:
                    order = list(df.columns)
                    expected = names
                elif names != expected and offset == 0:
                    raise DatasetError([Problem(str(path), "table shards do not share the same columns")])
                elif names != expected:
                    raise DatasetError([Problem(str(path), f"the keys change after row {offset} "
                                                           "(every row of a file needs the same keys)")])
                df = df.reset_index(drop=True)
                df[SOURCE_FILE] = str(path)
                df[SOURCE_ROW] = np.arange(offset + 1, offset + len(df) + 1)
                offset += len(df)
                yield df
                _trim_heap()
        except DatasetError:
            raise
        except UnicodeDecodeError:
            raise DatasetError([_utf8_problem(path)]) from None
        except Exception as err:  # noqa: BLE001 - any parser failure is reported against the file
            raise DatasetError([Problem(str(path), f"cannot be read: {type(err).__name__}: {err}")]) from None


def table_columns(paths: list[Path]) -> list[str]:
    """The first file's column names, from its schema (parquet), its header (CSV) or its first rows (JSONL)."""
    path = paths[0]
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        try:
            return list(pq.read_schema(path).names)
        except Exception as err:  # noqa: BLE001 - any parser failure is reported against the file
            raise DatasetError([Problem(str(path), f"cannot be read: {type(err).__name__}: {err}")]) from None
    if path.suffix.lower() == ".csv":
        _check_csv_header(path)
        return list(pd.read_csv(path, nrows=0).columns)
    first = next(iter_table([path], chunk_rows=1024), None)
    return [c for c in first.columns if c not in (SOURCE_FILE, SOURCE_ROW)] if first is not None else []


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

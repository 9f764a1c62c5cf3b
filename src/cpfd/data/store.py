"""The on-disk dataset store: a validated dataset as memory-mapped NumPy arrays, built once, opened by every command.

A store is a folder ``<cache>/store/<key>/`` holding one ``.npy`` file per array (``ids``, ``split``, ``groups``,
``student.<input>``, ``privileged``, ``label.<task>``, ``mask.<task>``) and ``meta.json``, written last: a folder
without it is an unfinished build and is never opened. The key hashes everything the arrays depend on (the spec,
the bytes of every table file, the split seed, the bad-media policy, the extraction settings), so a later command on
unchanged data opens the store instead of validating and encoding again.

Arrays are opened with ``np.load(mmap_mode="c")``: pages come from disk as batches touch them and the kernel can
drop them again, so memory does not grow with the number of rows. :func:`release_pages` hands touched pages back
(``MADV_PAGEOUT``) so a pass over a table larger than RAM does not show up as resident memory.

Batches of the wide arrays (student inputs, privileged features) are read with :class:`RowReader` instead of
through the map: positioned reads into a fresh buffer leave the file's pages in the page cache, outside the
process's resident memory, however many rows an epoch visits.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import json
import mmap
import os
import shutil
import sys
import uuid
from collections.abc import Iterable
from pathlib import Path

import numpy as np

STORE_VERSION = 1
META = "meta.json"
COPY_ROWS = 65_536  # rows per copy step when joining or subsetting arrays
KEEP_STORES = 2  # older stores of the same dataset (same root and name) are deleted beyond this many


MADV_PAGEOUT_LINUX = 21  # Linux >= 5.4; Python's mmap module names it only when built against such headers


class StoreError(OSError):
    pass


def _as_storable(chunk: np.ndarray) -> np.ndarray:
    """Object arrays (ids, split, group names) are stored as fixed-width unicode, which memory-maps."""
    if chunk.dtype == object:
        return np.asarray([str(v) for v in chunk], dtype=str) if len(chunk) else np.zeros(0, dtype="<U1")
    return np.ascontiguousarray(chunk)


class ArrayWriter:
    """Appends chunks of one array as part files, then joins them into ``<name>.npy`` once its length is known."""

    def __init__(self, folder: Path, name: str, dtype: np.dtype | str | None = None):
        self.folder, self.name = folder, name
        self.dtype = np.dtype(dtype) if dtype is not None else None
        self.parts: list[Path] = []

    def append(self, chunk: np.ndarray) -> None:
        chunk = _as_storable(np.asarray(chunk))
        if self.dtype is not None and chunk.dtype.kind != "U":
            chunk = chunk.astype(self.dtype, copy=False)
        part = self.folder / f"{self.name}.part{len(self.parts):06d}.npy"
        np.save(part, chunk)
        self.parts.append(part)

    def finish(self) -> Path:
        """Join the parts into one ``.npy`` (streamed, a part at a time) and delete them."""
        heads = [np.load(p, mmap_mode="r") for p in self.parts]
        n = sum(len(h) for h in heads)
        tail = heads[0].shape[1:] if heads else ()
        dtype = heads[0].dtype if heads else (self.dtype or np.dtype(np.float32))
        if dtype.kind == "U":
            dtype = max((h.dtype for h in heads), key=lambda d: d.itemsize)
        del heads
        out_path = self.folder / f"{self.name}.npy"
        with _NpyFile(out_path, dtype, (n, *tail)) as out:
            for part in self.parts:
                out.write(np.load(part).astype(dtype, copy=False))
                part.unlink()
        self.parts = []
        return out_path


class _NpyFile:
    """A ``.npy`` file written front to back with plain writes.

    Filling a writable memory map would keep every written page resident (and counted in the process's memory)
    until the map is closed; plain writes leave them to the page cache."""

    def __init__(self, path: Path, dtype: np.dtype, shape: tuple[int, ...]):
        self.fh = open(path, "wb")
        np.lib.format.write_array_header_2_0(self.fh, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                                        "fortran_order": False, "shape": shape})

    def write(self, block: np.ndarray) -> None:
        self.fh.write(np.ascontiguousarray(block).tobytes())

    def __enter__(self) -> "_NpyFile":
        return self

    def __exit__(self, *exc) -> None:
        self.fh.close()


def write_array(folder: Path, name: str, values: np.ndarray) -> Path:
    path = folder / f"{name}.npy"
    np.save(path, _as_storable(np.asarray(values)))
    return path


def write_codes(folder: Path, name: str, codes: np.ndarray, names: tuple[str, ...]) -> Path:
    """A string array written block by block from small integer codes (``names[code]``), never whole in memory."""
    values = np.asarray(names, dtype=str)
    path = folder / f"{name}.npy"
    with _NpyFile(path, values.dtype, (len(codes),)) as out:
        for start in range(0, len(codes), COPY_ROWS):
            out.write(values[codes[start : start + COPY_ROWS]])
    return path


def open_array(folder: Path, name: str) -> np.ndarray:
    """A memory-mapped view of one stored array (copy-on-write: in-place edits never reach the file)."""
    path = folder / f"{name}.npy"
    try:
        return np.load(path, mmap_mode="c")
    except ValueError:  # an empty array (no privileged columns, no rows) cannot be mapped
        return np.load(path)


def subset_arrays(folder: Path, names: Iterable[str], keep: np.ndarray) -> None:
    """Rewrite each array with only the rows where ``keep`` is true, a block of rows at a time."""
    idx = np.flatnonzero(keep)
    for name in names:
        src_path = folder / f"{name}.npy"
        src = np.load(src_path, mmap_mode="r")
        tmp = folder / f"{name}.subset.npy"
        with _NpyFile(tmp, src.dtype, (len(idx), *src.shape[1:])) as out:
            for start in range(0, len(idx), COPY_ROWS):
                out.write(src[idx[start : start + COPY_ROWS]])
        del src
        os.replace(tmp, src_path)


class RowReader:
    """Rows of one stored ``.npy`` array, read with positioned reads (``os.preadv``) into a new array.

    Why not index the memory map: a fault on a mapped page also maps up to 16 neighbouring cached pages
    (fault-around), so a training epoch that gathers rows at random maps the whole store into the process within a
    few hundred batches (1.5 GB resident at 3M rows of 128 floats, bench/RESULTS.md), and handing pages back
    during the epoch makes every batch fault them in again. A positioned read copies only the rows asked for; runs
    of consecutive rows are one read each, so a sequential pass reads a batch with one call.

    ``array`` is a view opened by :func:`open_array`; an array that is not memory-mapped (empty, or built in
    memory) is indexed directly. The file is opened lazily in each process (DDP ranks, forked workers)."""

    def __init__(self, array: np.ndarray):
        self.array = array
        self.path = getattr(array, "filename", None) if isinstance(array, np.memmap) else None
        self.offset = int(getattr(array, "offset", 0))
        self.row_bytes = int(np.prod(array.shape[1:], dtype=np.int64)) * array.dtype.itemsize
        self.address = array.__array_interface__["data"][0]  # to tell the mapped array from a replacement
        self._fd: int | None = None
        self._pid = -1

    def _file(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        return self._fd

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        if self.path is None or self.row_bytes == 0 or len(rows) == 0:
            return np.asarray(self.array[rows])
        if rows.min() < 0 or rows.max() >= len(self.array):
            raise IndexError(f"row index out of range for {self.path} ({len(self.array)} rows)")
        order = np.argsort(rows, kind="stable") if np.any(rows[1:] < rows[:-1]) else None
        ordered = rows if order is None else rows[order]
        out = np.empty((len(rows), *self.array.shape[1:]), dtype=self.array.dtype)
        buffer = memoryview(out).cast("B")
        breaks = np.flatnonzero(np.diff(ordered) != 1) + 1
        fd = self._file()
        for start, stop in zip([0, *breaks.tolist()], [*breaks.tolist(), len(rows)]):
            at, end = start * self.row_bytes, stop * self.row_bytes
            position = self.offset + int(ordered[start]) * self.row_bytes
            while at < end:  # a regular file returns short reads only at its end or above 2 GB a call
                got = os.preadv(fd, [buffer[at:end]], position)
                if got <= 0:
                    raise StoreError(f"{self.path} ends before row {int(ordered[start])}: the store is damaged; "
                                     "delete its folder to rebuild it")
                at, position = at + got, position + got
        if order is None:
            return out
        unordered = np.empty_like(out)
        unordered[order] = out
        return unordered

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fd": None, "_pid": -1}

    def __del__(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)


def release_pages(arrays: Iterable[np.ndarray]) -> None:
    """Ask the kernel to drop the resident pages of memory-mapped arrays (they are re-read from disk when touched).

    ``MADV_PAGEOUT`` reclaims clean pages and never discards a written one, so copy-on-write edits survive."""
    advice = getattr(mmap, "MADV_PAGEOUT", MADV_PAGEOUT_LINUX if sys.platform.startswith("linux") else None)
    if advice is None:
        return
    for array in arrays:
        base = getattr(array, "_mmap", None)
        if base is not None:
            try:
                base.madvise(advice)
            except (OSError, ValueError):
                return


@functools.cache
def _libc_trim():
    name = ctypes.util.find_library("c") if sys.platform.startswith("linux") else None
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None


def trim_heap() -> None:
    """Give the C heap's free memory back to the kernel (glibc ``malloc_trim``).

    Why: a pass over millions of rows frees its block temporaries, but glibc keeps freed heap memory (and raises
    its mmap threshold after the first large free), so the process stayed ~100 MB larger at 3M rows than at 100k
    after each streaming pass (bench/RESULTS.md). Trimming after a pass costs a few milliseconds."""
    trim = _libc_trim()
    if trim is not None:
        trim(0)


def store_root(cache: Path) -> Path:
    return cache / "store"


def begin(cache: Path) -> Path:
    """A fresh build folder beside the finished stores (renamed into place by :func:`commit`)."""
    root = store_root(cache)
    try:
        root.mkdir(parents=True, exist_ok=True)
        folder = root / f".build-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        folder.mkdir()
    except OSError as err:
        raise StoreError(f"cannot write the dataset store under {root}: {err.strerror or err}; set extract.cache_dir "
                         "or CPFD_CACHE to a writable folder") from None
    return folder


def commit(folder: Path, key: str, meta: dict) -> Path:
    """Write ``meta.json`` last, then move the build into place; if another process (a second DDP rank) finished
    the same store first, keep theirs."""
    tmp = folder / f"{META}.tmp"
    tmp.write_text(json.dumps({"version": STORE_VERSION, "key": key, **meta}, indent=1))
    os.replace(tmp, folder / META)
    final = folder.parent / key
    try:
        os.rename(folder, final)
    except OSError:
        if not (final / META).exists():
            raise
        shutil.rmtree(folder, ignore_errors=True)
    _prune(final, meta)
    return final


def find(cache: Path, key: str) -> tuple[Path, dict] | None:
    """The finished store for ``key`` and its metadata, or None."""
    folder = store_root(cache) / key
    try:
        meta = json.loads((folder / META).read_text())
    except (OSError, ValueError):
        return None
    return (folder, meta) if meta.get("version") == STORE_VERSION else None


def _prune(keep: Path, meta: dict) -> None:
    """Delete older stores of the same dataset beyond :data:`KEEP_STORES` (the data they hold has changed since)."""
    same = []
    for folder in store_root(keep.parent.parent).iterdir():
        if folder == keep or folder.name.startswith(".build-"):
            continue
        try:
            other = json.loads((folder / META).read_text())
        except (OSError, ValueError):
            continue
        if other.get("root") == meta.get("root") and other.get("name") == meta.get("name"):
            same.append((folder.stat().st_mtime, folder))
    for _, folder in sorted(same, reverse=True)[KEEP_STORES - 1 :]:
        shutil.rmtree(folder, ignore_errors=True)

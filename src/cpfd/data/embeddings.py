"""Frozen-encoder extraction with an on-disk embedding cache (the CPU default: encode once, train many times).

Each row's embedding is keyed by (sample id, media file size + mtime, encoder fingerprint, sampling config) for
frames, and (text content, encoder fingerprint) for text. Keys live in Parquet shards under the cache folder;
a run indexes every shard (keys only), encodes only the rows whose key is absent, and writes them as new shards
as it goes, so an interrupted extraction resumes where it stopped and never redoes a finished shard. Embeddings
are read back from the shards when the dataset store is written, a block of rows at a time.

Decoding runs in worker processes; encoding is batched; a progress bar shows clips/s.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import multiprocessing as mp

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from cpfd.config import ExtractConfig, FrameSampling
from cpfd.data.preprocess import Preprocessor, decode_media, ocr_sampling
from cpfd.data.video import FrameClip
from cpfd.io import atomic_write, atomic_write_json


@dataclass
class MediaRow:
    index: int
    id: str
    path: Path
    kind: str  # "video" or "frames"


@dataclass
class ExtractReport:
    encoded: int = 0
    reused: int = 0
    attempted: int = 0  # rows that were not in the cache (encoded or bad)
    repeated: list[str] = field(default_factory=list)  # ids of clips shorter than K frames
    bad: dict[int, str] = field(default_factory=dict)  # row index -> reason
    seconds: float = 0.0


def _media_stamp(path: Path) -> str:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file())
        return ";".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def frames_key(row: MediaRow, encoder_fp: str, sampling: FrameSampling) -> str:
    try:
        stamp = _media_stamp(row.path)
    except OSError:
        stamp = "missing"
    # The resolved path: one clip reached from two tables (``clips/x.mp4``, ``../clips/x.mp4``) is encoded once.
    blob = json.dumps([row.id, str(row.path.resolve()), stamp, encoder_fp, sampling.model_dump()])
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def text_key(text: str, encoder_fp: str) -> str:
    return hashlib.sha256(json.dumps([text, encoder_fp]).encode()).hexdigest()[:32]


def _digest(keys: list[str], columns: dict[str, list[bytes]]) -> str:
    h = hashlib.sha256("\n".join(keys).encode())
    for name in sorted(columns):
        for blob in columns[name]:
            h.update(blob)
    return h.hexdigest()


class KeyIndex:
    """Cache key -> shard number for millions of keys: a sorted array of 16-byte key digests beside their shard
    numbers, plus a dict of the keys added since the last merge.

    Why not a dict of the key strings: ~150 bytes a key, so the frame and text keys of a million clips would hold
    ~300 MB for the whole store build; here ~20 bytes a key. When one key is in several shards (two processes
    encoded it), the shard added last wins, as a dict update would."""

    MERGE_AT = 65_536  # recent keys held in the dict before they are merged into the sorted arrays

    def __init__(self):
        self.digests = np.zeros(0, dtype="S16")
        self.shards = np.zeros(0, dtype=np.int32)
        self.recent: dict[bytes, int] = {}

    @staticmethod
    def digest(key: str) -> bytes:
        return hashlib.blake2b(key.encode(), digest_size=16).digest()

    def __len__(self) -> int:
        self._merge()
        return len(self.digests)

    def add(self, keys: list[str], shard: int) -> None:
        self.recent.update(dict.fromkeys((self.digest(k) for k in keys), shard))
        if len(self.recent) >= self.MERGE_AT:
            self._merge()

    def get(self, key: str) -> int | None:
        d = self.digest(key)
        hit = self.recent.get(d)
        if hit is not None:
            return hit
        query = np.array(d, dtype="S16")  # compared as the full 16 bytes (a bytes scalar loses trailing zeros)
        i = int(np.searchsorted(self.digests, query))
        return int(self.shards[i]) if i < len(self.digests) and self.digests[i : i + 1] == query else None

    def _merge(self) -> None:
        if not self.recent:
            return
        digests = np.concatenate([self.digests, np.array(list(self.recent), dtype="S16")])
        shards = np.concatenate([self.shards, np.fromiter(self.recent.values(), dtype=np.int32,
                                                          count=len(self.recent))])
        order = np.argsort(digests, kind="stable")  # equal digests keep their order: the later one is last
        digests, shards = digests[order], shards[order]
        last = np.append(digests[1:] != digests[:-1], True)
        self.digests, self.shards, self.recent = digests[last], shards[last], {}


class ShardStore:
    """key -> float32 arrays, in Parquet shards (``shard-*.parquet``) written atomically, each carrying a SHA-256 of
    its content: a shard that does not match (flipped bits, truncation) is reported, set aside as ``*.corrupt``
    and its rows are encoded again.

    Only the index (key -> shard, :class:`KeyIndex`) stays in memory; :meth:`get` reads a shard back when one of
    its keys is asked for and keeps the last few it read, so the cache of a million clips is never loaded whole."""

    KEEP_READ = 8  # shards kept after reading (rows are asked for in the order they were written)

    def __init__(self, folder: Path, log: Callable[[str], None] = print):
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.index = KeyIndex()
        self.paths: list[Path] = []
        self._read_back: OrderedDict[Path, dict[str, dict[str, np.ndarray]]] = OrderedDict()
        for shard in sorted(folder.glob("shard-*.parquet")):
            try:
                keys = list(self._read(shard))
            except (OSError, ValueError, pa.ArrowException) as err:
                log(f"extract: cache shard {shard} is corrupt ({err}); its rows will be encoded again")
                shard.replace(shard.with_suffix(".corrupt"))
                continue
            self._add(keys, shard)

    def _add(self, keys: list[str], shard: Path) -> None:
        self.paths.append(shard)
        self.index.add(keys, len(self.paths) - 1)

    @staticmethod
    def _read(shard: Path) -> dict[str, dict[str, np.ndarray]]:
        table = pq.read_table(shard).to_pydict()
        meta = {k.decode(): v.decode() for k, v in (pq.read_schema(shard).metadata or {}).items()}
        shapes = {k[6:]: json.loads(v) for k, v in meta.items() if k.startswith("shape:")}
        if meta.get("sha256") != _digest(table["key"], {name: table[name] for name in shapes}):
            raise ValueError("content does not match its checksum")
        return {key: {name: np.frombuffer(table[name][i], dtype=np.float32).reshape(shape)
                      for name, shape in shapes.items()} for i, key in enumerate(table["key"])}

    def _remember(self, shard: Path, items: dict[str, dict[str, np.ndarray]]) -> None:
        self._read_back[shard] = items
        self._read_back.move_to_end(shard)
        while len(self._read_back) > self.KEEP_READ:
            self._read_back.popitem(last=False)

    def __contains__(self, key: str) -> bool:
        return self.index.get(key) is not None

    def get(self, key: str) -> dict[str, np.ndarray]:
        number = self.index.get(key)
        if number is None:
            raise KeyError(key)
        shard = self.paths[number]
        if shard not in self._read_back:
            self._remember(shard, self._read(shard))
        self._read_back.move_to_end(shard)
        return self._read_back[shard][key]

    def shards(self) -> list[Path]:
        return sorted(self.folder.glob("shard-*.parquet"))

    def write(self, items: dict[str, dict[str, np.ndarray]]) -> Path:
        keys = sorted(items)
        names = list(items[keys[0]])
        columns = {"key": keys}
        for name in names:
            columns[name] = [np.ascontiguousarray(items[k][name], dtype=np.float32).tobytes() for k in keys]
        meta = {f"shape:{name}": json.dumps(list(items[keys[0]][name].shape)) for name in names}
        meta["sha256"] = _digest(keys, {name: columns[name] for name in names})
        table = pa.table(columns).replace_schema_metadata(meta)
        name = hashlib.sha256("".join(keys).encode()).hexdigest()[:16]
        path = self.folder / f"shard-{int(time.time() * 1e6):x}-{name}.parquet"
        atomic_write(path, lambda tmp: pq.write_table(table, tmp))
        self._add(keys, path)
        self._remember(path, {k: {n: np.asarray(v, dtype=np.float32) for n, v in items[k].items()} for k in keys})
        return path


class CachedRows(Mapping):
    """Row index -> one cached array (``name``) of that row, read from the shard cache on access."""

    def __init__(self, store: ShardStore, keys: dict[int, str], name: str):
        self.store, self.name = store, name
        self.keys = {i: k for i, k in keys.items() if k in store}

    def __getitem__(self, index: int) -> np.ndarray:
        return self.store.get(self.keys[index])[self.name]

    def __iter__(self):
        return iter(self.keys)

    def __len__(self) -> int:
        return len(self.keys)


def decode_chunks(rows: list[MediaRow], cfg: ExtractConfig, report: ExtractReport, desc: str = "decode",
                  progress: bool = True):
    """Yield (row, clip) chunks of ``shard_size`` rows, decoded in worker processes; bad rows go to ``report``."""
    sampling = cfg.sampling.model_dump()
    bar = tqdm(total=len(rows), desc=desc, unit="clip", disable=not progress or not rows, leave=False)
    pool = (ProcessPoolExecutor(cfg.workers, mp_context=mp.get_context("fork"))
            if cfg.workers > 0 and len(rows) > 1 else None)
    chunks = [rows[start:start + cfg.shard_size] for start in range(0, len(rows), cfg.shard_size)]

    def submit(chunk: list[MediaRow]):
        tasks = [(r.kind, str(r.path), sampling) for r in chunk]
        return [pool.submit(decode_media, t) for t in tasks] if pool else None

    try:
        pending = submit(chunks[0]) if chunks else None
        for i, chunk in enumerate(chunks):
            # Decode the next chunk in the workers while the caller encodes this one.
            upcoming = submit(chunks[i + 1]) if pool and i + 1 < len(chunks) else None
            if pool:
                results = [f.result() for f in pending]
            else:
                results = [decode_media((r.kind, str(r.path), sampling)) for r in chunk]
            good: list[tuple[MediaRow, FrameClip]] = []
            for row, (clip, error) in zip(chunk, results):
                if error:
                    report.bad[row.index] = error
                    continue
                good.append((row, clip))
                if clip.repeated:
                    report.repeated.append(row.id)
            yield good
            bar.update(len(chunk))
            pending = upcoming
    finally:
        bar.close()
        if pool:
            pool.shutdown(cancel_futures=True)


def _log_repeated(report: ExtractReport, k: int, log: Callable[[str], None]) -> None:
    if report.repeated:
        log(f"extract: {len(report.repeated)} clips had fewer than {k} frames; frames were repeated "
            f"({', '.join(report.repeated[:10])}{' ...' if len(report.repeated) > 10 else ''})")


def extract_frames(rows: list[MediaRow], pre: Preprocessor, cache: Path, log: Callable[[str], None] = print,
                   progress: bool = True, store: ShardStore | None = None, report: ExtractReport | None = None
                   ) -> tuple[Mapping[int, np.ndarray], ExtractReport]:
    """Embeddings (K, dim) per row index through the cache, read from it on access; rows that cannot be decoded
    are in ``report.bad``.

    A caller working through a large dataset a block of rows at a time passes the opened cache (``store``) and
    one ``report`` to add to, and logs the totals itself (:func:`log_frames_summary`)."""
    cfg = pre.cfg
    summary = report is None
    report = report if report is not None else ExtractReport()
    tic = time.perf_counter()
    fingerprint = pre.frame_encoder.fingerprint()
    store = store if store is not None else ShardStore(cache / f"frames-{fingerprint}", log)
    keys = {r.index: frames_key(r, fingerprint, cfg.sampling) for r in rows}
    todo = [r for r in rows if keys[r.index] not in store]
    report.reused += len(rows) - len(todo)
    report.attempted += len(todo)
    for good in decode_chunks(todo, cfg, report, "extract frames", progress):
        if good:
            vectors = pre.encode_frames([clip.frames for _, clip in good])
            store.write({keys[row.index]: {"frames": vectors[i]} for i, (row, _) in enumerate(good)})
        report.encoded += len(good)
    report.seconds += time.perf_counter() - tic
    if summary:
        log_frames_summary(report, store, cfg.sampling.num_frames, log)
    return CachedRows(store, keys, "frames"), report


def log_frames_summary(report: ExtractReport, store: ShardStore, k: int, log: Callable[[str], None]) -> None:
    if report.reused:
        log(f"extract: reusing {report.reused} cached clips from {store.folder}")
    if report.attempted:
        rate = report.attempted / max(report.seconds, 1e-9)
        log(f"extract: encoded {report.encoded} clips ({rate:.2f} clips/s, {rate * k:.1f} frames/s)")
    _log_repeated(report, k, log)


def check_decodable(rows: list[MediaRow], cfg: ExtractConfig, progress: bool = True) -> dict[int, str]:
    """Decode every clip once (in the decoding workers) and drop the frames: row index -> reason it fails."""
    report = ExtractReport()
    for _ in decode_chunks(rows, cfg, report, "decode check", progress):
        pass
    return report.bad


def decode_frames(rows: list[MediaRow], cfg: ExtractConfig, log: Callable[[str], None] = print,
                  progress: bool = True) -> tuple[dict[int, np.ndarray], ExtractReport]:
    """Decoded frames (K, size, size, 3) uint8 per row index, for end-to-end training (no cache)."""
    report = ExtractReport()
    out: dict[int, np.ndarray] = {}
    for good in decode_chunks(rows, cfg, report, "decode frames", progress):
        out.update({row.index: clip.frames for row, clip in good})
    _log_repeated(report, cfg.sampling.num_frames, log)
    return out, report


class CachedTexts:
    """Token vectors and masks of texts, read from the shard cache a block at a time (:meth:`stack`)."""

    def __init__(self, store: ShardStore, fingerprint: str):
        self.store, self.fingerprint = store, fingerprint

    def stack(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(n, L, dim) tokens and (n, L) mask of ``texts``, every one of which must be in the cache."""
        items = [self.store.get(text_key(t, self.fingerprint)) for t in texts]
        return np.stack([i["tokens"] for i in items]), np.stack([i["mask"] for i in items]).astype(bool)


def cache_texts(texts: list[str], pre: Preprocessor, cache: Path, progress: bool = True) -> CachedTexts:
    """Encode the texts that are not in the cache yet; returns the cache to read them back from."""
    cfg = pre.cfg
    fingerprint = pre.text_encoder.fingerprint()
    store = ShardStore(cache / f"text-{fingerprint}")
    todo = sorted({k: t for t in texts if (k := text_key(t, fingerprint)) not in store}.items())
    bar = tqdm(total=len(todo), desc="extract text", unit="text", disable=not progress or not todo, leave=False)
    for start in range(0, len(todo), cfg.shard_size):
        chunk = todo[start:start + cfg.shard_size]
        items = {}
        for b in range(0, len(chunk), cfg.batch_size):
            part = chunk[b:b + cfg.batch_size]
            tokens, mask = pre.encode_text([t for _, t in part])
            for i, (key, _) in enumerate(part):
                items[key] = {"tokens": tokens[i], "mask": mask[i].astype(np.float32)}
        store.write(items)
        bar.update(len(chunk))
    bar.close()
    return CachedTexts(store, fingerprint)


def extract_text(texts: list[str], pre: Preprocessor, cache: Path, progress: bool = True
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Token vectors (n, L, dim) and mask (n, L) for each text, through the cache (all in memory: small lists)."""
    return cache_texts(texts, pre, cache, progress).stack(texts)


def _known_ocr(cache: Path) -> dict[str, str]:
    known: dict[str, str] = {}
    for path in [cache / "ocr.json", *sorted((cache / "ocr").glob("shard-*.json"))]:  # ocr.json: older caches
        if path.exists():
            try:
                known.update(json.loads(path.read_text()))
            except (OSError, ValueError):  # a damaged shard: its clips are read again
                continue
    return known


def extract_ocr(rows: list[MediaRow], pre: Preprocessor, cache: Path, log: Callable[[str], None] = print
                ) -> dict[int, str]:
    """On-screen text of each row's middle frame (:meth:`Preprocessor.read_ocr`), cached per clip.

    Each decoded chunk is written as a small shard file of its own (``ocr/shard-*.json``, atomically), so ranks
    that share the cache folder never overwrite each other's results, an interrupted run resumes from its last
    chunk, and a million clips do not rewrite one growing file after every chunk."""
    sampling = ocr_sampling(pre.cfg)
    known = _known_ocr(cache)
    keys = {r.index: frames_key(r, "rapidocr", sampling) for r in rows}
    todo = [r for r in rows if keys[r.index] not in known]
    if todo:
        report = ExtractReport()
        one_frame = pre.cfg.model_copy(update={"sampling": sampling})
        (cache / "ocr").mkdir(parents=True, exist_ok=True)
        for good in decode_chunks(todo, one_frame, report, "OCR"):
            chunk = {keys[row.index]: pre.read_ocr(clip.frames[0]) for row, clip in good}
            if chunk:
                atomic_write_json(cache / "ocr" / f"shard-{time.time_ns():x}-{os.getpid()}.json", chunk)
                known.update(chunk)
        log(f"extract: OCR read {len(todo) - len(report.bad)} clips")
    return {r.index: known.get(keys[r.index], "") for r in rows}


def default_cache(root: Path, cfg: ExtractConfig) -> Path:
    return Path(cfg.cache_dir or os.environ.get("CPFD_CACHE") or root / ".cpfd_cache")

"""The one preprocessing path from raw inputs to model inputs, shared by training, export, predict and serve.

It owns: joining and truncating text fields, reading on-screen text (OCR) and appending it to the text, the
cheap media checks and the bad-media policy (fail, or skip and name every skipped row), decoding video and
frame folders, numeric feature parsing, and building the frozen encoders. Training caches what it computes
(:mod:`cpfd.data.embeddings`); serving computes it per request; both call the functions here, so a row gives the
same student inputs either way (``tests/test_parity.py`` sends rows through both).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cpfd.config import ExtractConfig, FrameSampling
from cpfd.data.contract import DatasetError, Problem, confined, printable
from cpfd.data.video import IMAGE_SUFFIXES, DecodeLimits, FrameClip, MediaError, decode_video, read_frames_folder
from cpfd.encoders import FrameEncoder, TextEncoder, create_encoder
from cpfd.encoders.ocr import OCRReader
from cpfd.task_types import is_missing

MAX_TEXT_CHARS = 4000  # per field; far beyond what the tokenizer keeps, bounds tokenizer work on pathological text
TEXT_SEPARATOR = " | "
FLOAT32_MAX = float(np.finfo(np.float32).max)
MEDIA_POLICIES = ("fail", "skip")


# ---- text -----------------------------------------------------------------------------------------------------

def text_value(value: Any) -> str | None:
    """One text field as a stripped, truncated string ('' when missing); None when its bytes are not UTF-8."""
    if isinstance(value, (bytes, bytearray)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return None
    if is_missing(value):
        return ""
    return str(value).strip()[:MAX_TEXT_CHARS]


def join_text(values: Iterable[Any]) -> str:
    """The student's text: the non-empty fields in declared order, each truncated, joined by ``" | "``."""
    parts = [text_value(v) for v in values]
    return TEXT_SEPARATOR.join(p for p in parts if p)


def with_ocr(text: str, ocr_text: str) -> str:
    """The student's text when OCR is on: the declared fields, then the on-screen text."""
    return TEXT_SEPARATOR.join(p for p in (text, ocr_text) if p)


# ---- numeric features -----------------------------------------------------------------------------------------

@dataclass
class Issue:
    """Rows of a block that break the contract: ``mask`` over the block's rows, the column and the reason."""

    mask: np.ndarray
    column: str
    message: str


def numeric_block(df: pd.DataFrame, columns: list[str], allow_nan: bool, what: str) -> tuple[np.ndarray, list[Issue]]:
    """Numeric columns -> float32 (n, F); non-numeric, missing (unless allowed), infinite or beyond float32 values
    are issues."""
    block = np.zeros((len(df), len(columns)), dtype=np.float32)
    issues: list[Issue] = []
    for j, col in enumerate(columns):
        raw = df[col]
        values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        isna = raw.isna().to_numpy()
        issues.append(Issue(np.isnan(values) & ~isna, col, f"non-numeric value in {what}"))
        if not allow_nan:
            issues.append(Issue(isna, col, f"NaN/missing value in {what} (student inputs must be complete)"))
        issues.append(Issue(np.isinf(values), col, f"infinite value in {what}"))
        with np.errstate(invalid="ignore"):
            issues.append(Issue(np.isfinite(values) & (np.abs(values) > FLOAT32_MAX), col,
                                f"value beyond the float32 range (±3.4e38) in {what}"))
        block[:, j] = np.where(np.abs(values) > FLOAT32_MAX, np.nan, values)
    return block, [i for i in issues if i.mask.any()]


def is_vector(value: Any) -> bool:
    return isinstance(value, (list, tuple, np.ndarray))


def list_block(df: pd.DataFrame, column: str, length: int | None = None) -> tuple[np.ndarray | None, list[Issue]]:
    """One list-valued column -> float32 (n, D); D is ``length`` or the most common length."""
    vectors = df[column].tolist()
    lengths = np.array([len(v) if is_vector(v) else -1 for v in vectors])
    issues = [Issue(lengths < 0, column, "not a list of numbers")]
    valid = lengths[lengths >= 0]
    if length is None:
        if not len(valid):
            return None, [i for i in issues if i.mask.any()]
        length = int(np.bincount(valid).argmax())
        wrong_length = f"inconsistent vector length (most rows have {length})"
    else:
        wrong_length = f"vector length is not the {length} the model takes"
    issues.append(Issue((lengths >= 0) & (lengths != length), column, wrong_length))
    block = np.zeros((len(df), length), dtype=np.float32)
    bad = np.zeros(len(df), dtype=bool)
    for i, v in enumerate(vectors):
        if lengths[i] != length:
            continue
        try:
            arr = np.asarray(v, dtype=np.float64)
        except (TypeError, ValueError):
            bad[i] = True
            continue
        if not np.all(np.isfinite(arr)) or np.any(np.abs(arr) > FLOAT32_MAX):
            bad[i] = True
            continue
        block[i] = arr
    issues.append(Issue(bad, column, "NaN, inf, out-of-range or non-numeric entry in a student feature vector"))
    return block, [i for i in issues if i.mask.any()]


def feature_block(df: pd.DataFrame, columns: list[str], length: int | None = None
                  ) -> tuple[np.ndarray | None, list[str], list[Issue]]:
    """Student numeric features: one list-valued column or several numeric columns -> (block, names, issues)."""
    if len(columns) == 1 and df[columns[0]].map(is_vector).any():
        block, issues = list_block(df, columns[0], length)
        width = 0 if block is None else block.shape[1]
        return block, [f"{columns[0]}[{k}]" for k in range(width)], issues
    block, issues = numeric_block(df, columns, allow_nan=False, what="a student feature")
    return block, list(columns), issues


# ---- media ----------------------------------------------------------------------------------------------------

def media_problem(root: Path, value: Any, kind: str, allow_outside: bool = False) -> str | None:
    """Why a row's media is unusable, or None (a cheap check; decoding comes at extraction). Paths stay inside
    the dataset folder unless the dataset allows otherwise; devices and other non-regular files are refused."""
    if is_missing(value):
        return f"no {kind} path given"
    try:
        path = confined(root, str(value), allow_outside)
    except ValueError as err:
        return str(err)
    if kind == "video":
        if path.exists() and not path.is_file():
            return f"not a regular file: {printable(value)}"
        if not path.is_file():
            return f"video file not found: {path}"
        if path.stat().st_size == 0:
            return f"video file is empty (0 bytes): {path}"
        return None
    if not path.is_dir():
        return f"frames folder not found: {path}"
    if not any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.iterdir()):
        return f"frames folder has no images ({', '.join(sorted(IMAGE_SUFFIXES))}): {path}"
    return None


def decode_media(task: tuple) -> tuple[FrameClip | None, str | None]:
    """``(kind, path, sampling[, max_seconds])`` -> (clip, None) or (None, reason). Picklable: runs in decoding
    workers, where the decode limits are enforced (a server passes its request time limit as ``max_seconds``)."""
    kind, path, sampling, *rest = task
    limits = DecodeLimits(max_seconds=rest[0]) if rest else DecodeLimits()
    try:
        s = FrameSampling(**sampling)
        clip = decode_video(path, s, limits) if kind == "video" else read_frames_folder(path, s)
        return clip, None
    except MediaError as err:
        return None, str(err)


def ocr_sampling(cfg: ExtractConfig) -> FrameSampling:
    """OCR reads the clip's middle frame at ``ocr_size`` (text needs more pixels than the encoder)."""
    return FrameSampling(num_frames=1, size=cfg.ocr_size)


@dataclass
class SkippedRow:
    file: str
    row: int
    id: str
    column: str
    reason: str


def apply_media_policy(bad: Mapping[int, str], policy: str, column: str,
                       locate: Callable[[int], tuple[str, int, str]], log: Callable[[str], None] = print
                       ) -> list[SkippedRow]:
    """The bad-media policy, the one implementation: ``fail`` raises a :class:`DatasetError` naming every bad row
    (file, row, id, column, reason); ``skip`` returns them as :class:`SkippedRow` and logs each one."""
    if policy not in MEDIA_POLICIES:
        raise ValueError(f"bad-media policy must be one of {MEDIA_POLICIES}, not {policy!r}")
    if not bad:
        return []
    if policy == "fail":
        grouped: dict[tuple[str, str], list[tuple[int, str]]] = {}
        for index, reason in sorted(bad.items()):
            file, row, row_id = locate(index)
            grouped.setdefault((file, reason), []).append((row, row_id))
        raise DatasetError([Problem(file, reason, column, [r for r, _ in rows], [i for _, i in rows])
                            for (file, reason), rows in grouped.items()])
    skipped = []
    for index, reason in sorted(bad.items()):
        file, row, row_id = locate(index)
        skipped.append(SkippedRow(file, row, row_id, column, reason))
        log(f"skipped {file} row {row} [{row_id}] column {column!r}: {reason}")
    return skipped


# ---- encoders -------------------------------------------------------------------------------------------------

def make_frame_encoder(cfg: ExtractConfig) -> FrameEncoder:
    return create_encoder(cfg.frames_encoder, **cfg.frames_encoder_args)


def make_text_encoder(cfg: ExtractConfig) -> TextEncoder:
    return create_encoder(cfg.text_encoder, max_tokens=cfg.max_tokens, truncation=cfg.text_truncation,
                          **cfg.text_encoder_args)


def frames_tensor(clips: list[np.ndarray]) -> torch.Tensor:
    """Clips (K, H, W, 3) uint8 -> (sum K, 3, H, W) float in [0, 1], the frame encoders' input."""
    return torch.from_numpy(np.concatenate(clips)).permute(0, 3, 1, 2).float() / 255.0


class Preprocessor:
    """Raw inputs -> student inputs with the frozen encoders of ``cfg``, built on first use (a run whose clips
    are all cached never loads them)."""

    def __init__(self, cfg: ExtractConfig):
        self.cfg = cfg
        self._frames: FrameEncoder | None = None
        self._text: TextEncoder | None = None
        self._ocr: OCRReader | None = None

    @property
    def frame_encoder(self) -> FrameEncoder:
        if self._frames is None:
            self._frames = make_frame_encoder(self.cfg).to(self.cfg.device).eval()
        return self._frames

    @property
    def text_encoder(self) -> TextEncoder:
        if self._text is None:
            self._text = make_text_encoder(self.cfg).to(self.cfg.device).eval()
        return self._text

    def decode(self, path: str | Path, kind: str = "video") -> FrameClip:
        clip, error = decode_media((kind, str(path), self.cfg.sampling.model_dump()))
        if error:
            raise MediaError(error)
        return clip

    def read_ocr(self, frame_rgb: np.ndarray) -> str:
        if self._ocr is None:
            self._ocr = OCRReader()
        return self._ocr.read(frame_rgb)

    def ocr_text(self, path: str | Path, kind: str = "video") -> str:
        clip, error = decode_media((kind, str(path), ocr_sampling(self.cfg).model_dump()))
        if error:
            raise MediaError(error)
        return self.read_ocr(clip.frames[0])

    @torch.no_grad()
    def encode_frames(self, clips: list[np.ndarray]) -> np.ndarray:
        """Decoded clips, each (K, H, W, 3) uint8 -> frame embeddings (B, K, D) float32."""
        k = self.cfg.sampling.num_frames
        per_call = max(1, self.cfg.batch_size // k)
        out = []
        for b in range(0, len(clips), per_call):
            x = frames_tensor(clips[b:b + per_call]).to(self.cfg.device)
            out.append(self.frame_encoder(x).float().cpu().numpy())
        return np.concatenate(out).reshape(len(clips), k, -1)

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Texts -> token vectors (B, L, D) float32 and mask (B, L) bool."""
        tokens, mask, _ = self.text_encoder(list(texts))
        return tokens.float().cpu().numpy(), mask.cpu().numpy().astype(bool)

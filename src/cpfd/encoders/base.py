"""The encoder seam: a registry and the two interfaces the extraction step and the fusion trunk rely on."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from torch import Tensor, nn

from cpfd.errors import CpfdError
from cpfd.registry import ENCODERS


class EncoderError(CpfdError, ValueError):
    """An encoder that cannot be built here (missing local path, missing optional package)."""


class FrameEncoder(nn.Module):
    """(N, 3, H, W) float RGB in [0, 1] -> (N, dim)."""

    dim: int
    kind = "frames"

    def fingerprint(self) -> str:
        raise NotImplementedError

    def forward(self, frames: Tensor) -> Tensor:
        raise NotImplementedError


class TextEncoder(nn.Module):
    """list of strings -> token vectors (B, L, dim), mask (B, L) and a pooled vector (B, dim)."""

    dim: int
    max_tokens: int
    kind = "text"

    def fingerprint(self) -> str:
        raise NotImplementedError

    def tokenize(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        """Token ids (B, L) and mask (B, L); with :meth:`encode_ids` this is the trainable (end-to-end) path."""
        raise NotImplementedError

    def token_counts(self, texts: list[str]) -> list[int]:
        """Tokens each text has before truncation to ``max_tokens`` (reported at extraction)."""
        raise NotImplementedError

    def encode_ids(self, ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        raise NotImplementedError

    def forward(self, texts: list[str]) -> tuple[Tensor, Tensor, Tensor]:
        raise NotImplementedError


def create_encoder(name: str, **kwargs) -> FrameEncoder | TextEncoder:
    """Build a registered encoder by name, e.g. ``create_encoder("hf_text", path="/models/my-bert")``."""
    return ENCODERS.get(name)(**kwargs)


def local_path(path: str | Path | None, what: str) -> Path:
    """A local checkpoint path; a hub-style name gets the offline explanation instead of a download attempt."""
    if path is None:
        raise EncoderError(f"{what}: give a local path (path=...)")
    p = Path(path).expanduser()
    if p.exists():
        return p
    if re.fullmatch(r"[\w.-]+/[\w.-]+", str(path)) and not str(path).startswith((".", "/")):
        raise EncoderError(f"{what}: {path!r} looks like a model-hub name; this runs offline: give a local path to "
                           "the downloaded model folder or checkpoint file")
    raise EncoderError(f"{what}: local path does not exist: {p}")


def file_fingerprint(path: Path, *extra: str) -> str:
    """Identity of weights on disk: name, size and mtime of every file (cheap; content hashing a model is slow)."""
    h = hashlib.sha256()
    files = sorted(path.rglob("*")) if path.is_dir() else [path]
    for f in files:
        if f.is_file():
            st = f.stat()
            h.update(f"{f.relative_to(path) if path.is_dir() else f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    for e in extra:
        h.update(e.encode())
    return h.hexdigest()[:16]


def mean_pool(tokens: Tensor, mask: Tensor) -> Tensor:
    m = mask.unsqueeze(-1).to(tokens.dtype)
    return (tokens * m).sum(1) / m.sum(1).clamp(min=1.0)



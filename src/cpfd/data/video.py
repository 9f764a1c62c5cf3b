"""Where a video becomes frames: PyAV decoding (mp4, webm, mov, mkv, gif; H.264/HEVC/VP9/AV1/mp4v) or a folder
of images, sampled to K frames uniformly over the clip and resized to a square.

A clip with fewer than K frames repeats frames (``FrameClip.repeated`` says so; the extraction log reports it).
Anything that cannot give at least one frame raises :class:`MediaError` with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cpfd.config import FrameSampling
from cpfd.errors import CpfdError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class MediaError(CpfdError, ValueError):
    """A video or frames folder that cannot be used; the message is the reason shown to the user."""


@dataclass
class FrameClip:
    frames: np.ndarray  # (K, size, size, 3) uint8 RGB
    source_frames: int  # frames the clip actually had
    repeated: bool  # fewer than K distinct frames: some were repeated


def sample_indices(n: int, k: int, strategy: str = "uniform") -> np.ndarray:
    """K indices into n frames: centres of K equal segments (uniform) or the first K; repeats when n < K."""
    if n <= 0:
        raise MediaError("no frames")
    if strategy == "head":
        return np.minimum(np.arange(k), n - 1)
    return np.minimum(((np.arange(k) + 0.5) * n / k).astype(int), n - 1)


def decode_video(path: str | Path, sampling: FrameSampling) -> FrameClip:
    import av

    path = Path(path)
    if not path.is_file():
        raise MediaError(f"video file not found: {path}")
    if path.stat().st_size == 0:
        raise MediaError(f"video file is empty (0 bytes): {path}")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise MediaError(f"no video stream in {path} (audio only?)")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            frames = [f.to_ndarray(width=sampling.size, height=sampling.size, format="rgb24")
                      for f in container.decode(stream)]
    except MediaError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as err:
        raise MediaError(f"cannot decode {path}: {type(err).__name__}: {err}") from None
    if not frames:
        raise MediaError(f"no decodable frame in {path}")
    idx = sample_indices(len(frames), sampling.num_frames, sampling.strategy)
    return FrameClip(np.stack([frames[i] for i in idx]), len(frames), len(frames) < sampling.num_frames)


def read_frames_folder(folder: str | Path, sampling: FrameSampling) -> FrameClip:
    from PIL import Image

    folder = Path(folder)
    if not folder.is_dir():
        raise MediaError(f"frames folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise MediaError(f"frames folder has no images ({', '.join(IMAGE_SUFFIXES)}): {folder}")
    idx = sample_indices(len(files), sampling.num_frames, sampling.strategy)
    frames = []
    for i in idx:
        try:
            with Image.open(files[i]) as img:
                frames.append(np.asarray(img.convert("RGB").resize((sampling.size, sampling.size))))
        except OSError as err:
            raise MediaError(f"cannot read image {files[i]}: {err}") from None
    return FrameClip(np.stack(frames), len(files), len(files) < sampling.num_frames)

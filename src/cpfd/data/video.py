"""Where a video becomes frames: PyAV decoding (mp4, webm, mov, mkv, gif; H.264/HEVC/VP9/AV1/mp4v) or a folder
of images, sampled to K frames uniformly over the clip and resized to a square.

A clip with fewer than K frames repeats frames (``FrameClip.repeated`` says so; the extraction log reports it).
Anything that cannot give at least one frame raises :class:`MediaError` with the reason.
"""

from __future__ import annotations

import time
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


# Only real container demuxers, never one that opens further files or URLs named inside the upload (HLS and DASH
# playlists, ffconcat lists, image sequences, ...), and only the local file protocol.
DEMUXERS = "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,gif,avi,mpegts,flv"


@dataclass(frozen=True)
class DecodeLimits:
    """Hard caps on one clip's decoding, enforced where it decodes (a worker process when serving)."""

    max_frames: int = 20_000  # frames decoded (a 30-minute clip at 10 fps)
    max_pixels: int = 4096 * 4096  # per frame
    max_seconds: float = 60.0  # wall time
    buffer: int = 256  # frames kept when the container does not say how many it has


def decode_video(path: str | Path, sampling: FrameSampling, limits: DecodeLimits = DecodeLimits()) -> FrameClip:
    """K frames sampled uniformly over the clip, decoded as a stream: only the sampled frames are converted and
    kept (when the container does not state its frame count, at most ``limits.buffer`` frames at a doubling
    stride are). Raises :class:`MediaError` past any limit."""
    import av

    path = Path(path)
    if not path.is_file():
        raise MediaError(f"video file not found: {path}")
    if path.stat().st_size == 0:
        raise MediaError(f"video file is empty (0 bytes): {path}")
    deadline = time.monotonic() + limits.max_seconds
    try:
        with av.open(str(path), options={"format_whitelist": DEMUXERS, "protocol_whitelist": "file"}) as container:
            if not container.streams.video:
                raise MediaError(f"no video stream in {path} (audio only?)")
            stream = container.streams.video[0]
            if stream.width * stream.height > limits.max_pixels:
                raise MediaError(f"frames of {stream.width}×{stream.height} pixels are over the limit of "
                                 f"{limits.max_pixels} pixels: {path}")
            stream.thread_type = "AUTO"
            frames, count = _sample_stream(container.decode(stream), int(stream.frames or 0), sampling, limits,
                                           deadline, path)
    except MediaError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as err:
        raise MediaError(f"cannot decode {path}: {type(err).__name__}: {err}") from None
    if not frames:
        raise MediaError(f"no decodable frame in {path}")
    return FrameClip(np.stack(frames), count, count < sampling.num_frames)


def _sample_stream(decoded, stated: int, sampling: FrameSampling, limits: DecodeLimits, deadline: float,
                   path: Path) -> tuple[list[np.ndarray], int]:
    """Decode-and-drop: (the K sampled frames, frames decoded)."""

    def convert(frame) -> np.ndarray:
        return frame.to_ndarray(width=sampling.size, height=sampling.size, format="rgb24")

    def check(count: int) -> None:
        if count > limits.max_frames:
            raise MediaError(f"more than {limits.max_frames} frames: {path}")
        if time.monotonic() > deadline:
            raise MediaError(f"decoding took longer than {limits.max_seconds:.0f} s: {path}")

    if stated > 0:  # the container states its length: convert only the frames to keep
        targets = sample_indices(stated, sampling.num_frames, sampling.strategy)
        wanted = set(targets.tolist())
        kept: dict[int, np.ndarray] = {}
        count = 0
        for i, frame in enumerate(decoded):
            count = i + 1
            check(count)
            if i in wanted:
                kept[i] = convert(frame)
            if i >= targets.max():
                break
        if len(kept) == len(wanted):
            return [kept[i] for i in targets], max(count, stated)
        # Fewer frames than stated (a truncated file): sample what was decoded.
        available = sorted(kept)
        if not available:
            return [], count
        idx = sample_indices(len(available), sampling.num_frames, sampling.strategy)
        return [kept[available[i]] for i in idx], count
    buffer: list[tuple[int, np.ndarray]] = []
    stride, count = 1, 0
    for i, frame in enumerate(decoded):
        count = i + 1
        check(count)
        if i % stride == 0:
            buffer.append((i, convert(frame)))
            if len(buffer) > limits.buffer:  # keep every other frame from now on
                stride *= 2
                buffer = [(j, f) for j, f in buffer if j % stride == 0]
    if not buffer:
        return [], count
    idx = sample_indices(count, sampling.num_frames, sampling.strategy)
    positions = np.array([j for j, _ in buffer])
    nearest = [int(np.argmin(np.abs(positions - i))) for i in idx]
    return [buffer[k][1] for k in nearest], count


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

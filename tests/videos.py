"""Test clips made in the test: PyAV-encoded videos whose frame i has brightness 10·i, so sampling can be checked."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np


def write_video(path: Path, n_frames: int = 16, codec: str = "libx264", size: int = 64, fps: int = 8) -> Path:
    pix_fmt = {"gif": "rgb8"}.get(codec, "yuv420p")
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = size, size, pix_fmt
        for i in range(n_frames):
            img = np.full((size, size, 3), min(255, 10 * i), np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_audio_only(path: Path) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        samples = np.zeros((1, 1024), np.float32)
        for _ in range(10):
            frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            frame.sample_rate = 16000
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path

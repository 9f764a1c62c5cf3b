"""Extraction throughput: PyAV decode time per clip, the frame encoder alone on already-decoded frames (the
physical limit here), and the full extraction (decode in workers + batched encoding + cache writes).

    python bench/extraction.py [--clips 120] [--frames 4] [--size 112] [--workers 1]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import OUT  # noqa: E402

from cpfd.config import ExtractConfig, FrameSampling  # noqa: E402
from cpfd.data.embeddings import MediaRow, extract_frames  # noqa: E402
from cpfd.data.preprocess import Preprocessor, frames_tensor  # noqa: E402
from cpfd.data.video import decode_video  # noqa: E402
from cpfd.demo import generate  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=120)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    folder = OUT / "extraction" / "data"
    if not (folder / "dataset.yaml").exists():
        generate(folder, n_labelled=args.clips, n_unlabelled=0)
    clips = sorted((folder / "clips").glob("*.mp4"))[: args.clips]
    sampling = FrameSampling(num_frames=args.frames, size=args.size)
    print(f"clips={len(clips)} (2 s, 16 frames of 128×128 mp4v each) K={args.frames} size={args.size} "
          f"threads={torch.get_num_threads()}")

    decode_s = []
    decoded = []
    for path in clips:
        tic = time.perf_counter()
        decoded.append(decode_video(path, sampling).frames)
        decode_s.append(time.perf_counter() - tic)
    print(f"PyAV decode + resample: median {1000 * statistics.median(decode_s):.1f} ms/clip "
          f"({len(clips) / sum(decode_s):.1f} clips/s, one process)")

    cfg = ExtractConfig(sampling=sampling, workers=args.workers, batch_size=args.batch_size, shard_size=64)
    pre = Preprocessor(cfg)
    encoder = pre.frame_encoder
    per_batch = max(1, args.batch_size // args.frames)
    with torch.no_grad():
        encoder(frames_tensor(decoded[:per_batch]))  # warm-up
        tic = time.perf_counter()
        for b in range(0, len(decoded), per_batch):
            encoder(frames_tensor(decoded[b:b + per_batch]))
        enc_s = time.perf_counter() - tic
    n_frames = len(clips) * args.frames
    print(f"encoder alone (EfficientNet-Lite0, batch {args.batch_size} frames): {n_frames / enc_s:.1f} frames/s, "
          f"{len(clips) / enc_s:.2f} clips/s")

    cache = OUT / "extraction" / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    rows = [MediaRow(i, p.stem, p, "video") for i, p in enumerate(clips)]
    tic = time.perf_counter()
    extract_frames(rows, pre, cache, log=lambda m: None, progress=False)
    full_s = time.perf_counter() - tic
    print(f"full extraction (workers={args.workers}): {len(clips) / full_s:.2f} clips/s, {n_frames / full_s:.1f} "
          f"frames/s = {enc_s / full_s:.2f} × the encoder-alone rate")
    tic = time.perf_counter()
    extract_frames(rows, pre, cache, log=lambda m: None, progress=False)
    print(f"second run (all cached): {time.perf_counter() - tic:.2f} s for {len(clips)} clips")


if __name__ == "__main__":
    main()

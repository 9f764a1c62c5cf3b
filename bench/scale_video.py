"""Memory at scale for video-shaped rows: frame and text-token embeddings from the cache into a float16 store.

Each row has a clip, a title, 64 privileged float32 columns and one binary task (10 % labelled). Decoding and
encoding a million clips on 2 CPU cores would take days, so the embedding cache is filled directly with
generated vectors of the encoders' shapes (4 frames × 1280, 32 title tokens × 384), keyed exactly as extraction
keys them; every clip path points to one small placeholder file (the cheap media check passes, nothing is
decoded). What is measured is everything after encoding: reading the cache into the store (float16, ~35 KB a
row), fit-teacher, distill and export, each in its own process (peak RSS = the process's own ``VmHWM``,
anonymous and file-backed parts sampled from ``/proc``). ``predict`` is left out: it decodes real clips.

    python bench/scale_video.py --rows 30000 100000 300000 [--stages extract]

Results go to ``bench/out/scale_video/results.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from scale import du, run  # noqa: E402

OUT = Path(__file__).parent / "out" / "scale_video"
STAGES = ("extract", "fit-teacher", "distill", "export")
SETTINGS = ["extract.max_tokens=32", "extract.store_float16=true", "extract.sampling.num_frames=4"]
SHARD_ROWS = 256


def generate(folder: Path, n: int, seed: int = 0) -> Path:
    """The table, a placeholder clip, and the embedding cache filled with generated vectors."""
    from cpfd.config import load_config
    from cpfd.data.embeddings import MediaRow, ShardStore, frames_key, text_key
    from cpfd.data.preprocess import Preprocessor

    if (folder / "dataset.yaml").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "clips").mkdir(exist_ok=True)
    (folder / "clips" / "clip.mp4").write_bytes(b"\0" * 1024)  # exists and is not empty; never decoded here
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=n)
    privileged = (latent[:, None] * 0.5 + rng.normal(size=(n, 64))).astype(np.float32)
    u = rng.random(n)
    split = np.where(u < 0.08, "train", np.where(u < 0.09, "val", np.where(u < 0.10, "test", "train")))
    df = pd.DataFrame({"id": [f"v{i}" for i in range(n)], "clip": "clips/clip.mp4",
                       "title": [f"clip {i} about topic {int(rng.integers(50))}" for i in range(n)],
                       "split": split, "label": np.where(u < 0.10, (latent > 0).astype(float), np.nan)})
    for j in range(64):
        df[f"z{j}"] = privileged[:, j]
    df.to_parquet(folder / "data.parquet", row_group_size=65_536)
    spec = {"format": 1, "name": f"video-scale-{n}", "table": "data.parquet", "id": "id", "split": "split",
            "inputs": {"video": "clip", "text": ["title"]}, "privileged": ["z*"],
            "tasks": [{"name": "y", "type": "binary", "column": "label"}]}
    (folder / "dataset.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))

    cfg = load_config(overrides=SETTINGS).extract
    pre = Preprocessor(cfg)
    cache = folder / ".cpfd_cache"
    frames_fp, text_fp = pre.frame_encoder.fingerprint(), pre.text_encoder.fingerprint()
    frames = ShardStore(cache / f"frames-{frames_fp}")
    texts = ShardStore(cache / f"text-{text_fp}")
    tokens, mask = pre.encode_text(["shape probe"])
    length, width = tokens.shape[1:]
    root = folder.resolve()
    for start in range(0, n, SHARD_ROWS):
        rows = range(start, min(start + SHARD_ROWS, n))
        signal = latent[list(rows)].astype(np.float32)
        frames.write({frames_key(MediaRow(i, f"v{i}", root / "clips/clip.mp4", "video"), frames_fp,
                                 cfg.sampling): {"frames": rng.normal(size=(cfg.sampling.num_frames, 1280))
                                                 .astype(np.float32) + 0.3 * s}
                      for i, s in zip(rows, signal)})
        texts.write({text_key(df["title"].iat[i], text_fp): {
            "tokens": rng.normal(size=(length, width)).astype(np.float32) + 0.3 * s,
            "mask": np.ones(length, dtype=np.float32)} for i, s in zip(rows, signal)})
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[30_000, 100_000, 300_000])
    ap.add_argument("--keep", action="store_true", help="keep the generated data and runs (tens of GB)")
    ap.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    args = ap.parse_args()
    cpfd = [sys.executable, "-m", "cpfd"]
    sets = [a for s in SETTINGS + ["train.epochs=1", "train.min_steps=0"] for a in ("--set", s)]
    results = json.loads((OUT / "results.json").read_text()) if (OUT / "results.json").exists() else {}
    for n in args.rows:
        print(f"{n} rows: generating ...", flush=True)
        ds = generate(OUT / f"data-{n}", n)
        runs = OUT / f"runs-{n}"
        shutil.rmtree(runs, ignore_errors=True)
        shutil.rmtree(ds / ".cpfd_cache" / "store", ignore_errors=True)
        runs.mkdir(parents=True)
        cmds = {
            "extract": cpfd + ["extract", str(ds), *sets],
            "fit-teacher": cpfd + ["fit-teacher", str(ds), "--out", str(runs / "teacher"), *sets],
            "distill": cpfd + ["distill", str(ds), "--teacher", str(runs / "teacher"), "--out", str(runs / "student"),
                               *sets],
            "export": cpfd + ["export", str(runs / "student"), "--out", str(runs / "bundle")],
        }
        row = {"rows": n}
        for stage in args.stages:
            print(f"{n} rows: {stage} ...", flush=True)
            row[stage] = run(cmds[stage], runs / f"{stage}.log")
            print(f"  {row[stage]}", flush=True)
        store = next((ds / ".cpfd_cache" / "store").glob("*/meta.json")).parent
        row["store_mb"] = round(du(store), 1)
        row["store_kb_per_row"] = round(du(store) * 1024 / n, 1)
        results[str(n)] = {**results.get(str(n), {}), **row}
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "results.json").write_text(json.dumps(results, indent=1))
        if not args.keep:  # tens of GB at these sizes
            shutil.rmtree(runs, ignore_errors=True)
            shutil.rmtree(ds, ignore_errors=True)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

"""Serving benchmarks for an exported student.

1. torch vs onnxruntime latency for the student (fusion trunk + heads), batch 1 and 32 (ratio in one run);
2. student vs teacher compute per sample (FLOPs counted by torch, and time);
3. a bounded load test against the real server on 127.0.0.1: C concurrent clients, a fixed number of requests,
   JSON requests (text + precomputed frame embeddings) and video uploads; requests/s, p50/p99 latency, errors.

    python bench/serving.py [--clients 8] [--requests 400] [--uploads 100]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import OUT, start_server  # noqa: E402

from cpfd.cli import app  # noqa: E402
from cpfd.demo import generate  # noqa: E402

SETS = ["extract.sampling.num_frames=4", "extract.sampling.size=112", "extract.max_tokens=16", "extract.workers=1",
        "train.batch_size=64", "train.epochs=5", "train.progress=false"]


def _cli(*args: str) -> None:
    sets = [x for s in SETS for x in ("--set", s)]
    app([*args, *sets] if args[0] in ("fit-teacher", "distill") else list(args), standalone_mode=False)


def build(root: Path) -> Path:
    data = root / "data"
    if not (data / "dataset.yaml").exists():
        generate(data, n_labelled=120, n_unlabelled=0)
    if not (root / "bundle" / "bundle.json").exists():
        _cli("fit-teacher", str(data), "--out", str(root / "teacher"))
        _cli("distill", str(data), "--teacher", str(root / "teacher"), "--out", str(root / "student"))
        _cli("export", str(root / "student"), "--out", str(root / "bundle"))
    return data


def latency(root: Path, reps: int = 200) -> None:
    from cpfd.export.runtime import StudentBundle

    runtimes = {rt: StudentBundle(root / "bundle", rt) for rt in ("torch", "onnx")}
    meta = runtimes["torch"].meta
    for batch in (1, 32):
        inputs = {}
        for name, shape in meta["inputs"].items():
            dtype = meta["input_dtypes"][name]
            inputs[name] = (np.ones([batch, *shape], dtype=bool) if dtype == "bool"
                            else np.random.default_rng(0).normal(size=[batch, *shape]).astype(np.float32))
        times = {rt: [] for rt in runtimes}
        for rt in runtimes.values():
            rt.logits(inputs)
        for _ in range(reps):
            for name, rt in runtimes.items():
                tic = time.perf_counter()
                rt.logits(inputs)
                times[name].append(time.perf_counter() - tic)
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"student latency, batch {batch}: torch {1000 * med['torch']:.3f} ms, onnxruntime "
              f"{1000 * med['onnx']:.3f} ms, torch/onnx = {med['torch'] / med['onnx']:.2f}x")


def compute(root: Path, data: Path) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    from cpfd.data import load_dataset
    from cpfd.models.build import load_student, load_teacher
    from cpfd.runs import RunFolder

    cfg = RunFolder(root / "student").config
    ds = load_dataset(data, extract=cfg.extract, log=lambda m: None)
    student, teacher = load_student(root / "student", ds), load_teacher(root / "teacher", ds)
    rows = torch.arange(32)
    inputs = {k: v[rows] for k, v in ds.student_inputs.items()}
    results = {}
    for name, model, extra in (("student", student, {}), ("teacher", teacher, {"privileged": ds.privileged[rows]})):
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(**inputs, **extra)
        tic = time.perf_counter()
        with torch.no_grad():
            for _ in range(50):
                model(**inputs, **extra)
        results[name] = (counter.get_total_flops() / 32, (time.perf_counter() - tic) / 50 / 32)
    for name, (flops, sec) in results.items():
        print(f"{name}: {flops / 1e6:.2f} MFLOP per sample (fusion + heads on cached embeddings), "
              f"{1e6 * sec:.1f} us per sample at batch 32")
    print(f"teacher / student FLOPs = {results['teacher'][0] / results['student'][0]:.3f}")


async def _load(base: str, clients: int, n: int, make_request) -> tuple[list[float], int, float]:
    import httpx

    latencies: list[float] = []
    errors = 0
    queue = list(range(n))

    async def worker(client):
        nonlocal errors
        while queue:
            i = queue.pop()
            tic = time.perf_counter()
            try:
                r = await client.post(f"{base}/v1/predict", timeout=120, **make_request(i))
                if r.status_code != 200:
                    errors += 1
            except httpx.HTTPError:
                errors += 1
            latencies.append(time.perf_counter() - tic)

    tic = time.perf_counter()
    async with httpx.AsyncClient() as client:
        await asyncio.gather(*(worker(client) for _ in range(clients)))
    return latencies, errors, time.perf_counter() - tic


def load_test(root: Path, data: Path, clients: int, requests: int, uploads: int) -> None:

    proc, base = start_server(root / "bundle", "--runtime", "onnx")
    try:
        meta = json.loads((root / "bundle" / "bundle.json").read_text())
        k, d = meta["inputs"]["frames"]
        emb = np.random.default_rng(0).normal(size=(k, d)).round(4).tolist()
        clips = sorted((data / "clips").glob("*.mp4"))
        cases = {
            "JSON (title + frame embeddings)": (requests, lambda i: {"json": {"text": {"title": f"video {i}"},
                                                                               "frame_embeddings": emb}}),
            "multipart video upload": (uploads, lambda i: {"files": {"video": ("c.mp4", clips[i % len(clips)].read_bytes(),
                                                                               "video/mp4")},
                                                           "data": {"title": f"video {i}"}}),
        }
        for name, (n, make) in cases.items():
            asyncio.run(_load(base, clients, min(n, 2 * clients), make))  # warm-up
            lat, errors, wall = asyncio.run(_load(base, clients, n, make))
            lat_ms = np.array(lat) * 1000
            print(f"load test, {name}: {clients} clients, {n} requests: {n / wall:.1f} req/s, p50 "
                  f"{np.percentile(lat_ms, 50):.1f} ms, p99 {np.percentile(lat_ms, 99):.1f} ms, errors {errors}")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--uploads", type=int, default=100)
    args = parser.parse_args()
    root = OUT / "serving"
    data = build(root)
    print(f"threads={torch.get_num_threads()}")
    latency(root)
    compute(root, data)
    load_test(root, data, args.clients, args.requests, args.uploads)


if __name__ == "__main__":
    main()

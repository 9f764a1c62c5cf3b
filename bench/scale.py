"""Memory and throughput at scale: peak RSS, disk and rows/s of each command on generated tables.

The table is shaped like the issue's (64 student + 64 privileged float32 columns, one binary task, 10 % labelled
rows split 80/10/10, the rest unlabelled train rows that are only distilled). Each command runs in its own process
and its peak RSS is that process's own high-water mark (``VmHWM``, polled; see :func:`run`).

    python bench/scale.py --rows 100000 1000000 3000000 --keep
    python bench/scale.py --rows 1000000 --stages predict --predict-sweep   # predict's default vs other chunks

Results go to ``bench/out/scale/results.json`` and are printed as a table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

OUT = Path(__file__).parent / "out" / "scale"
STAGES = ("validate", "fit-teacher", "distill", "export", "predict")
SWEEP = (1024, 8192, 65536)  # --batch-rows tried by --predict-sweep beside the default
ROW_GROUP = 65_536


def generate(folder: Path, n: int, width: int = 64, seed: int = 0) -> Path:
    """Write the table in row groups (never the whole table in memory) and its dataset.yaml."""
    if (folder / "dataset.yaml").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w_student, w_priv = rng.normal(size=width) / np.sqrt(width), rng.normal(size=width) / np.sqrt(width)
    names = [f"x{j}" for j in range(width)] + [f"z{j}" for j in range(width)]
    schema = pa.schema([("id", pa.string()), ("split", pa.string()), ("label", pa.float64())]
                       + [(c, pa.float32()) for c in names])
    with pq.ParquetWriter(folder / "data.parquet", schema) as writer:
        for start in range(0, n, ROW_GROUP):
            m = min(ROW_GROUP, n - start)
            x = rng.normal(size=(m, width)).astype(np.float32)
            z = (0.6 * x + 0.8 * rng.normal(size=(m, width))).astype(np.float32)
            logit = x @ w_student + 2.0 * z @ w_priv
            y = (rng.random(m) < 1 / (1 + np.exp(-logit))).astype(np.float64)
            u = rng.random(m)
            split = np.where(u < 0.08, "train", np.where(u < 0.09, "val", np.where(u < 0.10, "test", "train")))
            label = np.where(u < 0.10, y, np.nan)
            cols = {"id": pa.array([f"r{start + i}" for i in range(m)]), "split": pa.array(split),
                    "label": pa.array(label)}
            cols |= {f"x{j}": pa.array(x[:, j]) for j in range(width)}
            cols |= {f"z{j}": pa.array(z[:, j]) for j in range(width)}
            writer.write_table(pa.table(cols, schema=schema))
    spec = {"format": 1, "name": f"scale-{n}", "table": "data.parquet", "id": "id", "split": "split",
            "inputs": {"features": ["x*"]}, "privileged": ["z*"],
            "tasks": [{"name": "y", "type": "binary", "column": "label"}]}
    (folder / "dataset.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return folder


def _memory(pid: int) -> tuple[int, int, int]:
    """(high-water mark, anonymous, file-backed) resident kB of a running process."""
    try:
        fields = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status"))
    except (OSError, ValueError):
        return 0, 0, 0
    return tuple(int(fields.get(k, "0 kB").split()[0]) for k in ("VmHWM", "RssAnon", "RssFile"))


def run(cmd: list[str], log: Path) -> dict:
    """Run one command in its own process: wall seconds, its peak RSS and, sampled every 20 ms, the peaks of its
    anonymous memory and of its mapped file pages (the memory-mapped store and libraries: clean pages the kernel
    can drop under memory pressure).

    The peak RSS is the child's own high-water mark (``VmHWM`` of its address space, polled; it only grows, so a
    poll misses at most the last 20 ms). Not ``wait4``'s ``ru_maxrss``: Linux carries the forking parent's
    high-water mark across ``exec`` into it, so a child of a large parent (bench/scale_video.py loads the encoders
    to fill the cache) reported the parent's size as its own peak.

    The log's lines carry the seconds since start, and ``<log>.rss.csv`` holds the samples (every 0.5 s), so a peak
    can be matched to the pass that made it."""
    start = time.perf_counter()
    peaks = [0, 0, 0]
    trace: list[tuple[float, int, int]] = []
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "CI": "true"},
                                text=True, bufsize=1)
        done = threading.Event()

        def sample() -> None:
            last = -1.0
            while not done.is_set():
                now_kb = _memory(proc.pid)
                peaks[:] = [max(p, v) for p, v in zip(peaks, now_kb)]
                now = time.perf_counter() - start
                if now - last >= 0.5:
                    trace.append((round(now, 2), now_kb[1] // 1024, now_kb[2] // 1024))
                    last = now
                time.sleep(0.02)

        def copy_log() -> None:
            for line in proc.stdout:
                fh.write(f"[{time.perf_counter() - start:8.2f}s] {line}")
                fh.flush()

        sampler = threading.Thread(target=sample, daemon=True)
        copier = threading.Thread(target=copy_log, daemon=True)
        sampler.start()
        copier.start()
        status = proc.wait()
        done.set()
        sampler.join()
        copier.join()
    Path(f"{log}.rss.csv").write_text("seconds,anon_mb,file_mb\n" + "".join(f"{t},{a},{f}\n" for t, a, f in trace))
    wall = time.perf_counter() - start
    if status != 0:
        sys.exit(f"{' '.join(cmd)} failed; see {log}")
    return {"wall_s": round(wall, 1), "peak_rss_mb": round(peaks[0] / 1024, 1),
            "peak_anon_mb": round(peaks[1] / 1024, 1), "peak_file_mb": round(peaks[2] / 1024, 1)}


def du(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    ap.add_argument("--keep", action="store_true", help="keep the generated tables and runs")
    ap.add_argument("--predict-sweep", action="store_true",
                    help=f"also time predict with --batch-rows {SWEEP} (needs the bundle of a --keep run)")
    ap.add_argument("--set", dest="sets", action="append", default=[],
                    help="config override for fit-teacher and distill, e.g. train.release_pages_every=64")
    ap.add_argument("--label", default="", help="suffix of the results key (rows + label), for runs with --set")
    args = ap.parse_args()
    cpfd = [sys.executable, "-m", "cpfd"]
    results = json.loads((OUT / "results.json").read_text()) if (OUT / "results.json").exists() else {}
    for n in args.rows:
        ds = generate(OUT / f"data-{n}", n)
        runs = OUT / f"runs-{n}"
        if "fit-teacher" in args.stages:  # a fresh pipeline; stages alone reuse the kept runs
            shutil.rmtree(runs, ignore_errors=True)
        if "validate" in args.stages:
            shutil.rmtree(ds / ".cpfd_cache", ignore_errors=True)
        runs.mkdir(parents=True, exist_ok=True)
        common = ["--set", "train.epochs=1", "--set", "train.min_steps=0",
                  *[arg for item in args.sets for arg in ("--set", item)]]
        cmds = {
            "validate": cpfd + ["validate", str(ds)],
            "fit-teacher": cpfd + ["fit-teacher", str(ds), "--out", str(runs / "teacher"), *common],
            "distill": cpfd + ["distill", str(ds), "--teacher", str(runs / "teacher"), "--out", str(runs / "student"),
                               *common],
            "export": cpfd + ["export", str(runs / "student"), "--out", str(runs / "bundle")],
            "predict": cpfd + ["predict", str(runs / "bundle"), str(ds), "--out", str(runs / "pred.parquet")],
        }
        row = {"rows": n, "sets": args.sets, "table_mb": round((ds / "data.parquet").stat().st_size / 2**20, 1)}
        for stage in args.stages:
            print(f"{n} rows: {stage} ...", flush=True)
            row[stage] = run(cmds[stage], runs / f"{stage}.log") | {"rows_per_s": None}
            row[stage]["rows_per_s"] = round(n / row[stage]["wall_s"])
            print(f"  {row[stage]}", flush=True)
        if args.predict_sweep:
            for rows in SWEEP:
                print(f"{n} rows: predict --batch-rows {rows} ...", flush=True)
                row[f"predict@{rows}"] = run(cmds["predict"] + ["--batch-rows", str(rows)], runs / f"predict-{rows}.log")
                print(f"  {row[f'predict@{rows}']}", flush=True)
        row["store_mb"] = round(du(ds / ".cpfd_cache"), 1) if (ds / ".cpfd_cache").exists() else 0.0
        key = f"{n}{args.label}"
        results[key] = {**results.get(key, {}), **row}
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "results.json").write_text(json.dumps(results, indent=1))
        if not args.keep:
            shutil.rmtree(runs, ignore_errors=True)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

"""Soak run of `cpfd serve` on loopback: mixed valid and hostile requests for a bounded time.

Builds a small bundle from generated clips (baseline student, small frames), starts the server on 127.0.0.1, and
runs `--clients` threads for `--seconds`, each picking a request at random: valid uploads and JSON requests, and
hostile ones (invalid JSON, deep nesting, 5000-digit numbers, a playlist naming a server file, a corrupt clip, an
oversize body, a file part where a field belongs). Records requests served, responses by status, p50/p99 latency
of the valid requests, and the RSS of the server and its decode workers every second.

    python bench/soak.py --seconds 180 --clients 6
Targets (issue: harden every door): 0 responses >= 500; RSS flat within 10 % between the first and last minute.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import OUT, start_server  # noqa: E402

SETS = ["extract.sampling.num_frames=2", "extract.sampling.size=64", "extract.max_tokens=16", "extract.workers=0",
        "train.min_steps=50", "train.epochs=2", "train.progress=false"]


def build_bundle(root: Path) -> Path:
    from cpfd.cli import app
    from cpfd.demo import generate

    data = root / "data"
    if not (data / "dataset.yaml").exists():
        generate(data, n_labelled=40, n_unlabelled=0)
    if not (root / "bundle" / "bundle.json").exists():
        sets = [x for item in SETS for x in ("--set", item)]
        app(["distill", str(data), "--method", "none", "--out", str(root / "student"), "--force", *sets],
            standalone_mode=False)
        app(["export", str(root / "student"), "--out", str(root / "bundle")], standalone_mode=False)
    return data


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and its children, MB (from /proc)."""
    total = 0
    pids = [pid]
    try:
        pids += [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        pass
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def requests(data: Path) -> dict:
    clip = next((data / "clips").glob("*.mp4")).read_bytes()
    secret = next((data / "clips").glob("*.mp4"))
    emb = np.zeros((2, 1280)).tolist()
    playlist = f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n{secret}\n#EXT-X-ENDLIST\n".encode()
    j = {"content-type": "application/json"}
    return {
        "valid upload": lambda c: c.post("/v1/predict", files={"video": ("a.mp4", clip, "video/mp4")},
                                         data={"title": "my best goal"}),
        "valid json": lambda c: c.post("/v1/predict", json={"text": {"title": "a title"}, "frame_embeddings": emb}),
        "invalid json": lambda c: c.post("/v1/predict", content=b"{nope", headers=j),
        "deep nesting": lambda c: c.post("/v1/predict", content=b"[" * 50_000 + b"]" * 50_000, headers=j),
        "huge number": lambda c: c.post("/v1/predict", content=b'{"features": [' + b"7" * 5000 + b"]}", headers=j),
        "playlist": lambda c: c.post("/v1/predict", files={"video": ("x.m3u8", playlist, "application/x-mpegurl")},
                                     data={"title": "t"}),
        "corrupt clip": lambda c: c.post("/v1/predict", files={"video": ("b.mp4", clip[: len(clip) // 3], "video/mp4")},
                                         data={"title": "t"}),
        "oversize": lambda c: c.post("/v1/predict", files={"video": ("big.mp4", b"\0" * (3 * 2**20), "video/mp4")}),
        "file part": lambda c: c.post("/v1/predict", files={"video": ("a.mp4", clip, "video/mp4"),
                                                            "title": ("t.txt", b"x", "text/plain")}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=180)
    parser.add_argument("--clients", type=int, default=6)
    args = parser.parse_args()
    root = OUT / "soak"
    data = build_bundle(root)
    server, base = start_server(root / "bundle", "--max-upload-mb", "2", "--timeout-s", "20",
                                stderr=open(root / "server.log", "w"))
    kinds = requests(data)
    statuses: Counter = Counter()
    by_kind: dict[str, Counter] = {k: Counter() for k in kinds}
    latencies: list[float] = []
    rss: list[tuple[float, float]] = []
    stop = time.monotonic() + args.seconds
    lock = threading.Lock()

    def client(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=base, timeout=60) as c:
            while time.monotonic() < stop:
                kind = rng.choice(list(kinds))
                tic = time.perf_counter()
                try:
                    status = kinds[kind](c).status_code
                except httpx.TransportError as err:
                    status = f"transport error {type(err).__name__}"
                with lock:
                    statuses[status] += 1
                    by_kind[kind][status] += 1
                    if kind.startswith("valid"):
                        latencies.append(time.perf_counter() - tic)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(args.clients)]
    start = time.monotonic()
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        rss.append((time.monotonic() - start, rss_mb(server.pid)))
        time.sleep(1.0)
    alive = httpx.get(f"{base}/healthz", timeout=10).status_code
    server.terminate()
    server.wait(timeout=30)
    window = min(60.0, args.seconds / 3)
    first = [m for t, m in rss if t <= window]
    last = [m for t, m in rss if t >= rss[-1][0] - window]
    q = np.quantile(latencies, [0.5, 0.99]) if latencies else [float("nan")] * 2
    result = {
        "command": f"python bench/soak.py --seconds {args.seconds:g} --clients {args.clients}",
        "requests": sum(statuses.values()), "by_status": {str(k): v for k, v in sorted(statuses.items(), key=str)},
        "by_kind": {k: {str(s): n for s, n in v.items()} for k, v in by_kind.items()},
        "responses_5xx": sum(v for k, v in statuses.items() if isinstance(k, int) and k >= 500),
        "valid_latency_p50_s": float(q[0]), "valid_latency_p99_s": float(q[1]),
        "rss_mb_peak": max(m for _, m in rss), "rss_mb_first_window": statistics.mean(first),
        "rss_mb_last_window": statistics.mean(last), "rss_last_over_first": statistics.mean(last) / statistics.mean(first),
        "healthz_after": alive,
    }
    print(json.dumps(result, indent=2))
    (root / "soak.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

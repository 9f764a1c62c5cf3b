"""Fashion-MNIST resolution-as-privileged benchmark (the Lopez-Paz et al. 2016 protocol).

The student sees the 7×7 downsampled image (49 features); the teacher also sees the 28×28 image (784 privileged
features). Labelled train subsets of 1 000 and 5 000 images, 1 000 validation images, the full 10 000-image test
set, and a pool of 10 000 further train images whose labels are dropped (rows with privileged features only).
`cpfd compare` then runs every arm, with and without the unlabelled pool (the *_labelled arms).

    python bench/fashion_mnist.py                  # 1k and 5k, 5 seeds (reported numbers)
    python bench/fashion_mnist.py --demo           # what `make demo` runs: 1k, 3 seeds
    python bench/fashion_mnist.py --build-only     # datasets only, for seeds run as parallel processes
"""

from __future__ import annotations

import argparse
import shlex
import gzip
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from common import OUT, ensure_debian_package, write_dataset  # noqa: E402

ROOT = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ["tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        raw = fh.read()
    dims = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * k: 8 + 4 * k], "big") for k in range(dims)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def build(n_labelled: int, n_unlabelled: int, n_val: int, seed: int = 0, root: Path = ROOT) -> Path:
    if root == ROOT:
        ensure_debian_package("dataset-fashion-mnist", ROOT / "train-images-idx3-ubyte.gz")
    x_train = read_idx(root / "train-images-idx3-ubyte.gz").astype(np.float32) / 255.0
    y_train = read_idx(root / "train-labels-idx1-ubyte.gz")
    x_test = read_idx(root / "t10k-images-idx3-ubyte.gz").astype(np.float32) / 255.0
    y_test = read_idx(root / "t10k-labels-idx1-ubyte.gz")
    order = np.random.default_rng(seed).permutation(len(x_train))
    lab, val = order[:n_labelled], order[n_labelled:n_labelled + n_val]
    pool = order[n_labelled + n_val:n_labelled + n_val + n_unlabelled]
    images = np.concatenate([x_train[lab], x_train[val], x_train[pool], x_test])
    labels = np.concatenate([y_train[lab], y_train[val], y_train[pool], y_test]).astype(object)
    labels = np.array([CLASSES[int(v)] for v in labels], dtype=object)
    labels[n_labelled + n_val:n_labelled + n_val + n_unlabelled] = None
    split = ["train"] * n_labelled + ["val"] * n_val + ["train"] * n_unlabelled + ["test"] * len(x_test)
    small = images.reshape(-1, 7, 4, 7, 4).mean(axis=(2, 4)).reshape(len(images), 49)
    big = images.reshape(len(images), 784)
    df = pd.concat([
        pd.DataFrame({"id": [f"img{i}" for i in range(len(images))], "split": split, "label": labels}),
        pd.DataFrame(small, columns=[f"px7_{k:02d}" for k in range(49)]),
        pd.DataFrame(big, columns=[f"px28_{k:03d}" for k in range(784)]),
    ], axis=1)
    spec = {"name": f"fashion-mnist-{n_labelled}", "id": "id", "split": "split", "inputs": {"features": ["px7_*"]},
            "privileged": ["px28_*"], "tasks": [{"name": "label", "type": "multiclass", "column": "label",
                                                  "classes": CLASSES}]}
    return write_dataset(OUT / f"fmnist_{n_labelled}" / "data", df, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", action="store_true", help="1 000 labelled rows, 3 seeds")
    parser.add_argument("--sizes", default="1000,5000")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--unlabelled", type=int, default=10000)
    parser.add_argument("--extra", default="--oof --normalize", help="extra `cpfd compare` flags, one quoted string")
    parser.add_argument("--data-dir", type=Path, default=ROOT, help="folder with the four idx.gz files")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="config override, e.g. "
                        "train.accelerator=cuda")
    parser.add_argument("--tag", default="", help="suffix of the compare folder (compare<tag>), to keep runs apart")
    parser.add_argument("--build-only", action="store_true",
                        help="write the datasets and stop (to run seeds as parallel `cpfd compare` processes)")
    args = parser.parse_args()
    sizes = [1000] if args.demo else [int(s) for s in args.sizes.split(",")]
    seeds = 3 if args.demo else args.seeds
    extra = [] if args.demo else shlex.split(args.extra)
    from cpfd.cli import app

    for n in sizes:
        folder = build(n, args.unlabelled, 1000, root=args.data_dir)
        if args.build_only:
            print(folder, flush=True)
            continue
        out = folder.parent / f"compare{args.tag}"
        tic = time.perf_counter()
        cmd = ["compare", str(folder), "--out", str(out), "--seeds", str(seeds), *extra]
        for item in args.sets:
            cmd += ["--set", item]
        print(f"$ cpfd {' '.join(cmd)}", flush=True)
        try:
            app(cmd, standalone_mode=False)
        finally:
            print(f"wall time {time.perf_counter() - tic:.0f} s", flush=True)


if __name__ == "__main__":
    main()

"""Learnable privileged features (issue 9): the student sees the whole item, the privileged features are an
expensive function of it that the student could learn, so the teacher–student gap is not capped by lost
information and distillation can close most of it.

Fashion-MNIST. The student sees the full 28×28 image (784 features). The privileged features are a
neighbour-vote histogram: the label shares of the item's ``K`` nearest neighbours (Euclidean, pixels) in a
separate *reference catalogue* of 20 000 labelled images that no split contains — a lookup a platform can afford
offline but not per request. It is a deterministic function of the image, so a student with enough examples can
learn it. Current data: 1 000 labelled + 10 000 unlabelled train rows, 1 000 validation rows, the 10 000 test
images; no scenarios (the teacher is in-distribution: there is no drifted variant of this design, every
distilled arm should do at least as well as PFD). The hidden labels of the unlabelled rows go to
``--oracle-labels`` only.

    python bench/learnable_privileged.py --seeds 5 --set train.progress=false     # reported (CPU)
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from common import OUT, ensure_debian_package, run_cpfd, write_dataset  # noqa: E402
from fashion_mnist import CLASSES, ROOT, read_idx  # noqa: E402

K = 16
N_CATALOGUE = 20000
SPEC = {"id": "id", "split": "split", "inputs": {"features": ["px28_*"]}, "privileged": ["vote_*"],
        "tasks": [{"name": "label", "type": "multiclass", "column": "label", "classes": CLASSES}]}


def neighbour_votes(queries: np.ndarray, catalogue: np.ndarray, catalogue_labels: np.ndarray, k: int = K,
                    block: int = 2048) -> np.ndarray:
    """Label shares of each query's k nearest catalogue images (squared Euclidean distance on pixels)."""
    c_norm = (catalogue ** 2).sum(1)
    votes = np.zeros((len(queries), len(CLASSES)), dtype=np.float32)
    for start in range(0, len(queries), block):
        q = queries[start:start + block]
        d = c_norm[None, :] - 2.0 * q @ catalogue.T
        nearest = np.argpartition(d, k, axis=1)[:, :k]
        for j in range(len(CLASSES)):
            votes[start:start + block, j] = (catalogue_labels[nearest] == j).mean(1)
    return votes


def build(root: Path, seed: int = 0, n_labelled: int = 1000, n_unlabelled: int = 10000,
          n_val: int = 1000) -> dict[str, Path]:
    if root == ROOT:
        ensure_debian_package("dataset-fashion-mnist", ROOT / "train-images-idx3-ubyte.gz")
    x_train = read_idx(root / "train-images-idx3-ubyte.gz").reshape(-1, 784).astype(np.float32) / 255.0
    y_train = read_idx(root / "train-labels-idx1-ubyte.gz").astype(int)
    x_test = read_idx(root / "t10k-images-idx3-ubyte.gz").reshape(-1, 784).astype(np.float32) / 255.0
    y_test = read_idx(root / "t10k-labels-idx1-ubyte.gz").astype(int)
    order = np.random.default_rng(seed).permutation(len(x_train))
    lab, pool, val, catalogue = np.split(order, np.cumsum([n_labelled, n_unlabelled, n_val, N_CATALOGUE]))[:4]
    images = np.concatenate([x_train[lab], x_train[pool], x_train[val], x_test])
    labels = np.concatenate([y_train[lab], y_train[pool], y_train[val], y_test])
    votes = neighbour_votes(images, x_train[catalogue], y_train[catalogue])
    split = np.array(["train"] * (n_labelled + n_unlabelled) + ["val"] * n_val + ["test"] * len(x_test), dtype=object)
    text = np.array([CLASSES[v] for v in labels], dtype=object)
    shown = text.copy()
    unlabelled = np.zeros(len(labels), dtype=bool)
    unlabelled[n_labelled:n_labelled + n_unlabelled] = True
    shown[unlabelled] = None
    ids = np.array([f"c{i}" for i in range(len(labels))], dtype=object)
    df = pd.concat([
        pd.DataFrame({"id": ids, "split": split, "label": shown}),
        pd.DataFrame(images, columns=[f"px28_{j:03d}" for j in range(784)]),
        pd.DataFrame(votes, columns=[f"vote_{c}" for c in CLASSES]),
    ], axis=1)
    base = OUT / "learnable_privileged"
    paths = {"data": write_dataset(base / "data", df, {"name": "fmnist-learnable-privileged", **SPEC})}
    paths["oracle"] = base / "oracle_labels.csv"
    pd.DataFrame({"id": ids[unlabelled], "label": text[unlabelled]}).to_csv(paths["oracle"], index=False)
    test = split == "test"
    print(f"neighbour vote alone (argmax, K={K}): test accuracy "
          f"{float((votes[test].argmax(1) == labels[test]).mean()):.4f}", flush=True)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--extra", default="--no-labelled-only", help="extra `cpfd compare` flags, one quoted string")
    parser.add_argument("--data-dir", type=Path, default=ROOT, help="folder with the four idx.gz files")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="config override for every run")
    parser.add_argument("--tag", default="", help="suffix of the compare folder (bench/out/learnable_privileged/"
                        "compare<tag>)")
    args = parser.parse_args()
    paths = build(args.data_dir)
    out = paths["data"].parent / f"compare{args.tag}"
    run_cpfd(["compare", str(paths["data"]), "--out", str(out), "--seeds", str(args.seeds), "--oracle-labels",
              str(paths["oracle"]), *shlex.split(args.extra)], args.sets)
    results = json.loads((out / "results.json").read_text())
    summary = {arm: {"mean_f1": e["mean_f1"]["mean"], "vs_pfd": e.get("vs_pfd"), "gap_closed": e.get("gap_closed")}
               for arm, e in results["arms"].items()}
    (out.parent / f"summary{args.tag}.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()

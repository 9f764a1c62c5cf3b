"""scikit-learn diabetes as a binary task (target above the train median).

Student: age, sex, bmi, bp. Privileged: the six serum measurements s1–s6. Seeded 80/10/10 split, 5 seeds.

    python bench/diabetes.py
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.datasets import load_diabetes

sys.path.insert(0, str(Path(__file__).parent))
from common import OUT, write_dataset  # noqa: E402


def build(seed: int = 0) -> Path:
    raw = load_diabetes(as_frame=True, scaled=False)
    df = raw.frame.copy()
    n = len(df)
    order = np.random.default_rng(seed).permutation(n)
    split = np.empty(n, dtype=object)
    split[order[: int(0.8 * n)]] = "train"
    split[order[int(0.8 * n): int(0.9 * n)]] = "val"
    split[order[int(0.9 * n):]] = "test"
    median = df.loc[split == "train", "target"].median()
    df = df.drop(columns="target").assign(id=[f"p{i}" for i in range(n)], split=split,
                                          high=(raw.frame["target"] > median).astype(int))
    spec = {"name": "diabetes-binary", "id": "id", "split": "split",
            "inputs": {"features": ["age", "sex", "bmi", "bp"]}, "privileged": ["s1", "s2", "s3", "s4", "s5", "s6"],
            "tasks": [{"name": "high", "type": "binary", "column": "high"}]}
    return write_dataset(OUT / "diabetes" / "data", pd.DataFrame(df), spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--extra", nargs="*", default=["--oof", "--normalize"])
    args = parser.parse_args()
    from cpfd.cli import app

    folder = build()
    cmd = ["compare", str(folder), "--out", str(folder.parent / "compare"), "--seeds", str(args.seeds), *args.extra]
    print(f"$ cpfd {' '.join(cmd)}", flush=True)
    tic = time.perf_counter()
    app(cmd, standalone_mode=False)
    print(f"wall time {time.perf_counter() - tic:.0f} s", flush=True)


if __name__ == "__main__":
    main()

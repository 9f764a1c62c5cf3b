"""Small real tables, as a new user would bring them: do the default teacher and student reach what a logistic
regression gets from the same inputs? (issue: strong teachers and students by default)

- ``breast_cancer`` (scikit-learn, 569 rows, binary): student = the 10 "mean" measurements, privileged = the 20
  "error" and "worst" measurements; seeded 80/10/10 split.
- ``digits`` (scikit-learn, 1 797 rows, 10 classes): student = the left half of the 8×8 image (32 pixels),
  privileged = the right half.
- ``diabetes`` (scikit-learn, 442 rows, binary: above the train median): student = age, sex, bmi, bp;
  privileged = s1–s6.

    python bench/tabular.py                       # all three, 5 seeds, default settings
    python bench/tabular.py --only digits --seeds 3
    python bench/tabular.py --only breast_cancer --set teacher.kind=lightgbm --tag _lightgbm
    python bench/tabular.py --extra=--scenario --tag _scenario   # + cpfd_scenario, pfd_scenario_temp (default choice)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn import datasets

sys.path.insert(0, str(Path(__file__).parent))
from common import OUT, run_cpfd, write_dataset  # noqa: E402


def breast_cancer() -> Path:
    raw = datasets.load_breast_cancer()
    df = pd.DataFrame(raw.data, columns=[f"f{k:02d}" for k in range(30)])
    df.insert(0, "id", [f"bc{i}" for i in range(len(df))])
    df["label"] = raw.target
    spec = {"name": "breast-cancer", "id": "id", "inputs": {"features": [f"f{k:02d}" for k in range(10)]},
            "privileged": [f"f{k:02d}" for k in range(10, 30)],
            "tasks": [{"name": "malignant", "type": "binary", "column": "label"}]}
    return write_dataset(OUT / "tabular" / "breast_cancer" / "data", df, spec)


def digits() -> Path:
    raw = datasets.load_digits()
    img = raw.images.reshape(len(raw.images), 8, 8)
    left = img[:, :, :4].reshape(len(img), 32)
    right = img[:, :, 4:].reshape(len(img), 32)
    df = pd.concat([pd.DataFrame({"id": [f"d{i}" for i in range(len(img))], "label": raw.target.astype(str)}),
                    pd.DataFrame(left, columns=[f"left_{k:02d}" for k in range(32)]),
                    pd.DataFrame(right, columns=[f"right_{k:02d}" for k in range(32)])], axis=1)
    spec = {"name": "digits-halves", "id": "id", "inputs": {"features": ["left_*"]}, "privileged": ["right_*"],
            "tasks": [{"name": "digit", "type": "multiclass", "column": "label"}]}
    return write_dataset(OUT / "tabular" / "digits" / "data", df, spec)


def diabetes() -> Path:
    raw = datasets.load_diabetes(scaled=False)
    names = raw.feature_names
    df = pd.DataFrame(raw.data, columns=names)
    df.insert(0, "id", [f"p{i}" for i in range(len(df))])
    rng = np.random.default_rng(0)
    split = np.array(["train"] * len(df), dtype=object)
    perm = rng.permutation(len(df))
    n_val = int(round(0.1 * len(df)))
    split[perm[:n_val]], split[perm[n_val:2 * n_val]] = "val", "test"
    df["split"] = split
    df["label"] = (raw.target > np.median(raw.target[split == "train"])).astype(int)
    spec = {"name": "diabetes", "id": "id", "split": "split", "inputs": {"features": ["age", "sex", "bmi", "bp"]},
            "privileged": [n for n in names if n[0] == "s" and n[1:].isdigit()],
            "tasks": [{"name": "high", "type": "binary", "column": "label"}]}
    return write_dataset(OUT / "tabular" / "diabetes" / "data", df, spec)


BUILDERS = {"breast_cancer": breast_cancer, "digits": digits, "diabetes": diabetes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=sorted(BUILDERS), action="append")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--set", dest="sets", action="append", default=[], help="config override")
    parser.add_argument("--tag", default="", help="suffix of the compare folder (bench/out/tabular/<name>/compare<tag>)")
    parser.add_argument("--extra", default="", help="extra `cpfd compare` flags, one quoted string (e.g. --scenario)")
    args = parser.parse_args()
    for name in args.only or list(BUILDERS):
        folder = BUILDERS[name]()
        run_cpfd(["compare", str(folder), "--out", str(folder.parent / f"compare{args.tag}"), "--seeds",
                  str(args.seeds), *args.extra.split()], args.sets)


if __name__ == "__main__":
    main()

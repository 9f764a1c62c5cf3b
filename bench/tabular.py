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
    python bench/tabular.py --splits 5 --tag _resplit   # a new random 80/10/10 split per seed (see below)

With one fixed split every seed is scored on the same 44-180 test rows, so the standard errors over seeds say
nothing about how those few rows were drawn: one row of breast cancer's 57 is 0.01-0.02 F1. ``--splits N`` draws
split k with seed k, runs ``cpfd compare --seeds 1`` with ``train.seed=k`` on it, and pairs the arms and the
references over the N splits (repeated random sub-sampling), so the s.e. covers the split as well.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn import datasets

sys.path.insert(0, str(Path(__file__).parent))
from common import OUT, run_cpfd, write_dataset  # noqa: E402
from summarize import fmt  # noqa: E402


def random_split(n: int, seed: int) -> np.ndarray:
    """A seeded 80/10/10 train/val/test column."""
    split = np.array(["train"] * n, dtype=object)
    perm = np.random.default_rng(seed).permutation(n)
    n_val = int(round(0.1 * n))
    split[perm[:n_val]], split[perm[n_val:2 * n_val]] = "val", "test"
    return split


def _folder(name: str, split_seed: int | None) -> Path:
    return OUT / "tabular" / name / ("data" if split_seed is None else f"data_split{split_seed}")


def _with_split(df: pd.DataFrame, spec: dict, split_seed: int | None) -> dict:
    """Without ``split_seed`` the contract's own seeded split (the fixed split of the earlier runs)."""
    if split_seed is None:
        return spec
    df["split"] = random_split(len(df), split_seed)
    return {**spec, "split": "split"}


def breast_cancer(split_seed: int | None = None) -> Path:
    raw = datasets.load_breast_cancer()
    df = pd.DataFrame(raw.data, columns=[f"f{k:02d}" for k in range(30)])
    df.insert(0, "id", [f"bc{i}" for i in range(len(df))])
    df["label"] = raw.target
    spec = {"name": "breast-cancer", "id": "id", "inputs": {"features": [f"f{k:02d}" for k in range(10)]},
            "privileged": [f"f{k:02d}" for k in range(10, 30)],
            "tasks": [{"name": "malignant", "type": "binary", "column": "label"}]}
    return write_dataset(_folder("breast_cancer", split_seed), df, _with_split(df, spec, split_seed))


def digits(split_seed: int | None = None) -> Path:
    raw = datasets.load_digits()
    img = raw.images.reshape(len(raw.images), 8, 8)
    left = img[:, :, :4].reshape(len(img), 32)
    right = img[:, :, 4:].reshape(len(img), 32)
    df = pd.concat([pd.DataFrame({"id": [f"d{i}" for i in range(len(img))], "label": raw.target.astype(str)}),
                    pd.DataFrame(left, columns=[f"left_{k:02d}" for k in range(32)]),
                    pd.DataFrame(right, columns=[f"right_{k:02d}" for k in range(32)])], axis=1)
    spec = {"name": "digits-halves", "id": "id", "inputs": {"features": ["left_*"]}, "privileged": ["right_*"],
            "tasks": [{"name": "digit", "type": "multiclass", "column": "label"}]}
    return write_dataset(_folder("digits", split_seed), df, _with_split(df, spec, split_seed))


def diabetes(split_seed: int | None = None) -> Path:
    raw = datasets.load_diabetes(scaled=False)
    names = raw.feature_names
    df = pd.DataFrame(raw.data, columns=names)
    df.insert(0, "id", [f"p{i}" for i in range(len(df))])
    split = random_split(len(df), 0 if split_seed is None else split_seed)
    df["split"] = split
    df["label"] = (raw.target > np.median(raw.target[split == "train"])).astype(int)
    spec = {"name": "diabetes", "id": "id", "split": "split", "inputs": {"features": ["age", "sex", "bmi", "bp"]},
            "privileged": [n for n in names if n[0] == "s" and n[1:].isdigit()],
            "tasks": [{"name": "high", "type": "binary", "column": "label"}]}
    return write_dataset(_folder("diabetes", split_seed), df, spec)


BUILDERS = {"breast_cancer": breast_cancer, "digits": digits, "diabetes": diabetes}


PAIRS = (("teacher", "logreg_privileged"), ("baseline", "logreg_student"), ("pfd", "baseline"), ("cpfd", "pfd"))


def summarize_splits(name: str, folders: list[Path]) -> dict:
    """Arms and references paired over resampled splits (one seed each): markdown to stdout, the numbers returned."""
    runs = [json.loads((f / "results.json").read_text()) for f in folders]
    arms = [a for a in runs[0]["per_seed"] if all(a in r["per_seed"] for r in runs)]

    def f1(arm: str, split: str) -> list[float] | None:
        """None where the arm has no scores on ``split`` (the teacher's report is test-only)."""
        per_split = [next(iter(r["per_seed"][arm].values())).get(split) for r in runs]
        return None if None in per_split else [m["mean_f1"] for m in per_split]

    def diff(a: str, b: str, split: str) -> str:
        fa, fb = f1(a, split), f1(b, split)
        return "—" if fa is None or fb is None else fmt(fa, fb)

    print(f"\n### {name}: {len(runs)} resampled splits, one seed each\n")
    print("| arm | test mean F1 (± std over splits) |\n|---|---|")
    for arm in arms:
        print(f"| {arm} | {np.mean(f1(arm, 'test')):.4f} ± {np.std(f1(arm, 'test'), ddof=1):.4f} |")
    print("\n| paired over splits | validation | test |\n|---|---|---|")
    for a, b in PAIRS:
        if a in arms and b in arms:
            print(f"| {a} − {b} | {diff(a, b, 'val')} | {diff(a, b, 'test')} |")
    ece = [(c["test_ece_before"], c["test_ece_after"], bool(c["kept"]))
           for r in runs for c in r["teacher_calibration"].values()]
    before, after, kept = (np.array(v) for v in zip(*ece))
    print(f"\nteacher test ECE {before.mean():.4f} before → {after.mean():.4f} after calibration; temperature kept "
          f"on {kept.sum()} of {len(kept)} splits; after > before on {(after > before + 1e-12).sum()}")
    return {"splits": len(runs), "test": {a: f1(a, "test") for a in arms}, "val": {a: f1(a, "val") for a in arms},
            "ece_before": before.tolist(), "ece_after": after.tolist(), "kept": kept.tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=sorted(BUILDERS), action="append")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--splits", type=int, default=0,
                        help="N > 0: N resampled splits with one seed each instead of one split with --seeds seeds")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="config override")
    parser.add_argument("--tag", default="", help="suffix of the compare folder (bench/out/tabular/<name>/compare<tag>)")
    parser.add_argument("--extra", default="", help="extra `cpfd compare` flags, one quoted string (e.g. --scenario)")
    args = parser.parse_args()
    summary = {}
    for name in args.only or list(BUILDERS):
        if not args.splits:
            folder = BUILDERS[name]()
            run_cpfd(["compare", str(folder), "--out", str(folder.parent / f"compare{args.tag}"), "--seeds",
                      str(args.seeds), *args.extra.split()], args.sets)
            continue
        outs = []
        for k in range(args.splits):
            folder = BUILDERS[name](split_seed=k)
            outs.append(folder.parent / f"compare{args.tag}_split{k}")
            if not (outs[-1] / "results.json").exists():
                run_cpfd(["compare", str(folder), "--out", str(outs[-1]), "--seeds", "1", *args.extra.split()],
                         [f"train.seed={k}", *args.sets])
        summary[name] = summarize_splits(name, outs)
    if summary:
        path = Path(__file__).parent / "results" / f"tabular{args.tag}_splits.json"
        earlier = json.loads(path.read_text()) if path.exists() else {}  # tables run by separate invocations
        path.write_text(json.dumps(earlier | summary, indent=1))
        print(f"\nper-split numbers: {path}")


if __name__ == "__main__":
    main()

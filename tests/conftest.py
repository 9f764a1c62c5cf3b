"""Shared fixtures: small synthetic datasets written to disk in the contract's format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml


def make_dataset(
    folder: Path,
    n: int = 240,
    n_unlabelled: int = 0,
    seed: int = 0,
    fmt: str = "parquet",
    with_split: bool = True,
    spec_overrides: dict | None = None,
    mutate=None,
) -> Path:
    """Three tasks (binary, multiclass, multilabel) where privileged columns carry signal the student lacks."""
    rng = np.random.default_rng(seed)
    total = n + n_unlabelled
    latent = rng.normal(size=(total, 3))
    emb = latent[:, :2] + rng.normal(scale=1.0, size=(total, 2))
    emb = np.concatenate([emb, rng.normal(size=(total, 4))], axis=1)
    dense = latent + rng.normal(scale=0.3, size=(total, 3))
    df = pd.DataFrame({"video_id": [f"v{i:04d}" for i in range(total)]})
    for j in range(emb.shape[1]):
        df[f"emb_{j}"] = emb[:, j]
    for j in range(dense.shape[1]):
        df[f"dense_{j}"] = dense[:, j]
    df["is_spam"] = (latent[:, 0] + 0.5 * latent[:, 2] > 0).astype(int)
    df["category"] = np.array(["news", "sport", "music"])[np.digitize(latent[:, 1], [-0.5, 0.5])]
    tags = []
    for i in range(total):
        t = [name for name, on in (("a", latent[i, 2] > 0), ("b", latent[i, 0] > 0.5)) if on]
        tags.append("|".join(t))
    df["tags"] = tags
    df["scenario"] = np.where(np.arange(total) % 2 == 0, "feed", "search")
    split = np.array(["train"] * total, dtype=object)
    labelled = np.arange(n)
    split[labelled[int(0.6 * n): int(0.8 * n)]] = "val"
    split[labelled[int(0.8 * n):]] = "test"
    if with_split:
        df["split"] = split
    if n_unlabelled:
        for col in ("is_spam", "category", "tags"):
            df[col] = df[col].astype(object)
            df.loc[n:, col] = None
    if mutate is not None:
        df = mutate(df)
    folder.mkdir(parents=True, exist_ok=True)
    table = f"data.{fmt}"
    if fmt == "parquet":
        df.to_parquet(folder / table)
    elif fmt == "csv":
        df.to_csv(folder / table, index=False)
    else:
        df.to_json(folder / table, orient="records", lines=True)
    spec = {
        "format": 1,
        "name": "synthetic",
        "table": table,
        "id": "video_id",
        "group": "scenario",
        "inputs": {"features": ["emb_*"]},
        "privileged": ["dense_*"],
        "tasks": [
            {"name": "spam", "type": "binary", "column": "is_spam"},
            {"name": "category", "type": "multiclass", "column": "category"},
            {"name": "tags", "type": "multilabel", "column": "tags", "classes": ["a", "b"]},
        ],
    }
    if with_split:
        spec["split"] = "split"
    spec.update(spec_overrides or {})
    (folder / "dataset.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return folder


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "ds")


@pytest.fixture
def dataset_unlabelled(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "ds_u", n=200, n_unlabelled=200)

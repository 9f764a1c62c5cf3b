"""The dataset contract: formats, splits, missing labels, and one test per validation failure kind.

Every failure must name the file, the row(s) (1-based data rows) and the column.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import make_dataset
from cpfd.data import DatasetError, load_dataset


def _error(folder) -> str:
    with pytest.raises(DatasetError) as info:
        load_dataset(folder)
    return str(info.value)


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_formats_load_identically(tmp_path, fmt):
    data = load_dataset(make_dataset(tmp_path / fmt, n=60, fmt=fmt))
    assert len(data) == 60
    assert data.student_inputs["features"].shape == (60, 6)
    assert data.privileged.shape == (60, 3)
    assert [t.classes for t in data.tasks] == [["0", "1"], ["music", "news", "sport"], ["a", "b"]]
    ref = load_dataset(make_dataset(tmp_path / "ref", n=60))
    assert np.allclose(data.student_inputs["features"], ref.student_inputs["features"], atol=1e-6)
    assert data.labels["tags"].sum() == ref.labels["tags"].sum()


def test_glob_of_table_shards(tmp_path):
    folder = make_dataset(tmp_path / "ds", n=60)
    df = pd.read_parquet(folder / "data.parquet")
    (folder / "data.parquet").unlink()
    (folder / "shards").mkdir()
    df.iloc[:25].to_parquet(folder / "shards" / "part-0.parquet")
    df.iloc[25:].to_parquet(folder / "shards" / "part-1.parquet")
    spec = yaml.safe_load((folder / "dataset.yaml").read_text())
    spec["table"] = "shards/*.parquet"
    (folder / "dataset.yaml").write_text(yaml.safe_dump(spec))
    data = load_dataset(folder)
    assert len(data) == 60 and data.ids[25] == "v0025"


def test_seeded_split_is_80_10_10_and_reproducible(tmp_path):
    folder = make_dataset(tmp_path / "ds", n=200, with_split=False)
    a, b, c = load_dataset(folder, seed=0), load_dataset(folder, seed=0), load_dataset(folder, seed=1)
    counts = {s: int((a.split == s).sum()) for s in ("train", "val", "test")}
    assert counts == {"train": 160, "val": 20, "test": 20}
    assert (a.split == b.split).all() and not (a.split == c.split).all()


def test_missing_labels_per_task_and_unlabelled_rows(tmp_path):
    def drop(df):
        df["category"] = df["category"].astype(object)
        df.loc[[0, 1], "category"] = None
        return df

    data = load_dataset(make_dataset(tmp_path / "ds", n=100, n_unlabelled=30, mutate=drop))
    assert not data.label_mask["category"][0] and data.label_mask["spam"][0]
    assert int((~data.labelled_any).sum()) == 30
    assert set(data.split[~data.labelled_any]) == {"train"}


def test_list_valued_feature_column(tmp_path):
    def to_list(df):
        df["emb"] = [list(r) for r in df[[f"emb_{j}" for j in range(6)]].to_numpy()]
        return df.drop(columns=[f"emb_{j}" for j in range(6)])

    folder = make_dataset(tmp_path / "ds", n=40, spec_overrides={"inputs": {"features": "emb"}}, mutate=to_list)
    assert load_dataset(folder).student_inputs["features"].shape == (40, 6)


# ---- one test per failure kind ------------------------------------------------------------------------------


def test_unknown_key(tmp_path):
    msg = _error(make_dataset(tmp_path / "ds", n=40, spec_overrides={"colour": "red"}))
    assert "dataset.yaml" in msg and "'colour'" in msg and "unknown key" in msg


def test_missing_column(tmp_path):
    tasks = [{"name": "spam", "type": "binary", "column": "not_there"}]
    msg = _error(make_dataset(tmp_path / "ds", n=40, spec_overrides={"tasks": tasks}))
    assert "dataset.yaml" in msg and "'not_there'" in msg and "not in the table" in msg


def test_glob_matching_nothing(tmp_path):
    msg = _error(make_dataset(tmp_path / "ds", n=40, spec_overrides={"privileged": ["hist_*"]}))
    assert "'hist_*'" in msg and "matches no column" in msg


def test_duplicate_and_empty_ids(tmp_path):
    def mutate(df):
        df.loc[3, "video_id"] = "v0001"
        df.loc[5, "video_id"] = ""
        return df

    msg = _error(make_dataset(tmp_path / "ds", n=40, fmt="csv", mutate=mutate))
    assert "data.csv, column 'video_id', rows 2, 4: duplicate id" in msg
    assert "data.csv, column 'video_id', row 6: empty id" in msg


def test_leakage_input_and_privileged(tmp_path):
    msg = _error(make_dataset(tmp_path / "ds", n=40, spec_overrides={"privileged": ["dense_*", "emb_0"]}))
    assert "leakage" in msg and "'emb_0'" in msg


def test_label_column_used_as_input(tmp_path):
    msg = _error(make_dataset(tmp_path / "ds", n=40, spec_overrides={"inputs": {"features": ["emb_*", "is_spam"]}}))
    assert "leakage" in msg and "'is_spam'" in msg


@pytest.mark.parametrize("value,what,fmt", [(np.nan, "NaN", "parquet"), (np.inf, "infinite", "csv"),
                                            ("abc", "non-numeric", "jsonl")])
def test_bad_student_feature(tmp_path, value, what, fmt):
    def mutate(df):
        df["emb_2"] = df["emb_2"].astype(object)
        df.loc[7, "emb_2"] = value
        return df

    msg = _error(make_dataset(tmp_path / "ds", n=40, fmt=fmt, mutate=mutate))
    assert "column 'emb_2', row 8" in msg and what in msg and "v0007" in msg


def test_privileged_may_be_missing_but_not_infinite(tmp_path):
    def nan(df):
        df.loc[2, "dense_1"] = np.nan
        return df

    assert np.isnan(load_dataset(make_dataset(tmp_path / "ok", n=40, mutate=nan)).privileged[2, 1])

    def inf(df):
        df.loc[2, "dense_1"] = np.inf
        return df

    msg = _error(make_dataset(tmp_path / "bad", n=40, mutate=inf))
    assert "column 'dense_1', row 3: infinite value in a privileged feature" in msg


def test_label_outside_declared_classes(tmp_path):
    def mutate(df):
        df.loc[4, "tags"] = "a|zzz"
        return df

    msg = _error(make_dataset(tmp_path / "ds", n=40, mutate=mutate))
    assert "column 'tags', row 5" in msg and "outside the declared classes" in msg


def test_bad_binary_label(tmp_path):
    def mutate(df):
        df["is_spam"] = df["is_spam"].astype(object)
        df.loc[0, "is_spam"] = "maybe"
        return df

    msg = _error(make_dataset(tmp_path / "ds", n=40, fmt="csv", mutate=mutate))
    assert "column 'is_spam', row 1" in msg and "0/1 or true/false" in msg


def test_single_class_in_train(tmp_path):
    def mutate(df):
        df.loc[df["split"] == "train", "is_spam"] = 1
        return df

    msg = _error(make_dataset(tmp_path / "ds", n=40, mutate=mutate))
    assert "'spam' has a single class in train" in msg and "'is_spam'" in msg


def test_empty_split(tmp_path):
    def mutate(df):
        df.loc[df["split"] == "test", "split"] = "val"
        return df

    msg = _error(make_dataset(tmp_path / "ds", n=40, mutate=mutate))
    assert "split 'test' has no labelled rows" in msg


def test_bad_split_value(tmp_path):
    def mutate(df):
        df.loc[9, "split"] = "holdout"
        return df

    msg = _error(make_dataset(tmp_path / "ds", n=40, mutate=mutate))
    assert "column 'split', row 10: split value must be train, val or test" in msg


def test_unlabelled_rows_must_be_train_and_have_privileged(tmp_path):
    def mutate(df):
        df.loc[45, "split"] = "val"
        df.loc[46, ["dense_0", "dense_1", "dense_2"]] = np.nan
        return df

    msg = _error(make_dataset(tmp_path / "ds", n=40, n_unlabelled=10, mutate=mutate))
    assert "row 46" in msg and "must be in the train split" in msg
    assert "row 47" in msg and "must have privileged features" in msg


def test_inconsistent_vector_lengths(tmp_path):
    def mutate(df):
        df["emb"] = [[0.1, 0.2, 0.3]] * len(df)
        df.at[11, "emb"] = [0.1, 0.2]
        return df

    msg = _error(make_dataset(tmp_path / "ds", n=40, spec_overrides={"inputs": {"features": "emb"}}, mutate=mutate))
    assert "column 'emb', row 12: inconsistent vector length (most rows have 3)" in msg


def test_missing_video_file_fail_and_skip(tmp_path):
    def mutate(df):
        df["video_path"] = [f"clips/{i}.mp4" for i in df["video_id"]]
        return df

    folder = make_dataset(tmp_path / "ds", n=40, spec_overrides={"inputs": {"features": ["emb_*"], "video": "video_path"}},
                          mutate=mutate)
    (folder / "clips").mkdir()
    for i in range(40):
        if i not in (3, 20):
            (folder / "clips" / f"v{i:04d}.mp4").write_bytes(b"\0" * 16)
    (folder / "clips" / "v0020.mp4").write_bytes(b"")
    msg = _error(folder)
    assert "column 'video_path', row 4: video file not found" in msg
    assert "column 'video_path', row 21: video file is empty (0 bytes)" in msg
    data = load_dataset(folder, on_bad_video="skip")
    assert len(data) == 38 and "v0003" not in set(data.ids)
    assert [(s.row, s.id) for s in data.skipped] == [(4, "v0003"), (21, "v0020")]


def test_empty_frames_folder(tmp_path):
    def mutate(df):
        df["frames_dir"] = [f"frames/{i}" for i in df["video_id"]]
        return df

    folder = make_dataset(tmp_path / "ds", n=40, spec_overrides={"inputs": {"features": ["emb_*"], "frames": "frames_dir"}},
                          mutate=mutate)
    for i in range(40):
        (folder / "frames" / f"v{i:04d}").mkdir(parents=True)
        if i != 6:
            (folder / "frames" / f"v{i:04d}" / "000.jpg").write_bytes(b"x")
    msg = _error(folder)
    assert "column 'frames_dir', row 7: frames folder has no images" in msg


def test_multilabel_empty_means_no_tag_and_null_means_no_label(tmp_path):
    def mutate(df):
        df["tags"] = df["tags"].astype(object)
        df.at[0, "tags"] = ""
        df.at[1, "tags"] = None
        return df

    data = load_dataset(make_dataset(tmp_path / "ds", n=60, mutate=mutate))
    assert bool(data.label_mask["tags"][0]) and data.labels["tags"][0].sum() == 0
    assert not bool(data.label_mask["tags"][1])

"""Hostile and careless inputs: each test builds its own bad input and fails on the code before the fix."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml

from cpfd.config import ExtractConfig, FrameSampling, load_config
from cpfd.data import DatasetError, load_dataset
from cpfd.data.video import DecodeLimits, MediaError, _sample_stream, decode_video
from cpfd.errors import ConfigError
from conftest import make_dataset  # noqa: E402
from videos import write_video


# ---- decoding ------------------------------------------------------------------------------------------------


def test_a_playlist_naming_a_server_file_is_refused_whether_or_not_the_file_exists(tmp_path):
    secret = write_video(tmp_path / "secret.ts", n_frames=8)
    reasons = []
    for target in (secret, tmp_path / "does_not_exist.ts"):
        playlist = tmp_path / f"p{len(reasons)}.m3u8"
        playlist.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n{target}\n#EXT-X-ENDLIST\n")
        with pytest.raises(MediaError, match="cannot decode") as err:
            decode_video(playlist, FrameSampling(num_frames=2, size=32))
        reasons.append(str(err.value).replace(str(playlist), "P"))
    assert reasons[0] == reasons[1]  # no oracle: the same answer for a path that exists and one that does not
    concat = tmp_path / "list.txt"
    concat.write_text(f"ffconcat version 1.0\nfile '{secret}'\n")
    with pytest.raises(MediaError, match="cannot decode"):
        decode_video(concat, FrameSampling(num_frames=2, size=32))


class _Frame:
    converted = 0

    def to_ndarray(self, width, height, format):  # noqa: A002 - PyAV's signature
        _Frame.converted += 1
        return np.zeros((height, width, 3), np.uint8)


def test_decoding_keeps_a_bounded_number_of_frames_and_stops_at_the_caps(tmp_path):
    sampling = FrameSampling(num_frames=4, size=32)
    _Frame.converted = 0
    frames, count = _sample_stream((_Frame() for _ in range(100_000)), 0, sampling,
                                   DecodeLimits(max_frames=200_000, buffer=64), 1e18, tmp_path)
    # a stride-doubling buffer: at most 64 frames held, about 65 + 32 per doubling (11 of them) converted
    assert count == 100_000 and len(frames) == 4 and _Frame.converted < 600
    _Frame.converted = 0
    _sample_stream((_Frame() for _ in range(1000)), 1000, sampling, DecodeLimits(), 1e18, tmp_path)
    assert _Frame.converted == 4  # the length is stated: only the sampled frames are converted
    with pytest.raises(MediaError, match="more than 500 frames"):
        _sample_stream((_Frame() for _ in range(10_000)), 0, sampling, DecodeLimits(max_frames=500), 1e18, tmp_path)
    clip = write_video(tmp_path / "c.mp4", n_frames=12, size=64)
    with pytest.raises(MediaError, match="over the limit of 1000 pixels"):
        decode_video(clip, sampling, DecodeLimits(max_pixels=1000))
    with pytest.raises(MediaError, match="decoding took longer than"):
        decode_video(clip, sampling, DecodeLimits(max_seconds=-1.0))
    ok = decode_video(clip, sampling)
    assert ok.frames.shape == (4, 32, 32, 3) and ok.source_frames == 12


# ---- validation gaps -------------------------------------------------------------------------------------------


def test_values_beyond_float32_are_caught_at_validation(tmp_path):
    def huge(df):
        df.loc[4, "emb_1"] = 1e39
        df.loc[6, "dense_0"] = -1e39
        return df

    with pytest.raises(DatasetError) as err:
        load_dataset(make_dataset(tmp_path / "ds", n=40, mutate=huge))
    msg = str(err.value)
    assert "column 'emb_1', row 5: value beyond the float32 range" in msg
    assert "column 'dense_0', row 7: value beyond the float32 range" in msg


def test_nullable_integer_and_boolean_labels_with_nulls_are_unlabelled_rows(tmp_path):
    def nullable(df):
        df["is_spam"] = pd.array(df["is_spam"], dtype="Int64")
        df.loc[[3, 9], "is_spam"] = pd.NA
        df["cat_code"] = pd.array([i % 3 for i in range(len(df))], dtype="Int64")
        df.loc[5, "cat_code"] = pd.NA
        return df

    spec = {"tasks": [{"name": "spam", "type": "binary", "column": "is_spam"},
                      {"name": "code", "type": "multiclass", "column": "cat_code"}]}
    data = load_dataset(make_dataset(tmp_path / "ds", n=60, mutate=nullable, spec_overrides=spec))
    assert data.task("code").classes == ["0", "1", "2"]  # no "<NA>" class
    assert not data.label_mask["spam"][3] and not data.label_mask["spam"][9] and not data.label_mask["code"][5]
    assert int(data.label_mask["spam"].sum()) == 58


def test_yaml_alias_bomb_is_refused(tmp_path):
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: [*b, *b, *b, *b, *b]\n"
    path = tmp_path / "run.yaml"
    path.write_text(bomb)
    with pytest.raises(ConfigError, match="aliases"):
        load_config(path)
    folder = make_dataset(tmp_path / "ds", n=40)
    (folder / "dataset.yaml").write_text((folder / "dataset.yaml").read_text() + "\nx: &x [1]\ny: *x\n")
    with pytest.raises(DatasetError, match="aliases"):
        load_dataset(folder)


def test_zero_rows_and_duplicate_csv_columns_are_clear_errors(tmp_path):
    empty = make_dataset(tmp_path / "empty", n=40, mutate=lambda df: df.iloc[:0])
    with pytest.raises(DatasetError, match="no rows"):
        load_dataset(empty)
    folder = make_dataset(tmp_path / "dup", n=40, fmt="csv")
    raw = (folder / "data.csv").read_text().splitlines()
    raw[0] = raw[0].replace("dense_2", "emb_0")  # a privileged column renamed into a student column's name
    (folder / "data.csv").write_text("\n".join(raw) + "\n")
    with pytest.raises(DatasetError, match="column 'emb_0': duplicate column name"):
        load_dataset(folder)


def test_every_skipped_row_is_named_in_the_log(tmp_path):
    from test_video import _video_dataset

    folder = _video_dataset(tmp_path / "ds", n=10, bad={2: "text"})
    (folder / "clips" / "c4.mp4").unlink()
    (folder / "clips" / "c6.mp4").write_bytes(b"")
    logs: list[str] = []
    data = load_dataset(folder, on_bad_video="skip", log=logs.append,
                        extract=ExtractConfig(sampling={"num_frames": 2, "size": 32}, workers=0, max_tokens=8))
    assert sorted(s.id for s in data.skipped) == ["c2", "c4", "c6"]
    for row_id, reason in (("c2", "cannot decode"), ("c4", "not found"), ("c6", "empty (0 bytes)")):
        assert any(f"[{row_id}]" in m and reason in m for m in logs), (row_id, logs)


def test_validate_decode_finds_undecodable_clips_in_one_pass(tmp_path):
    from typer.testing import CliRunner

    from cpfd.cli import app
    from test_video import _video_dataset

    folder = _video_dataset(tmp_path / "ds", n=10, bad={2: "text", 7: "audio"})
    runner = CliRunner()
    plain = runner.invoke(app, ["validate", str(folder)])
    assert plain.exit_code == 0 and "content was not decoded: add --decode" in plain.output
    result = runner.invoke(app, ["validate", str(folder), "--decode", "--set", "extract.workers=0"])
    assert result.exit_code == 2
    assert "column 'video', row 3: cannot decode" in result.output and "row 8: no video stream" in result.output


def test_datasets_are_confined_to_their_folder(tmp_path):
    import os

    from test_video import _video_dataset

    folder = _video_dataset(tmp_path / "ds", n=10)
    outside = write_video(tmp_path / "outside.mp4", n_frames=4, size=32)
    os.symlink(outside, folder / "clips" / "link.mp4")
    df = pd.read_parquet(folder / "data.parquet")
    df.loc[1, "video"] = "../outside.mp4"
    df.loc[2, "video"] = str(outside)
    df.loc[3, "video"] = "clips/link.mp4"
    df.loc[4, "video"] = "/dev/zero"
    df.to_parquet(folder / "data.parquet")
    with pytest.raises(DatasetError) as err:
        load_dataset(folder)
    msg = str(err.value)
    assert msg.count("leaves the dataset folder") == 4 and "/dev/zero" in msg and "clips/link.mp4" in msg
    assert all(f"row {r}:" in msg for r in (2, 3, 4, 5))
    spec = yaml.safe_load((folder / "dataset.yaml").read_text())
    spec["table"] = "../elsewhere.parquet"
    df.to_parquet(tmp_path / "elsewhere.parquet")
    (folder / "dataset.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(DatasetError, match="table: path .* leaves the dataset folder"):
        load_dataset(folder)
    spec["allow_outside"] = True
    (folder / "dataset.yaml").write_text(yaml.safe_dump(spec))
    df.loc[4, "video"] = "clips/c4.mp4"
    df.to_parquet(tmp_path / "elsewhere.parquet")
    assert len(load_dataset(folder)) == 10  # shared storage, explicitly allowed


def test_messages_escape_values_and_show_only_the_offending_cells(tmp_path):
    def nasty(df):
        df.loc[3, "video_id"] = "v0001"
        df.loc[1, "video_id"] = "v0001"
        return df

    folder = make_dataset(tmp_path / "ds", n=40, mutate=nasty)
    df = pd.read_parquet(folder / "data.parquet")
    df.loc[1, "video_id"] = "bad\x1b[31mid"
    df.loc[3, "video_id"] = "bad\x1b[31mid"
    df.to_parquet(folder / "data.parquet")
    with pytest.raises(DatasetError) as err:
        load_dataset(folder)
    assert "bad\\x1b[31mid" in str(err.value) and "\x1b" not in str(err.value)


def test_corrupt_cache_files_are_reported_and_rebuilt(tmp_path):
    from cpfd.data.embeddings import extract_text
    from cpfd.data.preprocess import Preprocessor

    pre = Preprocessor(ExtractConfig(max_tokens=8, shard_size=2))
    texts = ["a first title", "a second one", "third"]
    clean, _ = extract_text(texts, pre, tmp_path)
    shard = sorted(tmp_path.glob("text-*/shard-*.parquet"))[0]
    raw = bytearray(shard.read_bytes())
    middle = len(raw) // 2
    raw[middle] ^= 0x01
    raw[middle + 7] ^= 0x10  # two flipped bits inside the stored vectors
    shard.write_bytes(bytes(raw))
    again, _ = extract_text(texts, pre, tmp_path)
    assert np.allclose(again, clean, atol=1e-6)
    assert list(tmp_path.glob("text-*/*.corrupt"))  # set aside, not silently reused


def test_corrupt_or_truncated_teacher_cache_is_rebuilt(tmp_path):
    import torch

    from cpfd.distill.targets import TeacherTargets, get_or_build, save_targets

    good = TeacherTargets({"t": torch.arange(6.0).reshape(3, 2)}, torch.zeros(3, 4), {"t": 1.0})
    path = tmp_path / "teacher_outputs.safetensors"
    save_targets(path, good, "k")
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0xFF  # random bytes in the cached logits
    path.write_bytes(bytes(raw))
    messages: list[str] = []
    rebuilt = get_or_build(path, "k", lambda: good, messages.append)
    assert torch.equal(rebuilt.logits["t"], good.logits["t"]) and "corrupt" in messages[0]
    path.write_bytes(path.read_bytes()[:40])  # truncated
    messages.clear()
    get_or_build(path, "k", lambda: good, messages.append)
    assert "cannot be read" in messages[0]


def test_runs_never_write_over_their_teacher_or_an_unrelated_folder(tmp_path):
    from typer.testing import CliRunner

    from cpfd.cli import app

    ds = make_dataset(tmp_path / "ds", n=80)
    runner = CliRunner()
    fast = ["--epochs", "1", "--set", "train.min_steps=0", "--set", "train.progress=false", "--set", "model.d_model=16"]
    assert runner.invoke(app, ["fit-teacher", str(ds), "--out", str(tmp_path / "teacher"), *fast]).exit_code == 0
    before = sorted(p.name for p in (tmp_path / "teacher").rglob("*"))
    result = runner.invoke(app, ["distill", str(ds), "--teacher", str(tmp_path / "teacher"), "--out",
                                 str(tmp_path / "teacher"), *fast])
    assert result.exit_code == 2 and "is the teacher's folder" in result.output
    assert sorted(p.name for p in (tmp_path / "teacher").rglob("*")) == before
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("keep me")
    for args in (["distill", str(ds), "--method", "none", "--out", str(tmp_path / "notes")],
                 ["fit-teacher", str(ds), "--out", str(ds)]):
        result = runner.invoke(app, args + fast)
        assert result.exit_code == 2 and "not a previous" in result.output
    assert (tmp_path / "notes" / "mine.txt").read_text() == "keep me" and (ds / "dataset.yaml").exists()
    result = runner.invoke(app, ["distill", str(ds), "--method", "none", "--out", str(tmp_path / "teacher"), *fast])
    assert result.exit_code == 2 and "not a previous student run" in result.output
    # a previous run of the same command may be written over
    assert runner.invoke(app, ["fit-teacher", str(ds), "--out", str(tmp_path / "teacher"), *fast]).exit_code == 0


def test_every_row_skipped_is_a_clear_error(tmp_path):
    from test_video import _video_dataset

    folder = _video_dataset(tmp_path / "ds", n=6)
    for clip in (folder / "clips").iterdir():
        clip.write_bytes(b"")
    with pytest.raises(DatasetError, match=r"every row was skipped \(6 rows with bad media\)"):
        load_dataset(folder, on_bad_video="skip", log=lambda m: None)

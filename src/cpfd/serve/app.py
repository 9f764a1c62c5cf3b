"""``cpfd serve``: FastAPI app over an exported student bundle.

- ``GET /healthz``; ``GET /v1/model`` (tasks, classes, thresholds, inputs, version);
- ``POST /v1/predict``: JSON ``{"text": {field: str}, "features": [..], "frame_embeddings": [[..]],
  "ocr_text": str}`` or a multipart upload of one ``video`` file plus text fields (and ``features`` as a JSON
  list). Inputs go through the training preprocessing (:mod:`cpfd.data.preprocess`); a bundle trained with
  on-screen text reads it from the upload (JSON requests send it as ``ocr_text``);
- limits: upload size, text length, request timeout; video decoding runs in worker processes, so a bad clip
  cannot block the server; no request can name a server-side path; every bad request gets a 4xx with a JSON
  ``detail``. OpenAPI docs at ``/docs``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing as mp
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cpfd.data.preprocess import decode_media, ocr_sampling
from cpfd.export.runtime import InputError, StudentBundle


class Limits(BaseModel):
    max_upload_bytes: int = Field(50 * 2**20, description="largest request body")
    max_text_chars: int = Field(5000, description="longest text field")
    timeout_s: float = Field(30.0, description="per request, decoding and scoring included")
    decode_workers: int = Field(2, ge=1)


class PredictJSON(BaseModel):
    """A JSON request: text fields and precomputed vectors. No field can name a file on the server."""

    model_config = ConfigDict(extra="forbid")
    text: dict[str, str | None] | str | None = None
    features: list[float] | None = None
    frame_embeddings: list[list[float]] | None = None
    ocr_text: str | None = Field(None, description="on-screen text, for a bundle trained with OCR (uploads read it)")


def create_app(bundle: StudentBundle, limits: Limits | None = None) -> FastAPI:
    limits = limits or Limits()
    pool = ProcessPoolExecutor(limits.decode_workers, mp_context=mp.get_context("spawn"))

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        pool.shutdown(cancel_futures=True)

    app = FastAPI(title="cpfd student", version=bundle.meta["version"], lifespan=lifespan,
                  description="Scores short videos with a CPFD-distilled student (no privileged features).")
    text_fields = bundle.text_fields

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/v1/model")
    def model_info() -> dict:
        return {"version": bundle.meta["version"], "tasks": bundle.tasks, "inputs": bundle.meta["inputs"],
                "text_fields": text_fields, "accepts_video": "frames" in bundle.input_names,
                "runtime": bundle.runtime}

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

    async def decode_upload(data: bytes, filename: str) -> tuple[np.ndarray, str | None]:
        """Decoded frames (and the on-screen text, for an OCR bundle) of an uploaded clip, decoded in a worker."""
        suffix = Path(filename or "upload.mp4").suffix[:8] or ".mp4"
        loop = asyncio.get_running_loop()
        with tempfile.NamedTemporaryFile(suffix=suffix) as tmp:
            tmp.write(data)
            tmp.flush()
            clip, error = await loop.run_in_executor(pool, decode_media, ("video", tmp.name, bundle.sampling.model_dump()))
            ocr_clip = None
            if not error and bundle.reads_ocr:
                ocr_clip, error = await loop.run_in_executor(
                    pool, decode_media, ("video", tmp.name, ocr_sampling(bundle.extract).model_dump()))
        if error:
            raise HTTPException(422, f"video cannot be used: {error.replace(tmp.name, filename or 'upload')}")
        ocr_text = await loop.run_in_executor(None, bundle.pre.read_ocr, ocr_clip.frames[0]) if ocr_clip else None
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
        ctype = request.headers.get("content-type", "")
        body = await read_body(request)

        async def handle() -> dict:
            clips = None
            if ctype.startswith("application/json"):
                try:
                    raw = json.loads(body or b"null")
                except json.JSONDecodeError as err:
                    raise HTTPException(400, f"body is not valid JSON: {err}") from None
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
                form = await request.form()
                upload = form.get("video")
                if upload is None or isinstance(upload, str):
                    raise HTTPException(422, "missing field: video (a file part)")
                texts = {k: v for k, v in form.items() if k not in ("video", "features") and isinstance(v, str)}
                features = None
                if "features" in form:
                    try:
                        features = json.loads(form["features"])
                    except json.JSONDecodeError:
                        raise HTTPException(422, "features: must be a JSON list of numbers") from None
                frames, ocr_text = await decode_upload(await upload.read(), upload.filename)
                clips = [frames]
                text = check_text(texts, ocr_text) if (texts or text_fields or bundle.reads_ocr) else None
                frame_embeddings = None
            else:
                raise HTTPException(415, f"content type {ctype or '(none)'!r}: use application/json or "
                                         "multipart/form-data")
            if "text" in bundle.input_names and text is None:
                raise HTTPException(422, f"missing field: text ({text_fields})")
            return await asyncio.get_running_loop().run_in_executor(None, score, features, clips, text,
                                                                     frame_embeddings)

        try:
            predictions = await asyncio.wait_for(handle(), timeout=limits.timeout_s)
        except asyncio.TimeoutError:
            raise HTTPException(504, f"request took longer than {limits.timeout_s} s") from None
        return {"model_version": bundle.meta["version"], "predictions": predictions}

    return app

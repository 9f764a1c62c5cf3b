"""On-screen text: OCR of a clip's middle frame with RapidOCR (PP-OCRv4 det + rec, bundled ONNX models).

The text read becomes one more student text input (it is available online: it is on the frames). Install with
``make install-ocr`` (``pip install --no-deps rapidocr-onnxruntime pyclipper shapely``; its declared
``opencv-python`` would pull the GUI build beside the headless one we use).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cpfd.encoders.base import EncoderError
from cpfd.io import atomic_write_json

MIN_SCORE = 0.5


class OCRReader:
    def __init__(self):
        try:
            from rapidocr_onnxruntime import RapidOCR
        except ImportError as err:
            raise EncoderError("OCR needs rapidocr-onnxruntime: run `make install-ocr` "
                               "(pip install --no-deps rapidocr-onnxruntime pyclipper shapely)") from err
        self.engine = RapidOCR()

    def read(self, frame_rgb: np.ndarray) -> str:
        result, _ = self.engine(np.ascontiguousarray(frame_rgb[:, :, ::-1]))
        return " ".join(text for _, text, score in (result or []) if float(score) >= MIN_SCORE)


def ocr_texts(rows, cfg, cache: Path, log: Callable[[str], None] = print) -> dict[int, str]:
    """Text read from each row's middle frame, cached per (clip, sampling) key in ``ocr.json``."""
    from cpfd.data.embeddings import ExtractReport, decode_chunks, frames_key
    from cpfd.data.video import FrameSampling

    sampling = FrameSampling(num_frames=1, size=cfg.ocr_size)
    path = cache / "ocr.json"
    known: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    keys = {r.index: frames_key(r, "rapidocr", sampling) for r in rows}
    todo = [r for r in rows if keys[r.index] not in known]
    if todo:
        reader = OCRReader()
        report = ExtractReport()
        one_frame = cfg.model_copy(update={"sampling": sampling})
        for good in decode_chunks(todo, one_frame, report, "OCR"):
            for row, clip in good:
                known[keys[row.index]] = reader.read(clip.frames[0])
            atomic_write_json(path, known)
        log(f"extract: OCR read {len(todo) - len(report.bad)} clips")
    return {r.index: known.get(keys[r.index], "") for r in rows}

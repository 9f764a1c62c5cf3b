"""On-screen text reader: RapidOCR (PP-OCRv4 det + rec, bundled ONNX models) on one RGB frame.

Which frame is read, and how the text joins the student's text, is the preprocessing path's business
(:mod:`cpfd.data.preprocess`). Install with ``make install-ocr`` (``pip install --no-deps rapidocr-onnxruntime
pyclipper shapely``; its declared ``opencv-python`` would pull the GUI build beside the headless one we use).
"""

from __future__ import annotations

import numpy as np

from cpfd.encoders.base import EncoderError

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
        """Text boxes read with score >= ``MIN_SCORE``, joined by spaces in the engine's reading order."""
        result, _ = self.engine(np.ascontiguousarray(frame_rgb[:, :, ::-1]))
        return " ".join(text for _, text, score in (result or []) if float(score) >= MIN_SCORE)

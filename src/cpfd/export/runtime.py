"""Load an exported bundle and score inputs with torch or onnxruntime.

Preprocessing is the training path's own (:mod:`cpfd.data.preprocess`, configured from ``bundle.json``): frames
are decoded and sampled as at training time and encoded by the same encoders (the fine-tuned ones for an
end-to-end bundle), text fields are joined and truncated the same way, and a bundle trained with on-screen text
(OCR) reads it from the uploaded clip as training did. Nothing here can take a privileged feature: the bundle's
input signature has none.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from cpfd.config import ExtractConfig, FrameSampling, ModelConfig
from cpfd.data.preprocess import Preprocessor, join_text, make_frame_encoder, make_text_encoder, with_ocr
from cpfd.errors import CpfdError
from cpfd.models.end_to_end import Encoders
from cpfd.models.student import Student
from cpfd.task_types import task_type


class InputError(CpfdError, ValueError):
    """A request or row whose inputs do not fit the bundle's signature (the message says which field)."""


class BundleError(CpfdError, ValueError):
    """A bundle folder that cannot be loaded."""


class StudentBundle:
    def __init__(self, folder: str | Path, runtime: str = "torch"):
        self.folder = Path(folder)
        try:
            self.meta = json.loads((self.folder / "bundle.json").read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise BundleError(f"{self.folder}: not a bundle (bundle.json: {err})") from None
        self.tasks = self.meta["tasks"]
        self.input_names = list(self.meta["inputs"])
        self.runtime = runtime
        self.extract = ExtractConfig.model_validate(self.meta["preprocessing"]["extract"])
        self.inputs_spec = self.meta["preprocessing"]["inputs"]
        self.text_fields: list[str] = list(self.inputs_spec.get("text") or [])
        self.pre = Preprocessor(self.extract)
        if self.extract.ocr:
            self.pre.read_ocr(np.zeros((32, 32, 3), np.uint8))  # load the OCR models now: fail at start, not per request
        state = load_file(str(self.folder / "student.safetensors"))
        core_state = {k.removeprefix("student."): v for k, v in state.items() if not k.startswith("encoders.")}
        self._encoder_state = {k.removeprefix("encoders."): v for k, v in state.items() if k.startswith("encoders.")}
        self._encoders: Encoders | None = None
        if runtime == "torch":
            shapes = {k: tuple(v) for k, v in self.meta["input_shapes"].items()}
            outputs = {t["name"]: task_type(t["type"]).n_outputs(t["classes"]) for t in self.tasks}
            self.core = Student(shapes, outputs, ModelConfig(**self.meta["model"]))
            self.core.load_state_dict(core_state)
            self.core.eval()
        elif runtime == "onnx":
            import onnxruntime as ort

            self.session = ort.InferenceSession(str(self.folder / "student.onnx"), providers=["CPUExecutionProvider"])
            onnx_inputs = [i.name for i in self.session.get_inputs()]
            if onnx_inputs != self.input_names:
                raise BundleError(f"{self.folder}: ONNX inputs {onnx_inputs} do not match bundle.json {self.input_names}")
        else:
            raise BundleError(f"unknown runtime {runtime!r} (torch, onnx)")

    # ---- model ----------------------------------------------------------------------------------------------

    def logits(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [n for n in self.input_names if n not in inputs]
        if missing:
            raise InputError(f"missing inputs: {missing}")
        if self.runtime == "onnx":
            out = self.session.run(None, {n: inputs[n] for n in self.input_names})
            return {t["name"]: o for t, o in zip(self.tasks, out)}
        with torch.no_grad():
            out = self.core(**{n: torch.from_numpy(np.asarray(inputs[n])) for n in self.input_names})
        return {k: v.numpy() for k, v in out["logits"].items()}

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, dict]:
        """Per task: probabilities and labels at the validation-tuned thresholds, for every row of ``inputs``."""
        result = {}
        for task, z in zip(self.tasks, self.logits(inputs).values()):
            kind = task_type(task["type"])
            probs = kind.probs(torch.from_numpy(np.asarray(z))).numpy()
            result[task["name"]] = {"probs": probs, "labels": kind.decode(probs, task["threshold"], task["classes"])}
        return result

    # ---- preprocessing ----------------------------------------------------------------------------------------

    @property
    def reads_ocr(self) -> bool:
        return self.extract.ocr

    @property
    def sampling(self) -> FrameSampling:
        return self.extract.sampling

    @property
    def encoders(self) -> Encoders:
        """The end-to-end bundle's fine-tuned encoders (frozen bundles use the preprocessor's)."""
        if self._encoders is None:
            frames = make_frame_encoder(self.extract) if "frames" in self.input_names else None
            text = make_text_encoder(self.extract) if "text" in self.input_names else None
            self._encoders = Encoders(frames, text).eval()
            self._encoders.load_state_dict(self._encoder_state)
        return self._encoders

    def text(self, fields: Mapping[str, Any], ocr_text: str | None = None) -> str:
        """The student's text for one row: the declared fields joined as in training (+ on-screen text)."""
        text = join_text(fields.get(name) for name in self.text_fields)
        if self.reads_ocr:
            if ocr_text is None:
                raise InputError("this model was trained with on-screen text (OCR): upload the video, or send "
                                 "ocr_text")
            text = with_ocr(text, ocr_text)
        return text

    def encode_frames(self, clips: list[np.ndarray]) -> np.ndarray:
        """Decoded clips (K, H, W, 3) uint8 -> frame embeddings (B, K, D); the bundle's ONNX frame encoder with
        the onnx runtime when export produced one."""
        if self._encoder_state:
            with torch.no_grad():
                return self.encoders(torch.from_numpy(np.stack(clips)), None, None)["frames"].float().numpy()
        onnx_path = self.folder / "frames_encoder.onnx"
        if self.runtime == "onnx" and onnx_path.exists():
            if not hasattr(self, "_frames_session"):
                import onnxruntime as ort

                self._frames_session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
            pixels = np.stack(clips)
            b, k = pixels.shape[:2]
            x = pixels.reshape(b * k, *pixels.shape[2:]).transpose(0, 3, 1, 2).astype(np.float32) / 255.0
            return self._frames_session.run(None, {"frames": x})[0].reshape(b, k, -1)
        return self.pre.encode_frames(clips)

    def encode_text(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        if self._encoder_state:
            with torch.no_grad():
                ids, mask = self.encoders.text.tokenize(texts)
                tokens, mask, _ = self.encoders.text.encode_ids(ids, mask)
            return tokens.float().numpy(), mask.numpy()
        return self.pre.encode_text(texts)

    def prepare(self, features: list | None = None, clips: list[np.ndarray] | None = None,
                texts: list[str] | None = None, frame_embeddings: list | None = None) -> dict[str, np.ndarray]:
        """Model inputs for a batch from raw parts; shape and type errors are :class:`InputError`."""
        inputs: dict[str, np.ndarray] = {}
        if "features" in self.input_names:
            inputs["features"] = self._vectors(features, "features", self.meta["inputs"]["features"])
        if "frames" in self.input_names:
            if frame_embeddings is not None:
                frames = self._vectors(frame_embeddings, "frame_embeddings", self.meta["inputs"]["frames"])
            elif clips is not None:
                frames = self.encode_frames(clips)
            else:
                raise InputError("missing field: video (or frame_embeddings)")
            inputs["frames"] = frames
            inputs["frames_mask"] = np.ones(frames.shape[:2], dtype=bool)
        if "text" in self.input_names:
            if texts is None:
                raise InputError("missing field: text")
            inputs["text"], inputs["text_mask"] = self.encode_text(texts)
        return inputs

    @staticmethod
    def _vectors(values, field: str, shape: list[int]) -> np.ndarray:
        if values is None:
            raise InputError(f"missing field: {field}")
        try:
            with np.errstate(over="ignore"):
                arr = np.asarray(values, dtype=np.float32)
        except (TypeError, ValueError, OverflowError):
            raise InputError(f"{field}: values must be numbers") from None
        if arr.ndim != len(shape) + 1 or list(arr.shape[1:]) != list(shape):
            raise InputError(f"{field}: expected shape {['batch', *shape]}, got {list(arr.shape)}")
        if not np.all(np.isfinite(arr)):
            raise InputError(f"{field}: NaN, infinite or beyond-float32 value")
        return arr

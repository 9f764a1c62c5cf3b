"""Load an exported bundle and score inputs with torch or onnxruntime.

Preprocessing is the bundle's own: frames are decoded and sampled as at training time and encoded by the same
encoders (the fine-tuned ones for an end-to-end bundle), text fields are joined and encoded the same way.
Nothing here can take a privileged feature: the bundle's input signature has none.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from cpfd.config import ModelConfig
from cpfd.data.embeddings import MAX_TEXT_CHARS, TEXT_SEPARATOR, ExtractConfig
from cpfd.data.video import FrameSampling, decode_video
from cpfd.distill.probs import task_probs
from cpfd.models.end_to_end import Encoders
from cpfd.models.student import Student


class InputError(ValueError):
    """A request or row whose inputs do not fit the bundle's signature (the message says which field)."""


class StudentBundle:
    def __init__(self, folder: str | Path, runtime: str = "torch"):
        self.folder = Path(folder)
        self.meta = json.loads((self.folder / "bundle.json").read_text())
        self.tasks = self.meta["tasks"]
        self.input_names = list(self.meta["inputs"])
        self.runtime = runtime
        self.extract = ExtractConfig.model_validate(self.meta["preprocessing"]["extract"])
        self.inputs_spec = self.meta["preprocessing"]["inputs"]
        state = load_file(str(self.folder / "student.safetensors"))
        core_state = {k.removeprefix("student."): v for k, v in state.items() if not k.startswith("encoders.")}
        self._encoder_state = {k.removeprefix("encoders."): v for k, v in state.items() if k.startswith("encoders.")}
        self._encoders: Encoders | None = None
        if runtime == "torch":
            shapes = {k: tuple(v) for k, v in self.meta["input_shapes"].items()}
            self.core = Student(shapes, {t["name"]: 1 if t["type"] == "binary" else len(t["classes"])
                                         for t in self.tasks}, ModelConfig(**self.meta["model"]))
            self.core.load_state_dict(core_state)
            self.core.eval()
        elif runtime == "onnx":
            import onnxruntime as ort

            self.session = ort.InferenceSession(str(self.folder / "student.onnx"), providers=["CPUExecutionProvider"])
            onnx_inputs = [i.name for i in self.session.get_inputs()]
            if onnx_inputs != self.input_names:
                raise ValueError(f"{self.folder}: ONNX inputs {onnx_inputs} do not match bundle.json {self.input_names}")
        else:
            raise ValueError(f"unknown runtime {runtime!r} (torch, onnx)")

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
            probs = task_probs(torch.from_numpy(np.asarray(z)), task["type"]).numpy()
            if task["type"] == "binary":
                labels = (probs >= task["threshold"]).astype(int).tolist()
            elif task["type"] == "multiclass":
                labels = [task["classes"][k] for k in probs.argmax(1)]
            else:
                on = probs >= np.asarray(task["threshold"])[None, :]
                labels = [[c for c, flag in zip(task["classes"], row) if flag] for row in on]
            result[task["name"]] = {"probs": probs, "labels": labels}
        return result

    # ---- preprocessing ----------------------------------------------------------------------------------------

    @property
    def encoders(self) -> Encoders:
        if self._encoders is None:
            from cpfd.encoders import create_encoder

            x = self.extract
            frames = create_encoder(x.frames_encoder, **x.frames_encoder_args) if "frames" in self.input_names else None
            text = (create_encoder(x.text_encoder, max_tokens=x.max_tokens, **x.text_encoder_args)
                    if "text" in self.input_names else None)
            self._encoders = Encoders(frames, text).eval()
            if self._encoder_state:
                self._encoders.load_state_dict(self._encoder_state)
        return self._encoders

    @property
    def sampling(self) -> FrameSampling:
        return self.extract.sampling

    def encode_frames(self, clips: list[np.ndarray]) -> np.ndarray:
        """Decoded clips (K, H, W, 3) uint8 -> frame embeddings (B, K, D); the bundle's ONNX frame encoder with
        the onnx runtime when export produced one."""
        onnx_path = self.folder / "frames_encoder.onnx"
        if self.runtime == "onnx" and onnx_path.exists():
            if not hasattr(self, "_frames_session"):
                import onnxruntime as ort

                self._frames_session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
            pixels = np.stack(clips)
            b, k = pixels.shape[:2]
            x = pixels.reshape(b * k, *pixels.shape[2:]).transpose(0, 3, 1, 2).astype(np.float32) / 255.0
            return self._frames_session.run(None, {"frames": x})[0].reshape(b, k, -1)
        with torch.no_grad():
            pixels = torch.from_numpy(np.stack(clips))
            return self.encoders(pixels, None, None)["frames"].float().numpy()

    def encode_text(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        texts = [t[:MAX_TEXT_CHARS] for t in texts]
        with torch.no_grad():
            ids, mask = self.encoders.text.tokenize(texts)
            tokens, mask, _ = self.encoders.text.encode_ids(ids, mask)
        return tokens.float().numpy(), mask.numpy()

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
            arr = np.asarray(values, dtype=np.float32)
        except (TypeError, ValueError):
            raise InputError(f"{field}: values must be numbers") from None
        if arr.ndim != len(shape) + 1 or list(arr.shape[1:]) != list(shape):
            raise InputError(f"{field}: expected shape {['batch', *shape]}, got {list(arr.shape)}")
        if not np.all(np.isfinite(arr)):
            raise InputError(f"{field}: NaN or infinite value")
        return arr


def join_text(fields: dict[str, str], names: list[str]) -> str:
    return TEXT_SEPARATOR.join(str(fields[n]).strip() for n in names if fields.get(n) and str(fields[n]).strip())


def decode_clip(path: str | Path, sampling: FrameSampling) -> np.ndarray:
    return decode_video(path, sampling).frames

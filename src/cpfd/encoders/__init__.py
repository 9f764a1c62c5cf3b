"""Frozen modality encoders, in a registry (``encoders:`` in the extraction config).

Frame encoders map RGB frames to one vector per frame; text encoders map strings to token vectors (for the
X-VLM-style fusion) plus a pooled vector. Importing this package registers the built-in ones.
"""

from cpfd.encoders.base import ENCODERS, EncoderError, FrameEncoder, TextEncoder, create_encoder
from cpfd.encoders import frames as _frames  # noqa: F401  (registers)
from cpfd.encoders import text as _text  # noqa: F401  (registers)

__all__ = ["ENCODERS", "EncoderError", "FrameEncoder", "TextEncoder", "create_encoder"]

"""CLIP-Adapter (Gao et al., IJCV 2023): a residual bottleneck MLP on the image features."""

from vlprompt.methods.clip_adapter.config import ClipAdapterConfig
from vlprompt.methods.clip_adapter.model import ClipAdapter
from vlprompt.methods.registry import register_method

register_method("clip_adapter", ClipAdapterConfig, ClipAdapter)

__all__ = ["ClipAdapter", "ClipAdapterConfig"]

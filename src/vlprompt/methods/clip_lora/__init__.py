"""CLIP-LoRA (Zanella, Ben Ayed; CVPR Workshops 2024): low-rank adapters in both encoders."""

from vlprompt.methods.clip_lora.model import ClipLoRA, ClipLoRAConfig
from vlprompt.methods.registry import register_method

register_method("clip_lora", ClipLoRAConfig, ClipLoRA)

__all__ = ["ClipLoRA", "ClipLoRAConfig"]

"""CLIP-LoRA (Zanella, Ben Ayed; CVPR Workshops 2024): low-rank adapters in both encoders."""

from vlprompt.methods.clip_lora.config import ClipLoRAConfig
from vlprompt.methods.clip_lora.model import ClipLoRA
from vlprompt.methods.registry import Capabilities, register_method

#: the adapters change what the encoders compute (text and, with a ViT, image): nothing is cached
register_method("clip_lora", ClipLoRAConfig, ClipLoRA, capabilities=Capabilities(modifies_encoders=True))

__all__ = ["ClipLoRA", "ClipLoRAConfig"]

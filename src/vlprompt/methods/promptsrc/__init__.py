"""PromptSRC (Khattak et al., ICCV 2023)."""

from vlprompt.methods.promptsrc.config import PromptSRCConfig
from vlprompt.methods.promptsrc.model import PromptSRC
from vlprompt.methods.registry import register_method

register_method("promptsrc", PromptSRCConfig, PromptSRC, modifies_encoders=True)

__all__ = ["PromptSRC", "PromptSRCConfig"]

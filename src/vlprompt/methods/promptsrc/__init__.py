"""PromptSRC (Khattak et al., ICCV 2023)."""

from vlprompt.methods.promptsrc.config import PromptSRCConfig
from vlprompt.methods.promptsrc.model import PromptSRC
from vlprompt.methods.registry import Capabilities, register_method

#: trains on packed prompted + frozen image features (encode_images in train mode): never cached
register_method("promptsrc", PromptSRCConfig, PromptSRC, capabilities=Capabilities(modifies_encoders=True))

__all__ = ["PromptSRC", "PromptSRCConfig"]

"""CoPrompt (Roy & Etemad, ICLR 2024)."""

from vlprompt.methods.coprompt.config import CoPromptConfig
from vlprompt.methods.coprompt.model import CoPrompt
from vlprompt.methods.registry import Capabilities, register_method

#: trains on packed prompted + frozen image features (encode_images in train mode): never cached
register_method("coprompt", CoPromptConfig, CoPrompt, capabilities=Capabilities(modifies_encoders=True))

__all__ = ["CoPrompt", "CoPromptConfig"]

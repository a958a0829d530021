"""MaPLe (Khattak et al., CVPR 2023)."""

from vlprompt.methods.maple.config import MaPLeConfig
from vlprompt.methods.maple.model import MaPLe
from vlprompt.methods.registry import Capabilities, register_method

register_method("maple", MaPLeConfig, MaPLe, capabilities=Capabilities(modifies_encoders=True))

__all__ = ["MaPLe", "MaPLeConfig"]

"""MMA: Multi-Modal Adapter (Yang, Zhang, Wang, Xie; CVPR 2024)."""

from vlprompt.methods.mma.config import MMAConfig
from vlprompt.methods.mma.model import MMA
from vlprompt.methods.registry import Capabilities, register_method

register_method("mma", MMAConfig, MMA, capabilities=Capabilities(modifies_encoders=True))

__all__ = ["MMA", "MMAConfig"]

"""CoCoOp (Zhou et al., CVPR 2022)."""

from vlprompt.methods.cocoop.config import CoCoOpConfig
from vlprompt.methods.cocoop.model import CoCoOp
from vlprompt.methods.registry import Capabilities, register_method

register_method("cocoop", CoCoOpConfig, CoCoOp, capabilities=Capabilities(image_conditional=True))

__all__ = ["CoCoOp", "CoCoOpConfig"]

"""CoCoOp (Zhou et al., CVPR 2022)."""

from vlprompt.methods.cocoop.config import CoCoOpConfig
from vlprompt.methods.cocoop.model import CoCoOp
from vlprompt.methods.registry import register_method

register_method("cocoop", CoCoOpConfig, CoCoOp)

__all__ = ["CoCoOp", "CoCoOpConfig"]

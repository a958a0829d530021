"""CoOp (Zhou et al., IJCV 2022)."""

from vlprompt.methods.coop.config import CoOpConfig
from vlprompt.methods.coop.model import CoOp
from vlprompt.methods.registry import register_method

register_method("coop", CoOpConfig, CoOp)

__all__ = ["CoOp", "CoOpConfig"]

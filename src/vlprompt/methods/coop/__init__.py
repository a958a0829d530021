"""CoOp (Zhou et al., IJCV 2022)."""

from vlprompt.methods.coop.config import CoOpConfig
from vlprompt.methods.coop.model import CoOp
from vlprompt.methods.registry import Capabilities, register_method

#: class-specific context (csc) belongs to the training classes
register_method("coop", CoOpConfig, CoOp, capabilities=lambda cfg: Capabilities(class_specific=cfg.csc))

__all__ = ["CoOp", "CoOpConfig"]

"""LoCoOp (Miyai et al., NeurIPS 2023): few-shot OOD prompt learning with local regularisation."""

from vlprompt.methods.locoop.config import LoCoOpConfig
from vlprompt.methods.locoop.model import LoCoOp
from vlprompt.methods.registry import Capabilities, register_method

register_method("locoop", LoCoOpConfig, LoCoOp,
                capabilities=lambda cfg: Capabilities(local_features=True, class_specific=cfg.csc))

__all__ = ["LoCoOp", "LoCoOpConfig"]

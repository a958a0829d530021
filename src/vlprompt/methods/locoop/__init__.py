"""LoCoOp (Miyai et al., NeurIPS 2023): few-shot OOD prompt learning with local regularisation."""

from vlprompt.methods.locoop.model import LoCoOp, LoCoOpConfig
from vlprompt.methods.registry import register_method

register_method("locoop", LoCoOpConfig, LoCoOp)

__all__ = ["LoCoOp", "LoCoOpConfig"]

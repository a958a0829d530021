"""KgCoOp (Yao, Zhang, Xu; CVPR 2023): CoOp regularised towards the hand-crafted prompt's text features."""

from vlprompt.methods.kgcoop.model import KgCoOp, KgCoOpConfig
from vlprompt.methods.registry import register_method

register_method("kgcoop", KgCoOpConfig, KgCoOp)

__all__ = ["KgCoOp", "KgCoOpConfig"]

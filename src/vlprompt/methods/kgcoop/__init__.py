"""KgCoOp (Yao, Zhang, Xu; CVPR 2023): CoOp regularised towards the hand-crafted prompt's text features."""

from vlprompt.methods.kgcoop.config import KgCoOpConfig
from vlprompt.methods.kgcoop.model import KgCoOp
from vlprompt.methods.registry import Capabilities, register_method

register_method("kgcoop", KgCoOpConfig, KgCoOp, capabilities=lambda cfg: Capabilities(class_specific=cfg.csc))

__all__ = ["KgCoOp", "KgCoOpConfig"]

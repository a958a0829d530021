"""DPE: Dual Prototype Evolving (Zhang, Stepputtis, Sycara, Xie; NeurIPS 2024; zhangce01/DPE-CLIP)."""

from vlprompt.methods.dpe.config import DPEConfig
from vlprompt.methods.dpe.model import DPE
from vlprompt.methods.registry import Capabilities, register_method

register_method("dpe", DPEConfig, DPE,
                capabilities=Capabilities(training="none", supervision="none", adaptation="online"))

__all__ = ["DPE", "DPEConfig"]

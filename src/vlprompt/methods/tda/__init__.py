"""TDA: training-free dynamic adapter (Karmanov et al., CVPR 2024; kdiAAA/TDA)."""

from vlprompt.methods.registry import Capabilities, register_method
from vlprompt.methods.tda.cache import ClassCache
from vlprompt.methods.tda.config import TDAConfig
from vlprompt.methods.tda.model import TDA, summarise

register_method("tda", TDAConfig, TDA,
                capabilities=Capabilities(training="none", supervision="none", adaptation="online"))

__all__ = ["TDA", "ClassCache", "TDAConfig", "summarise"]

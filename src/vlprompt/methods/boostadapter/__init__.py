"""BoostAdapter: TDA's caches plus regional bootstrapping (Zhang et al., NeurIPS 2024; taolinzhang/BoostAdapter)."""

from vlprompt.methods.boostadapter.config import BoostAdapterConfig
from vlprompt.methods.boostadapter.model import BoostAdapter
from vlprompt.methods.registry import Capabilities, register_method

register_method("boostadapter", BoostAdapterConfig, BoostAdapter,
                capabilities=Capabilities(training="none", supervision="none", adaptation="online"))

__all__ = ["BoostAdapter", "BoostAdapterConfig"]

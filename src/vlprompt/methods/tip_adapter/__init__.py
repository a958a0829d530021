"""Tip-Adapter and Tip-Adapter-F (Zhang et al., ECCV 2022): a key-value cache of few-shot features."""

from vlprompt.methods.registry import Capabilities, register_method
from vlprompt.methods.tip_adapter.config import TipAdapterConfig, TipAdapterFConfig
from vlprompt.methods.tip_adapter.model import TipAdapter, TipAdapterF

register_method("tip_adapter", TipAdapterConfig, TipAdapter,
                capabilities=Capabilities(training="fit", class_specific=True))
register_method("tip_adapter_f", TipAdapterFConfig, TipAdapterF,
                capabilities=Capabilities(training="fit+sgd", class_specific=True))

__all__ = ["TipAdapter", "TipAdapterConfig", "TipAdapterF", "TipAdapterFConfig"]

"""Tip-Adapter and Tip-Adapter-F (Zhang et al., ECCV 2022): a key-value cache of few-shot features."""

from vlprompt.methods.registry import register_method
from vlprompt.methods.tip_adapter.model import (
    TipAdapter,
    TipAdapterConfig,
    TipAdapterF,
    TipAdapterFConfig,
)

register_method("tip_adapter", TipAdapterConfig, TipAdapter, training="fit", class_specific=True)
register_method("tip_adapter_f", TipAdapterFConfig, TipAdapterF, training="fit+sgd", class_specific=True)

__all__ = ["TipAdapter", "TipAdapterConfig", "TipAdapterF", "TipAdapterFConfig"]

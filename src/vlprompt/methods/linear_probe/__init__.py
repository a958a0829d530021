"""Linear probe (CoOp's lpclip baseline): logistic regression on frozen image features."""

from vlprompt.methods.linear_probe.model import LinearProbe, LinearProbeConfig
from vlprompt.methods.registry import register_method

register_method("linear_probe", LinearProbeConfig, LinearProbe, training="fit", class_specific=True)

__all__ = ["LinearProbe", "LinearProbeConfig"]

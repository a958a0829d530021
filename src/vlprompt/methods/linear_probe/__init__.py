"""Linear probe (CoOp's lpclip baseline): logistic regression on frozen image features."""

from vlprompt.methods.linear_probe.config import LinearProbeConfig
from vlprompt.methods.linear_probe.model import LinearProbe
from vlprompt.methods.registry import Capabilities, register_method

register_method("linear_probe", LinearProbeConfig, LinearProbe,
                capabilities=Capabilities(training="fit", class_specific=True))

__all__ = ["LinearProbe", "LinearProbeConfig"]

"""Zero: test-time adaptation with zero temperature (Farina et al., NeurIPS 2024; FarinaMatteo/zero)."""

from vlprompt.methods.registry import Capabilities, register_method
from vlprompt.methods.zero.config import ZeroConfig
from vlprompt.methods.zero.model import Zero, zero_votes

register_method("zero", ZeroConfig, Zero,
                capabilities=Capabilities(training="none", supervision="none", adaptation="episodic"))

__all__ = ["Zero", "ZeroConfig", "zero_votes"]

"""GDA (Wang et al., ICLR 2024): Gaussian discriminant analysis on few-shot CLIP features + zero-shot."""

from vlprompt.methods.gda.config import GdaConfig
from vlprompt.methods.gda.model import Gda
from vlprompt.methods.registry import Capabilities, register_method

register_method("gda", GdaConfig, Gda, capabilities=Capabilities(training="fit", class_specific=True))

__all__ = ["Gda", "GdaConfig"]

"""APE and APE-T (Zhu et al., ICCV 2023): a few-shot cache on refined CLIP feature channels."""

from vlprompt.methods.ape.config import ApeConfig, ApeTConfig
from vlprompt.methods.ape.model import Ape, ApeT
from vlprompt.methods.registry import Capabilities, register_method

register_method("ape", ApeConfig, Ape, capabilities=Capabilities(training="fit", class_specific=True))
register_method("ape_t", ApeTConfig, ApeT, capabilities=Capabilities(training="fit+sgd", class_specific=True))

__all__ = ["Ape", "ApeConfig", "ApeT", "ApeTConfig"]

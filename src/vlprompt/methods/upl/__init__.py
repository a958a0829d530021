"""UPL (Huang et al., 2022): unsupervised prompt learning from CLIP pseudo-labels."""

from vlprompt.methods.registry import Capabilities, register_method
from vlprompt.methods.upl.config import UPLConfig
from vlprompt.methods.upl.model import UPL

register_method("upl", UPLConfig, UPL, capabilities=Capabilities(supervision="none"))

__all__ = ["UPL", "UPLConfig"]

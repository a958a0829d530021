"""CSP (Chen et al., NeurIPS 2024): NegLabel with the conjugated semantic pool; training-free OOD detection."""

from vlprompt.methods.csp.config import CSPConfig
from vlprompt.methods.csp.model import CSP
from vlprompt.methods.registry import Capabilities, register_method

register_method("csp", CSPConfig, CSP,
                capabilities=Capabilities(training="none", supervision="none", ood_scores=("csp",)))

__all__ = ["CSP", "CSPConfig"]

"""NegPrompt (Li et al., CVPR 2024): learned negative prompts per class and their OOD score."""

from vlprompt.methods.negprompt.config import NegPromptConfig
from vlprompt.methods.negprompt.model import NegPrompt
from vlprompt.methods.registry import Capabilities, register_method

register_method("negprompt", NegPromptConfig, NegPrompt, capabilities=Capabilities(ood_scores=("negprompt",)))

__all__ = ["NegPrompt", "NegPromptConfig"]

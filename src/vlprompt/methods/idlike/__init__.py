"""ID-Like (Bai et al., CVPR 2024): ID and OOD prompts learned on ID and ID-like crops of the few-shot images."""

from vlprompt.methods.idlike.config import IDLikeConfig
from vlprompt.methods.idlike.model import IDLIKE_SCORE, IDLike
from vlprompt.methods.registry import Capabilities, register_method

#: the crops are drawn and selected once (fit, seeded), the prompts learned by SGD; its own score "idlike"
register_method("idlike", IDLikeConfig, IDLike,
                capabilities=lambda cfg: Capabilities(training="fit+sgd", class_specific=cfg.csc,
                                                      ood_scores=(IDLIKE_SCORE,)))

__all__ = ["IDLike", "IDLikeConfig"]

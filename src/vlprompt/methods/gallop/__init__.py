"""GalLoP (Lafon et al., ECCV 2024): global and local prompts, top-k local logits, GL-MCM OOD score."""

from vlprompt.methods.gallop.config import GalLoPConfig
from vlprompt.methods.gallop.model import LOCAL_SCORES, SCORES, GalLoP
from vlprompt.methods.registry import Capabilities, register_method

register_method("gallop", GalLoPConfig, GalLoP,
                capabilities=Capabilities(local_features=True, unprojected_features=True, ood_scores=SCORES,
                                          ood_local_scores=LOCAL_SCORES))

__all__ = ["GalLoP", "GalLoPConfig"]

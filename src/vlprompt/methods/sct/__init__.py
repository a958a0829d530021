"""SCT (Yu et al., NeurIPS 2024): LoCoOp with uncertainty-calibrated weights on its two terms."""

from vlprompt.methods.registry import Capabilities, register_method
from vlprompt.methods.sct.config import SCTConfig
from vlprompt.methods.sct.model import SCT

register_method("sct", SCTConfig, SCT,
                capabilities=lambda cfg: Capabilities(local_features=True, class_specific=cfg.csc))

__all__ = ["SCT", "SCTConfig"]

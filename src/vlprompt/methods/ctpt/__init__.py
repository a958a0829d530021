"""C-TPT: calibrated test-time prompt tuning (Yoon et al., ICLR 2024)."""

from vlprompt.methods.ctpt.config import CTPTConfig
from vlprompt.methods.ctpt.model import CTPT, average_text_feature_dispersion
from vlprompt.methods.registry import Capabilities, register_method

register_method("ctpt", CTPTConfig, CTPT,
                capabilities=Capabilities(training="none", supervision="none", adaptation="episodic"))

__all__ = ["CTPT", "CTPTConfig", "average_text_feature_dispersion"]

"""TPT: test-time prompt tuning (Shu et al., NeurIPS 2022)."""

from vlprompt.methods.registry import Capabilities, register_method
from vlprompt.methods.tpt.config import TPTConfig
from vlprompt.methods.tpt.model import TPT, average_prediction_entropy, select_confident_views

#: nothing is learned before test time; the prompt is tuned per test image and reset before the next one
register_method("tpt", TPTConfig, TPT,
                capabilities=Capabilities(training="none", supervision="none", adaptation="episodic"))

__all__ = ["TPT", "TPTConfig", "average_prediction_entropy", "select_confident_views"]

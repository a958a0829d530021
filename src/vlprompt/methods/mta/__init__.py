"""MTA: MeanShift for test-time augmentation (Zanella, Ben Ayed; CVPR 2024; MaxZanella/MTA)."""

from vlprompt.methods.mta.config import MTAConfig
from vlprompt.methods.mta.model import MTA, mta_mode
from vlprompt.methods.registry import Capabilities, register_method

register_method("mta", MTAConfig, MTA,
                capabilities=Capabilities(training="none", supervision="none", adaptation="episodic"))

__all__ = ["MTA", "MTAConfig", "mta_mode"]

# my_plugin/gain/__init__.py
"""The gain method: its one registration."""

from my_plugin.gain.config import GainConfig
from my_plugin.gain.model import Gain
from vlprompt.methods.registry import Capabilities, register_method

register_method("gain", GainConfig, Gain, capabilities=lambda cfg: Capabilities(class_specific=cfg.class_gains))
